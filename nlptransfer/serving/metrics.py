"""Prometheus metrics of one server (`/metrics`), in a registry of its own so that apps never share counters.

    nlptransfer_requests_total{route, method, status}      requests answered, by route template and status
    nlptransfer_request_duration_seconds{route}            latency from the first byte in to the last byte out
    nlptransfer_requests_in_flight                         requests being answered now
    nlptransfer_batch_size{model}                          texts per model pass (the micro-batches)
    nlptransfer_batch_duration_seconds{model}              seconds per model pass (with decoding)
    nlptransfer_queue_wait_seconds{model}                  seconds a request waited for its pass

Routes are labelled by their template (`/models/{name}/predict`), never by the raw path, so a client cannot
grow the label set; a path that matches no route is `unmatched`.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "nlptransfer_requests", "Requests answered.", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "nlptransfer_request_duration_seconds",
            "Request latency.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("nlptransfer_requests_in_flight", "Requests being answered.", registry=self.registry)
        self.batch_size = Histogram(
            "nlptransfer_batch_size", "Texts per model pass.", ["model"], buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.batch_seconds = Histogram(
            "nlptransfer_batch_duration_seconds",
            "Seconds per model pass.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "nlptransfer_queue_wait_seconds",
            "Seconds a request waited for its model pass.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def batch_observer(self, model: str):
        """A `MicroBatcher.on_batch` callback that records `model`'s passes."""
        size, seconds, wait = (
            self.batch_size.labels(model),
            self.batch_seconds.labels(model),
            self.queue_wait.labels(model),
        )

        def observe(texts: int, pass_seconds: float, waits: list[float]) -> None:
            size.observe(texts)
            seconds.observe(pass_seconds)
            for value in waits:
                wait.observe(value)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware that counts and times every HTTP request (a plain ASGI class: no per-request task)."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
