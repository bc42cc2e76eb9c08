#!/usr/bin/env python3
"""A small HTTP service instrumented with the OpenTelemetry Python SDK, for probe tests.

    probe_backend.py --otlp http://127.0.0.1:4318

It listens on a free loopback port, prints {"port": N} on one line once it accepts
connections, and serves until killed. Each request continues the caller's trace from
its W3C `traceparent` header (the SDK's propagator) with a SERVER span of service
"probe-backend", exported at once (SimpleSpanProcessor) over OTLP/HTTP, and a child
INTERNAL span "work". Paths, each failing in a planted way:

    /ok           200 "ok"
    /fail         500 "boom" (the span has status ERROR)
    /slow         waits 3 s, then 200 "ok"
    /mismatch     200 "not what you expect"
    /redirect-in  302 to /ok on this server
    /redirect-out 302 to http://10.255.255.1/ (an address no probe names)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

PLAN = {
    "/ok": (200, b"ok", 0.0, None),
    "/fail": (500, b"boom", 0.0, None),
    "/slow": (200, b"ok", 3.0, None),
    "/mismatch": (200, b"not what you expect", 0.0, None),
    "/redirect-in": (302, b"", 0.0, "/ok"),
    "/redirect-out": (302, b"", 0.0, "http://10.255.255.1/"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--otlp", required=True, help="faultline's OTLP/HTTP base URL")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    provider = TracerProvider(resource=Resource.create({"service.name": "probe-backend"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=args.otlp.rstrip("/") + "/v1/traces", timeout=5))
    )
    tracer = provider.get_tracer("probe-backend")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            status, body, delay, location = PLAN.get(self.path, (404, b"no such path", 0.0, None))
            ctx = extract(dict(self.headers.items()))
            with tracer.start_as_current_span(
                f"GET {self.path}", context=ctx, kind=SpanKind.SERVER,
                attributes={"http.request.method": "GET", "url.path": self.path,
                            "http.response.status_code": status},
            ) as span:
                with tracer.start_as_current_span("work"):
                    time.sleep(delay)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR, body.decode()))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *a) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    finally:
        provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
