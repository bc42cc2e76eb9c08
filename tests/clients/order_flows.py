#!/usr/bin/env python3
"""Plant order and shipment flows in faultline with the real OpenTelemetry Python SDK.

Used by faultline's consistency-rule tests (tests/consistency.rs):

    order_flows.py --endpoint-file EP --protocol http --per-class 40 --within-ms 2000 \
        --prefix run1 --seed 7 --batch 25

Every key (attribute order.id) is planted in one of five ways:

* on_time:   "create order" (service orders), then "ship order" (service shipping)
             within --within-ms;
* late:      the shipment 2.5 x within after the order;
* missing:   an order and no shipment;
* duplicate: an order and two shipments, both on time;
* orphan:    a shipment and no order.

Each span is its own trace (an order and its shipment are different requests), with
start times set explicitly from now. The spans are made by the SDK's tracers, collected
in memory, shuffled (seeded), and exported in batches of --batch spans by the SDK's OTLP
exporter (HTTP or gRPC). An export that fails is retried, with the same spans, until it
succeeds: faultline may be killed and restarted meanwhile, and its endpoint is read again
from --endpoint-file before every attempt (the test rewrites it after each restart). A
span may therefore reach faultline twice (written before a crash, re-sent after); its
ids are the same.

On completion it prints one JSON line:
    {"keys": {"run1-late-3": "late", ...}, "exports": N, "retries": M}
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

CLASSES = ["on_time", "late", "missing", "duplicate", "orphan"]


def exporter(protocol: str, endpoint: str):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=3)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces", timeout=3)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint-file", required=True)
    p.add_argument("--protocol", choices=["http", "grpc"], default="http")
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--within-ms", type=int, default=2000)
    p.add_argument("--prefix", default="k")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--pause-ms", type=int, default=20)
    p.add_argument("--give-up-s", type=float, default=120)
    a = p.parse_args()

    collected = InMemorySpanExporter()
    tracers = {}
    for service in ["orders", "shipping"]:
        tp = TracerProvider(resource=Resource.create({"service.name": service}))
        tp.add_span_processor(SimpleSpanProcessor(collected))
        tracers[service] = tp.get_tracer("order-flows")

    within = a.within_ms * 1_000_000
    base = time.time_ns()
    truth = {}

    def span(service: str, name: str, key: str, start: int) -> None:
        s = tracers[service].start_span(name, start_time=start, attributes={"order.id": key})
        s.end(end_time=start + 3_000_000)

    rng = random.Random(a.seed)
    n = 0
    for cls in CLASSES:
        for i in range(a.per_class):
            key = f"{a.prefix}-{cls}-{i}"
            truth[key] = cls
            t = base + n * 1_000_000
            n += 1
            if cls != "orphan":
                span("orders", "create order", key, t)
            if cls == "on_time":
                span("shipping", "ship order", key, t + within // 2)
            elif cls == "late":
                span("shipping", "ship order", key, t + within * 5 // 2)
            elif cls == "duplicate":
                span("shipping", "ship order", key, t + within // 4)
                span("shipping", "ship order", key, t + within // 3)
            elif cls == "orphan":
                span("shipping", "ship order", key, t)
    spans = list(collected.get_finished_spans())
    rng.shuffle(spans)

    exports = retries = 0
    current = (None, None)
    deadline = time.monotonic() + a.give_up_s
    for start in range(0, len(spans), a.batch):
        batch = spans[start : start + a.batch]
        while True:
            endpoint = Path(a.endpoint_file).read_text().strip()
            if current[0] != endpoint:
                current = (endpoint, exporter(a.protocol, endpoint))
            try:
                result = current[1].export(batch)
            except Exception as e:  # the exporter raising counts as a failure
                print(f"export raised: {e}", file=sys.stderr)
                result = SpanExportResult.FAILURE
            if result == SpanExportResult.SUCCESS:
                exports += 1
                break
            retries += 1
            if time.monotonic() > deadline:
                print("gave up: faultline did not accept an export in time", file=sys.stderr)
                return 1
            time.sleep(0.2)
        time.sleep(a.pause_ms / 1000)
    print(json.dumps({"keys": truth, "exports": exports, "retries": retries}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
