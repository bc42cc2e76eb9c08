#!/usr/bin/env python3
"""The example system of faultline's chaos experiments: three small HTTP services
instrumented with the OpenTelemetry Python SDK, exporting to faultline over OTLP/HTTP.

    services.py frontend  --port P --inventory URL --pricing URL [--no-breaker]
    services.py inventory --port P
    services.py pricing   --port P

`frontend` answers GET /product by calling `inventory` (required: a 500 ms timeout, two
retries) and `pricing` (optional: a 500 ms timeout, no retry, a circuit breaker, and a
list price as the fallback when it fails). The breaker opens after 3 consecutive
failures and stays open 30 s, answering from the fallback at once; then one call is let
through to try again. `--no-breaker` removes it (the bug the experiments find). In the
experiments both backends are reached through `faultline proxy`.

Every request is a SERVER span (`GET /product`, `GET /stock`, `GET /price`) and every
outgoing call a CLIENT span with a W3C `traceparent`, so a frontend request and its
backend calls are one trace. Set OTEL_EXPORTER_OTLP_ENDPOINT (default
http://127.0.0.1:4318); spans are exported every 200 ms.
"""

import argparse
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

TIMEOUT_S = 0.5
BREAKER_FAILURES = 3
BREAKER_OPEN_S = 30.0
LIST_PRICE = 19.99


def setup_tracing(service):
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
    trace.set_tracer_provider(provider)
    return trace.get_tracer("faultline-example")


class Breaker:
    """Consecutive-failure circuit breaker: open after N failures, for a while."""

    def __init__(self, failures, open_s):
        self.failures, self.open_s = failures, open_s
        self.count, self.opened_at, self.lock = 0, None, threading.Lock()

    def allow(self):
        with self.lock:
            if self.opened_at is None:
                return True
            if time.monotonic() - self.opened_at >= self.open_s:
                self.opened_at = None  # half-open: one call tries again
                self.count = self.failures - 1
                return True
            return False

    def record(self, ok):
        with self.lock:
            if ok:
                self.count = 0
            else:
                self.count += 1
                if self.count >= self.failures:
                    self.opened_at = time.monotonic()


def call(tracer, name, url):
    """GET url as a CLIENT span with traceparent; the JSON answer or an exception."""
    with tracer.start_as_current_span(name, kind=SpanKind.CLIENT) as span:
        span.set_attribute("http.request.method", "GET")
        span.set_attribute("url.full", url)
        headers = {}
        propagate.inject(headers)
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S
            ) as r:
                span.set_attribute("http.response.status_code", r.status)
                return json.loads(r.read())
        except Exception as e:  # timeouts, refused connections, resets, bad bodies
            span.record_exception(e)
            span.set_status(Status(StatusCode.ERROR, type(e).__name__))
            raise


def handler(role, tracer, args):
    breaker = None if args.no_breaker else Breaker(BREAKER_FAILURES, BREAKER_OPEN_S)

    def product():
        stock, last = None, None
        for attempt in range(3):  # inventory: two retries
            try:
                stock = call(tracer, "GET /stock", args.inventory + "/stock")
                break
            except Exception as e:
                last = e
        if stock is None:
            raise RuntimeError(f"inventory failed after 3 attempts: {last!r}")
        price, source = LIST_PRICE, "fallback"
        if breaker is None or breaker.allow():
            try:
                price = call(tracer, "GET /price", args.pricing + "/price")["price"]
                source = "pricing"
                if breaker:
                    breaker.record(True)
            except Exception:
                if breaker:
                    breaker.record(False)
        else:
            trace.get_current_span().set_attribute("breaker.open", True)
        trace.get_current_span().set_attribute("price.source", source)
        return {"sku": "A-1", "stock": stock["stock"], "price": price, "priceSource": source}

    routes = {
        "frontend": ("/product", product),
        "inventory": ("/stock", lambda: {"stock": random.randint(1, 50)}),
        "pricing": ("/price", lambda: {"price": round(random.uniform(10, 30), 2)}),
    }
    path, fn = routes[role]

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            ctx = propagate.extract(dict(self.headers))
            with tracer.start_as_current_span(
                f"GET {self.path}", context=ctx, kind=SpanKind.SERVER
            ) as span:
                span.set_attribute("http.request.method", "GET")
                span.set_attribute("http.route", self.path)
                if self.path != path:
                    status, body = 404, {"error": f"no route {self.path}"}
                else:
                    try:
                        time.sleep(random.uniform(0.002, 0.008))
                        status, body = 200, fn()
                    except Exception as e:
                        span.record_exception(e)
                        span.set_status(Status(StatusCode.ERROR, str(e)))
                        status, body = 503, {"error": str(e)}
                span.set_attribute("http.response.status_code", status)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

    return H


def main():
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["frontend", "inventory", "pricing"])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--inventory", default="http://127.0.0.1:8101")
    p.add_argument("--pricing", default="http://127.0.0.1:8102")
    p.add_argument("--no-breaker", action="store_true")
    args = p.parse_args()
    tracer = setup_tracing(args.role)
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), handler(args.role, tracer, args))
    srv.daemon_threads = True
    print(json.dumps({"role": args.role, "port": srv.server_address[1]}), flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
