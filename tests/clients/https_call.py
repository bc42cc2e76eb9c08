"""One HTTPS (or HTTP) request with `requests`, for the TLS tests.

    https_call.py URL [--ca ca.pem] [--bearer TOKEN] [--method GET] [--data TEXT]
        [--header 'Name: value' ...] [--client-cert c.pem --client-key c.key]

Prints {"status": N, "headers": {lowercase name: value}, "body": "..."} and exits 0 when an answer came;
prints {"error": "..."} and exits 0 when the connection or handshake failed (the tests
look at which).
"""

import argparse
import json
import sys

import requests


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--ca")
    p.add_argument("--bearer")
    p.add_argument("--method", default="GET")
    p.add_argument("--data")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--client-cert")
    p.add_argument("--client-key")
    a = p.parse_args()
    headers = dict(h.split(": ", 1) for h in a.header)
    if a.bearer:
        headers["Authorization"] = f"Bearer {a.bearer}"
    cert = (a.client_cert, a.client_key) if a.client_cert else None
    try:
        r = requests.request(
            a.method, a.url, headers=headers, data=a.data, verify=a.ca or True, cert=cert,
            timeout=10, allow_redirects=False,
        )
    except requests.RequestException as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 0
    print(json.dumps({"status": r.status_code, "headers": {k.lower(): v for k, v in r.headers.items()}, "body": r.text}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
