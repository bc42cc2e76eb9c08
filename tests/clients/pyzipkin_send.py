"""Sends a two-span trace with py-zipkin (Yelp's Zipkin client), Zipkin v2 JSON.

    pyzipkin_send.py --endpoint https://127.0.0.1:9411 --service svc --marker m \
        [--bearer TOKEN] [--ca ca.pem] [--client-cert client.pem --client-key client.key]

py-zipkin leaves the transport to its user; this one is the usual kind, a `requests`
POST to {endpoint}/api/v2/spans with the token as `Authorization: Bearer` and the CA
(and client certificate) given. Prints {"trace_id": ..., "status": N} and exits 0 when
the server accepted the spans (2xx); otherwise prints `HTTP N` or the connection error
to stderr and exits 1.
"""

import argparse
import json
import sys

import requests
from py_zipkin import Encoding
from py_zipkin.transport import BaseTransportHandler
from py_zipkin.zipkin import zipkin_span


class Transport(BaseTransportHandler):
    def __init__(self, url: str, headers: dict, verify, cert) -> None:
        self.url, self.headers, self.verify, self.cert = url, headers, verify, cert
        self.status = None
        self.error = None

    def get_max_payload_bytes(self):
        return None

    def send(self, payload: bytes) -> None:
        headers = {"Content-Type": "application/json", **self.headers}
        try:
            r = requests.post(
                self.url, data=payload, headers=headers, verify=self.verify, cert=self.cert, timeout=10
            )
            self.status = r.status_code
        except requests.RequestException as e:
            self.error = f"{type(e).__name__}: {e}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--bearer")
    parser.add_argument("--ca", help="PEM CA to trust (https endpoints)")
    parser.add_argument("--client-cert")
    parser.add_argument("--client-key")
    args = parser.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.bearer}"} if args.bearer else {}
    cert = (args.client_cert, args.client_key) if args.client_cert else None
    transport = Transport(
        args.endpoint.rstrip("/") + "/api/v2/spans", headers, args.ca or True, cert
    )
    with zipkin_span(
        service_name=args.service,
        span_name="checkout",
        transport_handler=transport,
        sample_rate=100.0,
        encoding=Encoding.V2_JSON,
        binary_annotations={"marker": args.marker},
    ) as root:
        trace_id = root.zipkin_attrs.trace_id
        with zipkin_span(service_name=args.service, span_name="charge-card"):
            pass
    if transport.error:
        print(f"pyzipkin_send: {transport.error}", file=sys.stderr)
        return 1
    print(json.dumps({"trace_id": trace_id, "status": transport.status}), flush=True)
    if transport.status is None or not 200 <= transport.status < 300:
        print(f"pyzipkin_send: HTTP {transport.status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
