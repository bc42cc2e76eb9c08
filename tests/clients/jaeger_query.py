#!/usr/bin/env python3
"""Fetch one trace from faultline's Jaeger query API, as a Jaeger API client does.

A plain HTTP client (requests) against Jaeger's v1 JSON API, the API Jaeger UI and
Grafana's Jaeger data source call:

    jaeger_query.py --api http://127.0.0.1:16686 --trace-id <32 hex> [--bearer TOKEN]

It GETs /api/traces/{id} (with Authorization: Bearer TOKEN when given) and /api/services,
and prints one JSON line: {"status": 200, "spans": 3, "services": [...],
"servicesStatus": 200}. The trace is retried for up to 10 s while it answers 404 (indexing
is asynchronous). Exit 0 whatever the status: the test judges it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", required=True)
    parser.add_argument("--trace-id", required=True)
    parser.add_argument("--bearer")
    args = parser.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.bearer}"} if args.bearer else {}
    api = args.api.rstrip("/")
    deadline = time.monotonic() + 10
    while True:
        r = requests.get(f"{api}/api/traces/{args.trace_id}", headers=headers, timeout=10)
        if r.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    spans = 0
    if r.status_code == 200:
        spans = sum(len(t["spans"]) for t in r.json()["data"])
    s = requests.get(f"{api}/api/services", headers=headers, timeout=10)
    services = s.json().get("data") if s.status_code == 200 else None
    print(
        json.dumps(
            {
                "status": r.status_code,
                "spans": spans,
                "services": services,
                "servicesStatus": s.status_code,
                "wwwAuthenticate": r.headers.get("WWW-Authenticate"),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
