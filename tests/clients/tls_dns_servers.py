#!/usr/bin/env python3
"""Real HTTPS and DNS servers with planted faults, for faultline's probe tests.

    tls_dns_servers.py --dir DIR

It makes a test CA (trustme), writes its certificate to DIR/ca.pem (and each
server's key and chain to DIR/<name>.pem), starts the servers below on free loopback
ports, prints one JSON line once all of them accept connections, and serves until
killed (SIGTERM or SIGINT end it cleanly):

    {"ca": "DIR/ca.pem", "https": {"soon": port, "fine": port, "untrusted": port,
     "expired": port}, "dns": port, "not_after": {"soon": unix_seconds, ...}}

HTTPS (stdlib http.server + ssl, threaded) answers GET or HEAD on any path with 200
"ok". Each certificate names DNS:localhost and IP:127.0.0.1:

    soon       from the CA, valid from now-1d to now+3d
    fine       from the CA, valid from now-1d to now+90d
    untrusted  self-signed (not from the CA), valid from now-1d to now+90d
    expired    from the CA, valid from now-30d to now-1d

not_after holds each certificate's notAfter exactly as encoded (whole seconds).

DNS (dnslib's DNSServer, UDP and TCP on the same port) answers authoritatively
from a fixed zone, TTL 60:

    ok.probe.test.     A     127.0.0.1
    wrong.probe.test.  A     10.9.8.7
    v6.probe.test.     AAAA  ::1
    mail.probe.test.   MX    10 mx.probe.test.
    txt.probe.test.    TXT   "v=faultline"
    alias.probe.test.  CNAME ok.probe.test.   (an A query also gets ok's A record)

A name in the zone asked for a type it lacks gets NOERROR with no answers; any other
name gets NXDOMAIN.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import signal
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dnslib import QTYPE, RCODE, RR
from dnslib.server import DNSLogger, DNSServer
from dnslib.server import TCPServer as DnslibTCPServer
from dnslib.server import UDPServer as DnslibUDPServer

ZONE = """
ok.probe.test.     60 IN A     127.0.0.1
wrong.probe.test.  60 IN A     10.9.8.7
v6.probe.test.     60 IN AAAA  ::1
mail.probe.test.   60 IN MX    10 mx.probe.test.
txt.probe.test.    60 IN TXT   "v=faultline"
alias.probe.test.  60 IN CNAME ok.probe.test.
"""

DAY = dt.timedelta(days=1)


# ---------------------------------------------------------------- certificates

def self_signed(not_before: dt.datetime, not_after: dt.datetime) -> bytes:
    """Key and certificate PEM of a self-signed leaf for localhost / 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "faultline untrusted")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM)


def not_after_of(pem: bytes) -> int:
    return int(x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp())


# ---------------------------------------------------------------- HTTPS

class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # Failed handshakes (the point of untrusted/expired) and clients that go
        # away are expected; anything else is a bug here and worth one traceback.
        if not isinstance(sys.exc_info()[1], OSError):  # ssl.SSLError is an OSError
            super().handle_error(request, client_address)


