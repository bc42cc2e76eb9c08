#!/usr/bin/env python3
"""Send checkout traces with planted regressions, with the real OpenTelemetry Python SDK.

Used by faultline's continuous-assertion test (tests/consistency.rs):

    checkout_variants.py --endpoint http://127.0.0.1:4318 --each 5

Every trace is a SERVER root "POST /checkout" of service checkout-svc with children, as
an instrumented service would make them (explicit times, nothing sleeps):

* ok:          "db.query" (CLIENT, db.system=postgresql, 5-40 ms), then
               "payment.charge" (CLIENT, 10-60 ms);
* extra_db:    as ok with a second "db.query" (an N+1 regression);
* no_payment:  as ok without "payment.charge" (a missing span);
* slow_db:     as ok with "db.query" taking 300-600 ms (a slow span).

--each traces of every variant, in random order (seeded), through a BatchSpanProcessor
and the OTLP/HTTP exporter. Prints one JSON line, the trace ids per variant:
    {"ok": ["<32 hex>", ...], "extra_db": [...], ...}
and exits 1 unless every export succeeded.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind, set_span_in_context

VARIANTS = ["ok", "extra_db", "no_payment", "slow_db"]


class Recording(OTLPSpanExporter):
    failures = 0

    def export(self, spans):
        r = super().export(spans)
        if r != SpanExportResult.SUCCESS:
            Recording.failures += 1
        return r


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--each", type=int, default=5)
    p.add_argument("--seed", type=int, default=3)
    a = p.parse_args()
    rng = random.Random(a.seed)
    tp = TracerProvider(resource=Resource.create({"service.name": "checkout-svc"}))
    tp.add_span_processor(BatchSpanProcessor(Recording(endpoint=a.endpoint.rstrip("/") + "/v1/traces")))
    tracer = tp.get_tracer("checkout")
    plan = [v for v in VARIANTS for _ in range(a.each)]
    rng.shuffle(plan)
    out = {v: [] for v in VARIANTS}
    ms = 1_000_000
    for variant in plan:
        t = time.time_ns()
        root = tracer.start_span("POST /checkout", kind=SpanKind.SERVER, start_time=t,
                                 attributes={"user.id": f"u{rng.randrange(10**9)}"})
        ctx = set_span_in_context(root)
        cursor = t + ms
        queries = 2 if variant == "extra_db" else 1
        for _ in range(queries):
            d = rng.randint(300, 600) if variant == "slow_db" else rng.randint(5, 40)
            s = tracer.start_span("db.query", context=ctx, kind=SpanKind.CLIENT, start_time=cursor,
                                  attributes={"db.system": "postgresql"})
            s.end(end_time=cursor + d * ms)
            cursor += (d + 1) * ms
        if variant != "no_payment":
            d = rng.randint(10, 60)
            s = tracer.start_span("payment.charge", context=ctx, kind=SpanKind.CLIENT, start_time=cursor)
            s.end(end_time=cursor + d * ms)
            cursor += (d + 1) * ms
        root.end(end_time=cursor)
        out[variant].append(format(root.get_span_context().trace_id, "032x"))
    tp.shutdown()
    if Recording.failures:
        print(f"{Recording.failures} exports failed", file=sys.stderr)
        return 1
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
