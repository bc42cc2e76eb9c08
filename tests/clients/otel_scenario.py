#!/usr/bin/env python3
"""Five services traced with the real OpenTelemetry Python SDK, with planted causes.

Used by faultline's UI tests as a third-party client:

    otel_scenario.py --endpoint http://127.0.0.1:4318 --requests 400 --seed 7

Each service has its own TracerProvider (resource service.name, host.name of one of
three instances) and its own BatchSpanProcessor exporting OTLP/HTTP protobuf, as five
separately deployed SDKs would. A request is:

    frontend  SERVER "GET /checkout"
      ├─ CLIENT "POST /auth"     → auth SERVER "Authenticate"
      │                              └─ INTERNAL "verify token"
      ├─ CLIENT "GET /cart"      → cart SERVER "GetCart"
      │                              └─ CLIENT "POST /reserve" → inventory SERVER "Reserve"
      └─ CLIENT "POST /charge"   → payment SERVER "Charge"    (unless auth failed)

Durations are log-normal and start times spread over the last 50 minutes (explicit
start and end times, so nothing sleeps). Every span carries a fresh user.id, a user
agent from 40 and a request size; planted in each service, on its own spans only:

* a slow attribute value, in its own spans and adding to its own latency:
  frontend region=eu-west (25% of requests, +500 ms), auth auth.method=ldap (15%,
  +250 ms), cart cart.size=large (15%, +200 ms), inventory warehouse=north (15%,
  +150 ms), payment payment.provider=legacy-bank (15%, +300 ms); the other values of
  each key are spread evenly over the rest;
* three exception types: frontend's own ValueError (2%, no callee failed), auth's
  TokenExpiredError (3%, raised in "verify token" and failing "Authenticate" too;
  frontend fails as a result and does not call payment), and
  payment's CardDeclinedError (4%; frontend fails as a result). Cart and inventory
  never fail.

On success it prints one JSON line: per service the requests (entry spans) and failing
requests sent, the planted slow attribute, the exception types raised in the service
itself, and the causes of its errors in callees:

    {"spans": 3600, "services": {"frontend": {"requests": 400, "errors": 36,
     "slow": "region=eu-west", "own_exceptions": {"ValueError": 8},
     "caused_by": {"payment Charge: CardDeclinedError": 16, ...}}, ...}}

It exits 1, with a message on stderr, unless every span was exported successfully.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_send import RecordingExporter, make_exporter

MS = 1_000_000

# service: (key, planted value, other values, share, extra ms)
SLOW = {
    "frontend": ("region", "eu-west", ["us-east", "us-west", "ap-south"], 0.25, 500),
    "auth": ("auth.method", "ldap", ["password", "sso", "token"], 0.15, 250),
    "cart": ("cart.size", "large", ["small", "medium"], 0.15, 200),
    "inventory": ("warehouse", "north", ["south", "east", "west"], 0.15, 150),
    "payment": ("payment.provider", "legacy-bank", ["stripe", "adyen"], 0.15, 300),
}
AGENTS = [f"shop-client/{major}.{minor} (build {major * 7 + minor})" for major in range(4) for minor in range(10)]


class Scenario:
    def __init__(self, endpoint: str, seed: int) -> None:
        self.rng = random.Random(seed)
        self.providers: dict[str, TracerProvider] = {}
        self.exporters: dict[str, RecordingExporter] = {}
        self.tracers = {}
        for svc in SLOW:
            exporter = RecordingExporter(make_exporter("http", endpoint, "none"))
            provider = TracerProvider(
                resource=Resource.create(
                    {
                        "service.name": svc,
                        "host.name": f"{svc}-{self.rng.randrange(3)}",
                        "deployment.environment": "test",
                    }
                )
            )
            provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=256))
            self.providers[svc] = provider
            self.exporters[svc] = exporter
            self.tracers[svc] = provider.get_tracer("faultline-scenario")
        self.spans = 0
        self.report = {
            svc: {
                "requests": 0,
                "errors": 0,
                "slow": f"{SLOW[svc][0]}={SLOW[svc][1]}",
                "own_exceptions": {},
                "caused_by": {},
            }
            for svc in SLOW
        }

    def duration(self, median_ms: float) -> int:
        return int(self.rng.lognormvariate(math.log(median_ms), 0.35) * MS)

    def common(self, svc: str, attrs: dict) -> tuple[dict, int]:
        """Attributes of a service's entry span, with its planted value; and its extra ns."""
        key, value, others, share, extra = SLOW[svc]
        slow = self.rng.random() < share
        attrs = dict(attrs)
        attrs[key] = value if slow else self.rng.choice(others)
        attrs["user.id"] = f"u-{self.rng.getrandbits(48):012x}"
        attrs["user_agent.original"] = self.rng.choice(AGENTS)
        attrs["http.request.body.size"] = self.rng.randrange(100, 5000)
        return attrs, (extra * MS if slow else 0)

    def span(self, svc, name, kind, parent, start, end, attrs=None, error=None):
        """One finished span; `error` is (exception type, message) or a status message."""
        ctx = trace.set_span_in_context(parent) if parent is not None else None
        s = self.tracers[svc].start_span(name, context=ctx, kind=kind, attributes=attrs or {}, start_time=start)
        if isinstance(error, tuple):
            exc_type, message = error
            s.add_event(
                "exception",
                {"exception.type": exc_type, "exception.message": message, "exception.escaped": "True"},
                timestamp=start + (end - start) // 2,
            )
            s.set_status(Status(StatusCode.ERROR, message))
        elif isinstance(error, str):
            s.set_status(Status(StatusCode.ERROR, error))
        s.end(end_time=end)
        self.spans += 1
        return s

    def entry(self, svc: str, failed: bool) -> None:
        self.report[svc]["requests"] += 1
        self.report[svc]["errors"] += int(failed)

    def request(self, start: int) -> None:
        r = self.rng.random()
        # Disjoint failure draws: auth 3%, payment 4%, frontend's own 2%.
        auth_fails, pay_fails, own_fails = r < 0.03, 0.03 <= r < 0.07, 0.07 <= r < 0.09
        fe_attrs, fe_extra = self.common("frontend", {"http.request.method": "GET", "http.route": "/checkout"})
        root = self.tracers["frontend"].start_span(
            "GET /checkout", kind=SpanKind.SERVER, attributes=fe_attrs, start_time=start
        )
        self.spans += 1
        t = start + self.duration(2)

        # auth
        a_attrs, a_extra = self.common("auth", {"rpc.method": "Authenticate"})
        a_len = self.duration(8) + a_extra
        call = self.tracers["frontend"].start_span(
            "POST /auth", context=trace.set_span_in_context(root), kind=SpanKind.CLIENT, start_time=t
        )
        self.spans += 1
        a_start = t + self.duration(0.5)
        a_err = ("TokenExpiredError", f"token {self.rng.getrandbits(32):08x} expired {self.rng.randrange(1, 90)} s ago") if auth_fails else None
        auth = self.tracers["auth"].start_span(
            "Authenticate", context=trace.set_span_in_context(call), kind=SpanKind.SERVER,
            attributes=a_attrs, start_time=a_start,
        )
        self.spans += 1
        v_len = self.duration(2)
        self.span("auth", "verify token", SpanKind.INTERNAL, auth, a_start + MS // 2, a_start + MS // 2 + v_len, error=a_err)
        a_end = a_start + max(a_len, v_len + MS)
        if a_err:
            auth.set_status(Status(StatusCode.ERROR, a_err[1]))
        auth.end(end_time=a_end)
        self.entry("auth", auth_fails)
        if auth_fails:
            self.report["auth"]["own_exceptions"]["TokenExpiredError"] = self.report["auth"]["own_exceptions"].get("TokenExpiredError", 0) + 1
        t = a_end + self.duration(0.5)
        if auth_fails:
            call.set_status(Status(StatusCode.ERROR, "HTTP 401"))
        call.set_attribute("http.response.status_code", 401 if auth_fails else 200)
        call.end(end_time=t)

        # cart → inventory
        c_attrs, c_extra = self.common("cart", {"rpc.method": "GetCart"})
        call = self.tracers["frontend"].start_span(
            "GET /cart", context=trace.set_span_in_context(root), kind=SpanKind.CLIENT, start_time=t
        )
        self.spans += 1
        c_start = t + self.duration(0.5)
        cart = self.tracers["cart"].start_span(
            "GetCart", context=trace.set_span_in_context(call), kind=SpanKind.SERVER,
            attributes=c_attrs, start_time=c_start,
        )
        self.spans += 1
        ci = c_start + self.duration(3) + c_extra
        res = self.tracers["cart"].start_span(
            "POST /reserve", context=trace.set_span_in_context(cart), kind=SpanKind.CLIENT, start_time=ci
        )
        self.spans += 1
        i_attrs, i_extra = self.common("inventory", {"rpc.method": "Reserve"})
        i_start = ci + self.duration(0.4)
        i_end = i_start + self.duration(6) + i_extra
        self.span("inventory", "Reserve", SpanKind.SERVER, res, i_start, i_end, attrs=i_attrs)
        self.entry("inventory", False)
        res.end(end_time=i_end + self.duration(0.4))
        c_end = i_end + self.duration(1)
        cart.end(end_time=c_end)
        self.entry("cart", False)
        t = c_end + self.duration(0.5)
        call.end(end_time=t)

        # payment (not after a failed authentication)
        caused = None
        if not auth_fails:
            p_attrs, p_extra = self.common("payment", {"rpc.method": "Charge"})
            call = self.tracers["frontend"].start_span(
                "POST /charge", context=trace.set_span_in_context(root), kind=SpanKind.CLIENT, start_time=t
            )
            self.spans += 1
            p_start = t + self.duration(0.5)
            p_end = p_start + self.duration(15) + p_extra
            p_err = ("CardDeclinedError", f"card ending {self.rng.randrange(1000, 9999)} declined") if pay_fails else None
            self.span("payment", "Charge", SpanKind.SERVER, call, p_start, p_end, attrs=p_attrs, error=p_err)
            self.entry("payment", pay_fails)
            if pay_fails:
                self.report["payment"]["own_exceptions"]["CardDeclinedError"] = self.report["payment"]["own_exceptions"].get("CardDeclinedError", 0) + 1
                caused = "payment Charge: CardDeclinedError"
                call.set_status(Status(StatusCode.ERROR, "HTTP 402"))
            t = p_end + self.duration(0.5)
            call.set_attribute("http.response.status_code", 402 if pay_fails else 200)
            call.end(end_time=t)
        else:
            caused = "auth verify token: TokenExpiredError"

        end = t + self.duration(1) + fe_extra
        if own_fails:
            root.add_event("exception", {"exception.type": "ValueError", "exception.message": f"bad quantity {self.rng.randrange(-9, 0)}"}, timestamp=end - MS)
            root.set_status(Status(StatusCode.ERROR, "bad request"))
            self.report["frontend"]["own_exceptions"]["ValueError"] = self.report["frontend"]["own_exceptions"].get("ValueError", 0) + 1
        elif caused:
            root.set_status(Status(StatusCode.ERROR, "upstream failed"))
            self.report["frontend"]["caused_by"][caused] = self.report["frontend"]["caused_by"].get(caused, 0) + 1
        root.end(end_time=end)
        self.entry("frontend", own_fails or caused is not None)

    def finish(self) -> str | None:
        for p in self.providers.values():
            p.force_flush(30_000)
            p.shutdown()
        exported = sum(e.spans_attempted for e in self.exporters.values())
        for svc, e in self.exporters.items():
            failure = e.failure(0)
            if failure:
                return f"{svc}: {failure}"
        if exported != self.spans:
            return f"{exported} of {self.spans} spans were exported"
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True, help="OTLP/HTTP base URL, e.g. http://127.0.0.1:4318")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    sc = Scenario(args.endpoint, args.seed)
    now = time.time_ns()
    window = 50 * 60 * 1_000_000_000
    starts = sorted(now - window + sc.rng.randrange(window - 5 * 1_000_000_000) for _ in range(args.requests))
    for start in starts:
        sc.request(start)
    failure = sc.finish()
    if failure:
        print(f"export failed: {failure}", file=sys.stderr)
        return 1
    print(json.dumps({"spans": sc.spans, "services": sc.report}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