class HTTPSServer(QuietHTTPServer):
    """Wraps each accepted connection; the handshake runs in the handler's thread,
    so a client that connects and stalls never blocks accept()."""

    def __init__(self, address, handler, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(address, handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class OkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30

    def setup(self) -> None:
        super().setup()  # sets the socket timeout, which bounds the handshake too
        self.request.do_handshake()

    def _answer(self, with_body: bool) -> None:
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        self._answer(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(False)

    def log_message(self, *a) -> None:
        pass


# ---------------------------------------------------------------- DNS

class ZoneResolver:
    """Authoritative answers from ZONE. dnslib's own ZoneResolver answers NXDOMAIN
    for a name that exists but lacks the asked type, and leaves a CNAME's target out
    of the answer, so this one does both as a real server would."""

    def __init__(self, zone: str) -> None:
        self.records: dict[str, list[RR]] = {}
        for rr in RR.fromZone(zone):
            self.records.setdefault(str(rr.rname).lower(), []).append(rr)

    def resolve(self, request, handler):
        reply = request.reply()  # qr, aa, rd copied, ra
        name = str(request.q.qname).lower()
        qtype = request.q.qtype
        if name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for _ in range(8):  # follow CNAMEs inside the zone, bounded
            rrs = self.records.get(name, [])
            cname = [rr for rr in rrs if rr.rtype == QTYPE.CNAME]
            if cname and qtype not in (QTYPE.CNAME, QTYPE.ANY):
                reply.add_answer(*cname)
                name = str(cname[0].rdata.label).lower()
                continue
            reply.add_answer(*[rr for rr in rrs if qtype == QTYPE.ANY or rr.rtype == qtype])
            break
        return reply


def _quiet_dns(base):
    class Quiet(base):
        def server_bind(self) -> None:
            # dnslib sets SO_REUSEADDR on both; on UDP that would let this bind a
            # port another UDP socket already holds, so keep it for TCP only.
            if base is DnslibUDPServer:
                self.allow_reuse_address = False
            super().server_bind()

        def handle_error(self, request, client_address) -> None:
            if not isinstance(sys.exc_info()[1], OSError):
                super().handle_error(request, client_address)
    return Quiet


QuietUDP = _quiet_dns(DnslibUDPServer)
QuietTCP = _quiet_dns(DnslibTCPServer)


def start_dns(resolver) -> tuple[int, list[DNSServer]]:
    """UDP and TCP servers on one free port: TCP takes a free port, UDP tries it."""
    logger = DNSLogger("-request,-reply,-truncated,-error", prefix=False)
    last: OSError | None = None
    for _ in range(50):
        tcp = DNSServer(resolver, address="127.0.0.1", port=0, tcp=True, logger=logger, server=QuietTCP)
        port = tcp.server.server_address[1]
        try:
            udp = DNSServer(resolver, address="127.0.0.1", port=port, logger=logger, server=QuietUDP)
        except OSError as e:
            last = e
            tcp.server.server_close()
            continue
        tcp.start_thread()
        udp.start_thread()
        return port, [tcp, udp]
    raise RuntimeError(f"no port free for both UDP and TCP: {last}")


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="folder for ca.pem and the servers' keys")
    args = ap.parse_args()
    out = os.path.abspath(args.dir)
    os.makedirs(out, exist_ok=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    # Certificates carry whole seconds; dropping the fraction keeps not_after exact.
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    ca = trustme.CA(organization_name="faultline test CA")
    ca_path = os.path.join(out, "ca.pem")
    ca.cert_pem.write_to_path(ca_path)

    def from_ca(not_before: dt.datetime, not_after: dt.datetime) -> bytes:
        leaf = ca.issue_cert("localhost", "127.0.0.1", common_name="localhost",
                             not_before=not_before, not_after=not_after)
        return leaf.private_key_and_cert_chain_pem.bytes()

    pems = {
        "soon": from_ca(now - DAY, now + 3 * DAY),
        "fine": from_ca(now - DAY, now + 90 * DAY),
        "untrusted": self_signed(now - DAY, now + 90 * DAY),
        "expired": from_ca(now - 30 * DAY, now - DAY),
    }

    servers: list[HTTPSServer] = []
    ports: dict[str, int] = {}
    not_after: dict[str, int] = {}
    for name, pem in pems.items():
        path = os.path.join(out, f"{name}.pem")
        with open(path, "wb") as f:
            f.write(pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(path)
        server = HTTPSServer(("127.0.0.1", 0), OkHandler, ctx)
        threading.Thread(target=server.serve_forever, name=f"https-{name}", daemon=True).start()
        servers.append(server)
        ports[name] = server.server_address[1]
        # The leaf comes first after the key in each chain.
        leaf = pem[pem.index(b"-----BEGIN CERTIFICATE-----"):]
        not_after[name] = not_after_of(leaf)

    dns_port, dns_servers = start_dns(ZoneResolver(ZONE))

    print(json.dumps({"ca": ca_path, "https": ports, "dns": dns_port, "not_after": not_after}),
          flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        for d in dns_servers:
            d.stop()
            d.server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
