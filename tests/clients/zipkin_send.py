#!/usr/bin/env python3
"""Send one known trace to faultline as Zipkin v2 JSON.

Used by faultline's integration tests as a third-party client. The spans are
made with the OpenTelemetry Python SDK and posted by its Zipkin exporter
(opentelemetry-exporter-zipkin-json, protocol v2), which POSTs a JSON array
of Zipkin v2 spans with Content-Type application/json:

    zipkin_send.py --endpoint http://127.0.0.1:9411/api/v2/spans \
        --service zipkin-svc --marker m-123 [--bearer TOKEN]

The trace has two spans: root "zipkin-root {marker}" (SERVER) with tag
marker=MARKER, and child "zipkin-child" of kind CLIENT. localEndpoint.serviceName is
--service.

On success it prints one JSON line to stdout:
    {"trace_id": "<32 hex>", "span_ids": ["<root 16 hex>", "<child>"], "spans": 2}
and exits 0.

The SDK only logs export failures, and the exporter itself accepts only 200
and 202, so this script watches the HTTP exchange itself: a response hook on
the exporter's requests session records every status code. It exits 1, with
a message on stderr, if no POST was answered, any answer was not 2xx, or the
exporter raised (connection refused, timeout, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Sequence

import requests
from opentelemetry.exporter.zipkin.json import Protocol, ZipkinExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind

EXPORT_TIMEOUT_SECONDS = 5
EXPECTED_SPANS = 2


class RecordingExporter(SpanExporter):
    """Holds spans until flush(), then posts them all in one request."""

    def __init__(self, inner: ZipkinExporter) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._pending: list[ReadableSpan] = []
        self.errors: list[str] = []
        self.statuses: list[int] = []
        self.spans_posted = 0
        inner.session.hooks["response"].append(self._on_response)

    def _on_response(self, response: requests.Response, *args, **kwargs) -> None:
        with self._lock:
            self.statuses.append(response.status_code)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self._pending.extend(spans)
        return SpanExportResult.SUCCESS

    def flush(self) -> None:
        with self._lock:
            spans, self._pending = self._pending, []
        if not spans:
            return
        try:
            # The exporter's own verdict is ignored: it treats only 200/202 as
            # success, while any 2xx counts here (see _on_response).
            self._inner.export(spans)
        except Exception as exc:  # the SDK would only log this
            with self._lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            self.spans_posted += len(spans)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def failure(self, expected_spans: int) -> str | None:
        """Why the post failed, or None if every span got a 2xx answer."""
        with self._lock:
            if self.errors:
                return "; ".join(self.errors)
            if not self.statuses:
                return "no POST was answered"
            bad = [s for s in self.statuses if not 200 <= s < 300]
            if bad:
                return f"server answered HTTP {bad[0]}"
            if self.spans_posted < expected_spans:
                return f"only {self.spans_posted} of {expected_spans} spans were posted"
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--endpoint",
        required=True,
        help="full URL, e.g. http://127.0.0.1:9411/api/v2/spans",
    )
    parser.add_argument("--service", required=True, help="localEndpoint.serviceName")
    parser.add_argument("--marker", required=True, help="string to find the trace by")
    parser.add_argument(
        "--bearer", help="token sent as Authorization: Bearer TOKEN (faultline with tokens on)"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    exporter = RecordingExporter(
        ZipkinExporter(
            version=Protocol.V2,
            endpoint=args.endpoint,
            timeout=EXPORT_TIMEOUT_SECONDS,
        )
    )
    if args.bearer:
        exporter._inner.session.headers["Authorization"] = f"Bearer {args.bearer}"
    provider = TracerProvider(resource=Resource.create({"service.name": args.service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("faultline.tests.zipkin_send")

    # The root is a SERVER span: for an INTERNAL span this exporter sends
    # "kind": null.
    with tracer.start_as_current_span(
        f"zipkin-root {args.marker}",
        kind=SpanKind.SERVER,
        attributes={"marker": args.marker},
    ) as root:
        with tracer.start_as_current_span("zipkin-child", kind=SpanKind.CLIENT) as child:
            pass

    exporter.flush()
    provider.shutdown()

    why = exporter.failure(EXPECTED_SPANS)
    if why is not None:
        print(f"zipkin_send: post to {args.endpoint} failed: {why}", file=sys.stderr)
        return 1

    print(
        json.dumps(
            {
                "trace_id": format(root.get_span_context().trace_id, "032x"),
                "span_ids": [
                    format(s.get_span_context().span_id, "016x") for s in (root, child)
                ],
                "spans": EXPECTED_SPANS,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
