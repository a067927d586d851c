"""Prometheus series of the serving process (`GET /metrics`), in a registry of their own so
that several apps (tests, benches) can live in one process.

    chunkrec_serving_requests_total{path, code}          requests answered
    chunkrec_serving_request_seconds{path}               latency histogram
    chunkrec_serving_items_total{model}                  items scored
    chunkrec_serving_unseen_ids_total{model}             (field, ID) pairs read as zeros
    chunkrec_serving_corrupt_records_total{model}        embedding records fetched that did
                                                         not decode (read as missing)
    chunkrec_serving_redis_errors_total{kind}            requests answered 503 for Redis
                                                         ("timeout", "unreachable", "error")
    chunkrec_serving_cache_hits_total{model}             embedding records from the cache
    chunkrec_serving_cache_misses_total{model}           ... fetched from Redis
    chunkrec_serving_cache_entries{model}                records cached for the served version
    chunkrec_model_version{model}                        version served
    chunkrec_model_embedding_bytes{model, where}         where="trainer": the policy's measured
                                                         bytes (values, optimizer, index);
                                                         "redis": sum of the record sizes
    chunkrec_model_events_applied{model}                 events the served version learned from
    chunkrec_model_swaps_total{model}                    versions swapped in
    chunkrec_model_load_seconds                          fetch + build time of a new version
    chunkrec_model_load_failures_total{model}
    chunkrec_model_refresh_failures_total{model}         version checks of the model that
                                                         failed (record unreadable, Redis
                                                         down, version not loadable)
    chunkrec_model_refresh_age_seconds{model}            since the model's last good check
    chunkrec_serving_redis_up                            1 when the last version check worked
    chunkrec_model_stale{model}                          1 when Redis holds a newer version,
                                                         cannot be reached, or the model's
                                                         last version check failed
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from services import wire

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
PATHS = frozenset({"/v1/score", "/healthz", "/readyz", "/metrics"})


class ServingMetrics:
    """See module docstring."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._score_series: dict[str, tuple] = {}  # model -> its labelled score series
        r = self.registry
        self.requests = Counter("chunkrec_serving_requests", "Requests answered",
                                ["path", "code"], registry=r)
        self.latency = Histogram("chunkrec_serving_request_seconds", "Request latency",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.items = Counter("chunkrec_serving_items", "Items scored", ["model"], registry=r)
        self.unseen = Counter("chunkrec_serving_unseen_ids",
                              "Distinct (field, ID) pairs with no embedding (read as zeros)",
                              ["model"], registry=r)
        self.corrupt_records = Counter("chunkrec_serving_corrupt_records",
                                       "Embedding records fetched that did not decode (read "
                                       "as missing)", ["model"], registry=r)
        self.shed = Counter("chunkrec_serving_shed",
                            "Score requests answered 503 because every slot stayed busy "
                            "(serving_max_inflight, serving_queue_wait_s)", registry=r)
        self.redis_errors = Counter("chunkrec_serving_redis_errors",
                                    "Requests answered 503 because Redis failed", ["kind"],
                                    registry=r)
        self.cache_hits = Counter("chunkrec_serving_cache_hits",
                                  "Embedding records served from the in-process cache",
                                  ["model"], registry=r)
        self.cache_misses = Counter("chunkrec_serving_cache_misses",
                                    "Embedding records fetched from Redis", ["model"],
                                    registry=r)
        self.cache_carried = Counter("chunkrec_serving_cache_carried",
                                     "Cache entries kept across version swaps (their buckets "
                                     "unchanged)", ["model"], registry=r)
        self.cache_dropped = Counter("chunkrec_serving_cache_dropped",
                                     "Cache entries dropped at version swaps (their buckets "
                                     "changed)", ["model"], registry=r)
        self.cache_entries = Gauge("chunkrec_serving_cache_entries",
                                   "Records cached for the served version", ["model"],
                                   registry=r)
        self.version = Gauge("chunkrec_model_version", "Model version served", ["model"],
                             registry=r)
        self.embedding_bytes = Gauge("chunkrec_model_embedding_bytes",
                                     "Embedding bytes of the served version", ["model", "where"],
                                     registry=r)
        self.events_applied = Gauge("chunkrec_model_events_applied",
                                    "Events the served version learned from", ["model"],
                                    registry=r)
        self.swaps = Counter("chunkrec_model_swaps", "Versions swapped in", ["model"],
                             registry=r)
        self.load_seconds = Histogram("chunkrec_model_load_seconds",
                                      "Fetch and build time of a new version", registry=r)
        self.load_failures = Counter("chunkrec_model_load_failures",
                                     "Versions that could not be loaded", ["model"], registry=r)
        self.refresh_failures = Counter("chunkrec_model_refresh_failures",
                                        "Version checks of the model that failed", ["model"],
                                        registry=r)
        self.refresh_age = Gauge("chunkrec_model_refresh_age_seconds",
                                 "Seconds since the model's last successful version check",
                                 ["model"], registry=r)
        self.redis_up = Gauge("chunkrec_serving_redis_up",
                              "1 when the last version check reached Redis", registry=r)
        self.stale = Gauge("chunkrec_model_stale", "1 when the served version may be behind "
                           "(a newer one in Redis, Redis unreachable, or the model's version "
                           "check failing)", ["model"], registry=r)

    def observe_request(self, path: str, code: int, seconds: float) -> None:
        path = path if path in PATHS else "other"
        self.requests.labels(path, str(code)).inc()
        self.latency.labels(path).observe(seconds)

    def observe_score(self, model: str, items: int, unseen: int, hits: int,
                      misses: int, cache_entries: int) -> None:
        series = self._score_series.get(model)
        if series is None:  # labels() takes a lock and builds a key: once per model
            series = self._score_series[model] = (
                self.items.labels(model), self.unseen.labels(model),
                self.cache_hits.labels(model), self.cache_misses.labels(model),
                self.cache_entries.labels(model))
        series[0].inc(items)
        series[1].inc(unseen)
        series[2].inc(hits)
        series[3].inc(misses)
        series[4].set(cache_entries)

    def observe_version(self, rec: wire.ModelVersion, load_seconds: float) -> None:
        self.version.labels(rec.model).set(rec.version)
        self.embedding_bytes.labels(rec.model, "trainer").set(rec.embedding_bytes)
        self.embedding_bytes.labels(rec.model, "redis").set(rec.redis_embedding_bytes)
        self.events_applied.labels(rec.model).set(rec.events_applied)
        self.cache_entries.labels(rec.model).set(0)
        self.swaps.labels(rec.model).inc()
        self.load_seconds.observe(load_seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
