"""Prometheus metrics of a trainer (`chunkrec train` with CHUNKREC_TRAINER_METRICS_PORT, or
`--metrics-port`): prometheus_client's own HTTP server on its own thread serves /metrics.

    server = serve_metrics(trainer, port=9101, host="127.0.0.1")   # before trainer.run()
    ...
    server.shutdown()

Every series carries `model`. Counts and lag are read at scrape time; what needs the store's
arrays (bytes by kind, live chunks per position, prune time) is read on the trainer's own
thread after each publish and checkpoint (so a scrape never walks arrays that the training
step is resizing), i.e. it is at most CHUNKREC_PUBLISH_INTERVAL_S old:

    chunkrec_trainer_events_applied_total        events trained on (across restarts)
    chunkrec_trainer_events_dead_lettered_total  invalid events sent to events.dlq
    chunkrec_trainer_dead_letters_lost_total     dead letters the producer refused
    chunkrec_trainer_messages_total              Kafka messages polled
    chunkrec_trainer_lag_messages                behind the broker's high-water marks
    chunkrec_trainer_events_per_second           applied events / s since the first event
    chunkrec_trainer_version                     newest published version
    chunkrec_trainer_embedding_bytes{kind}       value, optimizer, metadata, index, total
    chunkrec_trainer_live_ids                    IDs held by the store
    chunkrec_trainer_live_chunks{position}       live chunks at chunk position j
    chunkrec_trainer_prune_seconds{_count,_sum}  FIITED prune/regrow steps and their time
    chunkrec_trainer_publish_seconds{_count,_sum}, chunkrec_trainer_checkpoint_seconds{...}
    chunkrec_trainer_checkpoint_age_seconds      since the newest checkpoint (restored or written)
    chunkrec_trainer_phase_seconds_total{phase}  the loop's time by phase (config.PHASES but
                                                 "other"): poll, decode, steps, publish_*, ...;
                                                 publish_background: the publishing thread's
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from services.trainer.config import PHASES

if TYPE_CHECKING:
    from services.trainer.loop import StreamTrainer


class TrainerMetrics(Collector):
    """The collector of one trainer. Wraps the trainer's `publish` and `checkpoint` to time
    them and to take the store's readings on the trainer's thread."""

    def __init__(self, trainer: StreamTrainer) -> None:
        self.t = trainer
        self.timings: dict[str, list[float]] = {"publish": [0, 0.0], "checkpoint": [0, 0.0]}
        self.store_readings: dict[str, Any] = {}
        self.last_checkpoint_wall = _newest_checkpoint_time(trainer.ckpt_root)
        trainer.publish = self._timed("publish", trainer.publish)  # type: ignore[method-assign]
        trainer.publish_in_background = self._timed(  # type: ignore[method-assign]
            "publish", trainer.publish_in_background)  # the training thread's part
        trainer.checkpoint = self._timed(  # type: ignore[method-assign]
            "checkpoint", trainer.checkpoint)
        self.read_store()

    def _timed(self, name: str, step: Callable[[], Any]) -> Callable[[], Any]:
        def timed() -> Any:
            t0 = time.perf_counter()
            result = step()
            if result is not False:  # publish says False when it did nothing
                self.timings[name][0] += 1
                self.timings[name][1] += time.perf_counter() - t0
                if name == "checkpoint":
                    self.last_checkpoint_wall = time.time()
            self.read_store()
            return result
        return timed

    def read_store(self) -> None:
        """Bytes by kind, live IDs, live chunks per position, prune steps and time (the
        trainer's thread)."""
        policy = self.t.policy
        mem = policy.memory()
        readings: dict[str, Any] = {"bytes": {
            "value": mem.value_bytes, "optimizer": mem.optimizer_bytes,
            "metadata": mem.metadata_bytes, "index": mem.index_bytes, "total": mem.total_bytes},
            "live_ids": mem.live_ids}
        store = getattr(policy, "store", None)  # chunk-store policies; torch:d has none
        if store is not None:
            readings["positions"] = [int(p.num_live) for p in store.pools]
            readings["prunes"] = int(store.prunes)
            readings["prune_seconds"] = float(getattr(store, "prune_seconds", 0.0))
        self.store_readings = readings

    def collect(self) -> Iterator[Metric]:
        model = self.t.c.model
        st = self.t.stats

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            m = CounterMetricFamily(f"chunkrec_trainer_{name}", doc, labels=["model"])
            m.add_metric([model], value)
            return m

        def gauge(name: str, doc: str, value: float | None,
                  labels: tuple[str, ...] = (), values: tuple[str, ...] = ()) -> GaugeMetricFamily:
            m = GaugeMetricFamily(f"chunkrec_trainer_{name}", doc, labels=["model", *labels])
            m.add_metric([model, *values], math.nan if value is None else value)
            return m

        yield counter("events_applied", "events trained on", st.events_applied)
        yield counter("events_dead_lettered", "invalid events sent to the dead-letter topic",
                      st.events_invalid)
        yield counter("dead_letters_lost", "dead letters the producer refused",
                      st.dead_letters_lost)
        yield counter("messages", "Kafka messages polled", st.messages)
        yield gauge("lag_messages", "messages behind the broker's high-water marks",
                    self.t.lag())
        yield gauge("events_per_second", "applied events per second since the first event",
                    st.stream_events_per_s)
        yield gauge("version", "newest published version", self.t.version)
        r = self.store_readings
        kinds = GaugeMetricFamily("chunkrec_trainer_embedding_bytes",
                                  "embedding memory by kind, measured from the arrays",
                                  labels=["model", "kind"])
        for kind, value in r.get("bytes", {}).items():
            kinds.add_metric([model, kind], value)
        yield kinds
        yield gauge("live_ids", "IDs held by the store", r.get("live_ids"))
        live = GaugeMetricFamily("chunkrec_trainer_live_chunks", "live chunks per position",
                                 labels=["model", "position"])
        for j, n in enumerate(r.get("positions", [])):
            live.add_metric([model, str(j)], n)
        yield live
        for name, (count, total) in (("prune", (r.get("prunes", 0), r.get("prune_seconds", 0.0))),
                                     *self.timings.items()):
            s = SummaryMetricFamily(f"chunkrec_trainer_{name}_seconds", f"{name} steps",
                                    labels=["model"])
            s.add_metric([model], count_value=count, sum_value=total)
            yield s
        age = None if self.last_checkpoint_wall is None else time.time() - \
            self.last_checkpoint_wall
        yield gauge("checkpoint_age_seconds", "seconds since the newest checkpoint", age)
        phases = CounterMetricFamily("chunkrec_trainer_phase_seconds",
                                     "seconds of the trainer loop by phase",
                                     labels=["model", "phase"])
        # "other" is the wall's rest (the scraper has the clock); publish_background is the
        # publishing thread's Redis time, beside the loop's
        for phase in (*PHASES[:-1], "publish_background"):
            phases.add_metric([model, phase], st.phases.get(phase, 0.0))
        yield phases


def _newest_checkpoint_time(root: Path) -> float | None:
    times = [p.stat().st_mtime for p in Path(root).glob("ckpt-*") if p.is_dir()]
    return max(times) if times else None


def serve_metrics(trainer: StreamTrainer, port: int, host: str = "127.0.0.1") -> Any:
    """Start /metrics for `trainer` on host:port (port 0: a free one); returns the server
    (`server.server_port`, `server.shutdown()`)."""
    registry = CollectorRegistry()
    registry.register(TrainerMetrics(trainer))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
