#!/usr/bin/env python3
"""Send one known trace to faultline with the real OpenTelemetry Python SDK.

Used by faultline's integration tests as a third-party client:

    otel_send.py --protocol grpc --endpoint http://127.0.0.1:4317 \
        --service checkout-svc --marker m-123
    otel_send.py --protocol http --endpoint http://127.0.0.1:4318 \
        --service checkout-svc --marker m-123 --compression gzip

The trace has three spans:

* root "checkout {marker}" (SERVER) with attributes marker (string),
  http.response.status_code=200 (int), cart.total=12.5 (double),
  cart.express=True (bool) and cart.items=["a", "b"] (string array);
* child "db.query" (CLIENT) with db.system="postgresql" and an event "retry"
  carrying attempt=2;
* child "payment.charge" with status ERROR "card declined" and a recorded
  ValueError("card declined") exception event.

Resource: service.name=--service, deployment.environment="test",
host.name="client-host".

On success it prints one JSON line to stdout:
    {"trace_id": "<32 hex>", "span_ids": ["<16 hex>", ...], "spans": 3}
(span_ids in the order root, db.query, payment.charge) and exits 0.

The SDK only logs export failures, so the exporter is wrapped to record every
SpanExportResult (an exception raised by the exporter counts as a failure).
The script exits 1, with a message on stderr, unless every span went through
an export call and every export call returned SUCCESS.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

EXPORT_TIMEOUT_SECONDS = 5
EXPECTED_SPANS = 3


class RecordingExporter(SpanExporter):
    """Passes spans to the real exporter and remembers how each export went."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.results: list[SpanExportResult] = []
        self.errors: list[str] = []
        self.spans_attempted = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # the SDK would only log this
            result = SpanExportResult.FAILURE
            with self._lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.spans_attempted += len(spans)
            self.results.append(result)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def failure(self, expected_spans: int) -> str | None:
        """Why the export failed, or None if every span was exported."""
        with self._lock:
            if self.errors:
                return "; ".join(self.errors)
            bad = [r for r in self.results if r is not SpanExportResult.SUCCESS]
            if bad:
                return f"{len(bad)} of {len(self.results)} export call(s) returned {bad[0].name}"
            if self.spans_attempted < expected_spans:
                return f"only {self.spans_attempted} of {expected_spans} spans reached the exporter"
        return None


def make_exporter(protocol: str, endpoint: str, compression: str) -> SpanExporter:
    if protocol == "grpc":
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter,
        )

        # https: TLS, the CA and client certificate from OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE,
        # _CLIENT_CERTIFICATE and _CLIENT_KEY, as the SDK reads them.
        return OTLPSpanExporter(
            endpoint=endpoint,
            insecure=not endpoint.startswith("https://"),
            timeout=EXPORT_TIMEOUT_SECONDS,
            compression=grpc.Compression.Gzip
            if compression == "gzip"
            else grpc.Compression.NoCompression,
        )

    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter,
    )

    return OTLPSpanExporter(
        endpoint=endpoint.rstrip("/") + "/v1/traces",
        timeout=EXPORT_TIMEOUT_SECONDS,
        compression=Compression.Gzip if compression == "gzip" else Compression.NoCompression,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("grpc", "http"), required=True)
    parser.add_argument(
        "--endpoint",
        required=True,
        help="grpc: e.g. http://127.0.0.1:4317; http: base URL, e.g. "
        "http://127.0.0.1:4318 (spans go to {endpoint}/v1/traces)",
    )
    parser.add_argument("--service", required=True, help="resource service.name")
    parser.add_argument("--marker", required=True, help="string to find the trace by")
    parser.add_argument("--compression", choices=("none", "gzip"), default="none")
    args = parser.parse_args(argv)

    # The SDK reports export problems through logging; keep them on stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    resource = Resource.create(
        {
            "service.name": args.service,
            "deployment.environment": "test",
            "host.name": "client-host",
        }
    )
    exporter = RecordingExporter(make_exporter(args.protocol, args.endpoint, args.compression))
    provider = TracerProvider(resource=resource)
    # A long schedule delay so that force_flush sends the whole trace at once.
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            schedule_delay_millis=60_000,
            export_timeout_millis=EXPORT_TIMEOUT_SECONDS * 1000,
        )
    )
    tracer = provider.get_tracer("faultline.tests.otel_send")

    with tracer.start_as_current_span(
        f"checkout {args.marker}",
        kind=SpanKind.SERVER,
        attributes={
            "marker": args.marker,
            "http.response.status_code": 200,
            "cart.total": 12.5,
            "cart.express": True,
            "cart.items": ["a", "b"],
        },
    ) as root:
        with tracer.start_as_current_span(
            "db.query",
            kind=SpanKind.CLIENT,
            attributes={"db.system": "postgresql"},
        ) as db:
            db.add_event("retry", attributes={"attempt": 2})
        with tracer.start_as_current_span(
            "payment.charge",
            record_exception=False,
            set_status_on_exception=False,
        ) as payment:
            payment.record_exception(ValueError("card declined"))
            payment.set_status(Status(StatusCode.ERROR, "card declined"))

    root_ctx = root.get_span_context()
    span_ids = [
        format(s.get_span_context().span_id, "016x") for s in (root, db, payment)
    ]

    flushed = provider.force_flush(timeout_millis=(EXPORT_TIMEOUT_SECONDS + 5) * 1000)
    provider.shutdown()

    why = exporter.failure(EXPECTED_SPANS)
    if why is None and not flushed:
        why = "force_flush did not complete"
    if why is not None:
        print(
            f"otel_send: export via {args.protocol} to {args.endpoint} failed: {why}",
            file=sys.stderr,
        )
        return 1

    print(
        json.dumps(
            {
                "trace_id": format(root_ctx.trace_id, "032x"),
                "span_ids": span_ids,
                "spans": EXPECTED_SPANS,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
