"""Prometheus series of the router (`GET /metrics`), in a registry of its own per app (tests
make many apps in one process):

    chunkrec_router_requests_total{route, method, code}   requests answered, by route template
    chunkrec_router_request_seconds{route}                latency histogram
    chunkrec_router_ready{check}                          1 when the last /readyz found the
                                                          database, serving or Kafka ready

    app.add_middleware(RequestMetrics, metrics=metrics)   # counts every request
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("chunkrec_router_requests", "Requests answered",
                                ["route", "method", "code"], registry=r)
        self.latency = Histogram("chunkrec_router_request_seconds", "Request latency",
                                 ["route"], buckets=BUCKETS, registry=r)
        self.ready = Gauge("chunkrec_router_ready", "1 when the last /readyz check passed",
                           ["check"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """Pure ASGI middleware: one count and one latency per HTTP request, labelled by the
    matched route's template (`/v1/experiments/{experiment_id}`), never the raw path, so
    clients cannot grow the series without bound."""

    def __init__(self, app: Any, metrics: RouterMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        code = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                code[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope.get("method", ""), str(code[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
