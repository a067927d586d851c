"""The trainer process (`chunkrec train`): one model's StreamTrainer, built from its options,
run until SIGTERM / SIGINT, max_events or idle_exit_s; with CHUNKREC_TRAINER_METRICS_PORT,
Prometheus /metrics on that port (services/trainer/metrics.py).

    stats = run_trainer(settings, TrainerOptions(model="fiited", policy="fiited:budget=0.25",
                                                 data="movielens-100k"))

Everything is checked before any connection (settings, the model name, the data set's
schema, the policy spec), then whether the broker and Redis answer, within seconds: a refusal
raises TrainerRefused with one line naming it; LeaseHeld (another trainer owns the model) and
Fenced (another took it over) come from the run. (Redis going away later is survived: the
trainer republishes in full when it is back.)
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services import wire
from services.messaging.reachable import broker_problem, redis_problem
from services.trainer.config import TrainerConfig, TrainerStats
from services.trainer.loop import StreamTrainer
from storage.datasets.spec import DatasetError, open_dataset
from storage.settings import Settings

log = logging.getLogger("chunkrec.trainer")


class TrainerRefused(ValueError):
    """A bad option, data-set spec or policy spec: nothing was started."""


@dataclass
class TrainerOptions:
    model: str
    policy: str
    data: str  # data-set spec whose schema the events follow (not read)
    arch: str = "dlrm"
    topic: str = wire.EVENTS_TOPIC
    seed: int = 0
    max_events: int | None = None
    idle_exit_s: float | None = None
    hot_start: Path | None = None
    device: str | None = None  # cpu or cuda; None: settings.trainer.device
    workers: int = 1  # local ranks of a sharded trainer (services/trainer/sharded.py)
    torchrun: bool = False  # this process is one rank that torchrun started


def _config(settings: Settings, opts: TrainerOptions) -> tuple[Settings, TrainerConfig]:
    arch = opts.arch.strip().lower()
    if opts.device is not None:
        settings = settings.replace(trainer_device=opts.device)
    wire.check_model_name(opts.model)
    schema = open_dataset(opts.data, settings.data_dir).schema
    return settings, TrainerConfig(
        model=opts.model, policy=opts.policy, schema=schema, arch=arch, topic=opts.topic,
        seed=opts.seed, max_events=opts.max_events, idle_exit_s=opts.idle_exit_s,
        hot_start=opts.hot_start)


def build_trainer(settings: Settings, opts: TrainerOptions) -> StreamTrainer:
    """The trainer of `opts` (restored from its newest checkpoint), not connected yet."""
    try:
        return StreamTrainer(*_config(settings, opts))
    except (DatasetError, ValueError) as exc:
        raise TrainerRefused(str(exc)) from exc


def run_sharded_trainer(settings: Settings, opts: TrainerOptions) -> TrainerStats:
    """`opts.workers` local ranks of one model (services/trainer/sharded.py), or with
    `opts.torchrun` this process as one rank of torchrun's; the counters summed over the
    ranks. Ctrl-C / SIGTERM reach every rank (final checkpoint, publish)."""
    from models.policies.registry import parse_policy
    from services.trainer.sharded_run import run_sharded, train_rank

    try:
        settings, config = _config(settings, opts)
        if opts.hot_start is not None:
            raise ValueError("--hot-start with --workers > 1 is not supported yet")
        parse_policy(config.policy, num_fields=config.schema.num_fields)  # a bad spec: now
    except (DatasetError, ValueError) as exc:
        raise TrainerRefused(str(exc)) from exc
    problem = (broker_problem(settings.kafka.bootstrap)
               or redis_problem(settings.redis.url, **settings.redis.client_kwargs))
    if problem is not None:
        raise TrainerRefused(problem)
    if opts.torchrun:  # one rank; it stops on a signal itself
        return _summed([train_rank(settings, config)])
    # the ranks stop on a signal themselves (a terminal's Ctrl-C reaches them all); one sent
    # to this process only is passed on; the launcher waits for their final checkpoint
    def forward(signum: int, _frame: object) -> None:
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)  # type: ignore[arg-type]

    old = [signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)]
    try:
        ranks = run_sharded(settings, config, opts.workers)
    finally:
        for s, h in zip((signal.SIGINT, signal.SIGTERM), old, strict=True):
            signal.signal(s, h)
    return _summed(ranks)


def _was_sharded(settings: Settings, model: str) -> bool:
    """The model's checkpoints are a sharded job's: a single-process trainer would ignore
    them and start over, so one rank of the sharded trainer restores them instead."""
    from services.trainer.sharded import has_global_checkpoint

    try:
        wire.check_model_name(model)
    except ValueError:
        return False  # refused with its reason by build_trainer
    return has_global_checkpoint(Path(settings.trainer.checkpoint_dir) / model)


def _summed(ranks: list[dict[str, Any]]) -> TrainerStats:
    stats = TrainerStats()
    for r in ranks:
        stats.events_applied += r["events_applied"]
        stats.events_checksum = wire.add_checksums(stats.events_checksum, r["events_checksum"])
        stats.events_invalid += r["events_invalid"]
        stats.messages += r["messages"]
        stats.checkpoints = max(stats.checkpoints, r["checkpoints"])
        stats.versions_published = max(stats.versions_published, r["versions_published"])
    stats.extra["ranks"] = ranks
    return stats


def run_trainer(settings: Settings, opts: TrainerOptions) -> TrainerStats:
    """Build the trainer, stop it on SIGTERM / SIGINT (final train, checkpoint, publish), run
    it; returns its counters. With `opts.workers` > 1: run_sharded_trainer."""
    if opts.workers > 1 or opts.torchrun or _was_sharded(settings, opts.model):
        return run_sharded_trainer(settings, opts)  # a sharded model goes on as one (N -> 1)
    trainer = build_trainer(settings, opts)
    # seconds, not kafka-python's ~40 s or the Redis client's retries
    problem = (broker_problem(settings.kafka.bootstrap)
               or redis_problem(settings.redis.url, **settings.redis.client_kwargs))
    if problem is not None:
        raise TrainerRefused(problem)

    def on_signal(_signum: int, _frame: object) -> None:
        trainer.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    if settings.trainer.metrics_port:
        from services.trainer.metrics import serve_metrics

        server = serve_metrics(trainer, settings.trainer.metrics_port,
                               settings.trainer.metrics_host)
        log.info("metrics at http://%s:%d/metrics", settings.trainer.metrics_host,
                 settings.trainer.metrics_port)
    try:
        return trainer.run()
    finally:
        if server is not None:
            server.shutdown()
