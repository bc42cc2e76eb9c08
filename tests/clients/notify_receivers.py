#!/usr/bin/env python3
"""Real webhook, Slack and SMTP receivers for faultline's notification outbox tests.

    notify_receivers.py --out received.jsonl [--delay-ms N] [--fail-first N]

It starts two servers on free loopback ports, prints {"http_port": N, "smtp_port": M}
on one line once both accept connections, and serves until killed (SIGTERM or SIGINT
end it cleanly; SIGKILL is fine too, as every line is flushed when written).

HTTP (stdlib ThreadingHTTPServer) accepts POST on any path: paths starting with
/slack are "slack" receivers, every other path (/hook...) a "webhook" receiver. Each
POST appends one JSON line to --out:

    {"receiver": "webhook"|"slack", "path": "/hook/a", "headers": {lowercased: value},
     "idempotency_key": Idempotency-Key header or null, "body": parsed JSON body (or
     the raw text if it is not JSON), "failed": false, "at": time.time()}

and is answered 200 {"ok":true}. With --fail-first N the first N POSTs overall are
answered 503 {"ok":false} instead, and recorded with "failed": true. A POST whose
body is cut short (the sender went away) is not recorded.

SMTP (aiosmtpd's Controller) accepts any sender and recipient; each message appends

    {"receiver": "smtp", "mail_from": ..., "rcpt_tos": [...], "message_id": Message-ID
     header or null, "idempotency_key": Idempotency-Key header or null, "subject": ...,
     "body": text body (plain part preferred, CRLF turned to \\n), "at": time.time()}

and is answered "250 OK". --delay-ms N sleeps N ms after recording and before
answering, on both servers, so a test can kill the sender mid-request. Lines are
written whole and flushed one at a time under a lock, so they never interleave.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import json
import logging
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller


class Recorder:
    """Appends JSON lines to a file, one whole flushed line at a time."""

    def __init__(self, path: str, fail_first: int) -> None:
        self._file = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._fail_left = fail_first

    def claim_failure(self) -> bool:
        """True for the first --fail-first callers overall."""
        with self._lock:
            if self._fail_left > 0:
                self._fail_left -= 1
                return True
            return False

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _is_disconnect(exc: BaseException | None) -> bool:
    # Resets, broken pipes and timeouts are all OSError.
    return isinstance(exc, OSError)


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that goes away mid-request is expected (tests kill senders);
        # anything else is a bug here and worth one traceback.
        if not _is_disconnect(sys.exc_info()[1]):
            super().handle_error(request, client_address)


def make_http_handler(recorder: Recorder, delay: float):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        # Trailers end with an empty line.
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return data
                    data += self._read_exactly(size)
                    self.rfile.readline()
            return self._read_exactly(int(self.headers.get("Content-Length") or 0))

        def _read_exactly(self, n: int) -> bytes:
            data = self.rfile.read(n) if n > 0 else b""
            if len(data) < n:
                # The sender went away mid-body: that is no delivery, record nothing.
                raise ConnectionResetError("request body cut short")
            return data

        def do_POST(self) -> None:  # noqa: N802 (the http.server API)
            raw = self._read_body()
            text = raw.decode("utf-8", errors="replace")
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            headers: dict[str, str] = {}
            for name, value in self.headers.items():
                key = name.lower()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            failed = recorder.claim_failure()
            recorder.write({
                "receiver": "slack" if self.path.startswith("/slack") else "webhook",
                "path": self.path,
                "headers": headers,
                "idempotency_key": self.headers.get("Idempotency-Key"),
                "body": body,
                "failed": failed,
                "at": time.time(),
            })
            if delay > 0:
                time.sleep(delay)
            status, answer = (503, b'{"ok":false}') if failed else (200, b'{"ok":true}')
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *a) -> None:
            pass

    return Handler


class SmtpHandler:
    def __init__(self, recorder: Recorder, delay: float) -> None:
        self.recorder = recorder
        self.delay = delay

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd API)
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", errors="replace")
        msg = email.message_from_bytes(content, policy=email.policy.default)
        part = msg.get_body(preferencelist=("plain", "html"))
        if part is not None:
            try:
                text = part.get_content()
            except (LookupError, ValueError):
                text = part.get_payload(decode=True).decode("utf-8", errors="replace")
        else:
            text = ""
        # Lines come off the wire as CRLF; hand tests plain "\n" text.
        text = text.replace("\r\n", "\n")

        def header(name: str):
            value = msg.get(name)
            return None if value is None else str(value)

        self.recorder.write({
            "receiver": "smtp",
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "message_id": header("Message-ID"),
            "idempotency_key": header("Idempotency-Key"),
            "subject": header("Subject"),
            "body": text,
            "at": time.time(),
        })
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        return "250 OK"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON-lines file to append each delivery to")
    ap.add_argument("--delay-ms", type=int, default=0,
                    help="sleep this long after recording a delivery, before answering")
    ap.add_argument("--fail-first", type=int, default=0,
                    help="answer 503 to the first N HTTP POSTs overall")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    delay = max(args.delay_ms, 0) / 1000.0
    recorder = Recorder(args.out, args.fail_first)

    http = QuietHTTPServer(("127.0.0.1", 0), make_http_handler(recorder, delay))
    http_thread = threading.Thread(target=http.serve_forever, name="http", daemon=True)
    http_thread.start()

    # A free port is picked first and handed over; start() returns once the
    # server answers a connection of its own, so it accepts connections then.
    controller = Controller(SmtpHandler(recorder, delay), hostname="127.0.0.1",
                            port=free_port(), server_hostname="notify-receivers.test")
    controller.start()

    print(json.dumps({"http_port": http.server_address[1], "smtp_port": controller.port}),
          flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        http.shutdown()
        http.server_close()
        controller.stop(no_assert=True)
        recorder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
