"""The Kafka trainer over 1 process and over N ranks (`chunkrec train --workers N`), on the same
events in one topic: a local tansu broker and redis-server are started, the events replayed
once into a topic of `--partitions` partitions, then each trainer reads them all from the
start (its own model name) to `max_events`. Prints one table.

    python bench/sharded_trainer.py [--data synthetic:...] [--policy fiited:budget=0.25]
                                    [--workers 2] [--partitions 2] [--threads 1]

Per row: stream events/s (events applied / seconds from the first event queued to the last
applied, over all ranks: group join and process start-up not counted), its ratio to the one
process, the wall seconds of the whole run (start-up included), versions and checkpoints, and
the final version record's online metrics (progressive validation over every row the job
trained on: AUC, log loss, rows; the sharded job's merge every rank's), so the sharded job's
online quality compares with the one process's on the same stream and seed. The two see the
events in other micro-batches (each rank polls its own partitions), so they are two draws of
the training noise, not the same trajectory.
Every rank and the one process get `--threads` torch threads. On a shared machine only ratios
within one run mean anything.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import redis
import typer
from rich.console import Console
from rich.table import Table

from services import wire
from services.stack.infra import create_topics, start_redis, start_tansu
from services.stack.replay import replay_dataset
from services.trainer.config import TrainerConfig
from services.trainer.loop import StreamTrainer
from services.trainer.sharded_run import run_sharded
from storage.datasets.spec import open_dataset
from storage.settings import Settings

app = typer.Typer(add_completion=False)


@app.command()
def main(
    data: str = "synthetic:events=40000,fields=8,vocab=20000,seed=0",
    policy: str = "fiited:budget=0.25",
    workers: int = 2,
    partitions: int = 2,
    threads: int = 1,
) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-sharded-trainer-"))
    broker, rds = start_tansu(log_dir=work), start_redis(log_dir=work)
    try:
        topic = f"events-{uuid.uuid4().hex[:6]}"
        create_topics(broker.address, {topic: partitions, "events.dlq": 1})
        settings = Settings(kafka_bootstrap=broker.address, redis_url=rds.url,
                            checkpoint_dir=work / "ckpt", trainer_threads=threads,
                            checkpoint_interval_s=60.0, checkpoint_every_events=0,
                            kafka_max_poll_interval_ms=3000)
        sent = replay_dataset(settings, data, topic=topic, batch_events=200)
        schema = open_dataset(data).schema

        def config(model: str) -> TrainerConfig:
            return TrainerConfig(model=model, policy=policy, schema=schema, topic=topic,
                                 max_events=sent.events)

        client = redis.Redis.from_url(settings.redis.url, **settings.redis.client_kwargs)

        def online(model: str) -> dict:
            return wire.ModelVersion.from_json(client.get(wire.version_key(model))).metrics

        rows = []
        t0 = time.perf_counter()
        stats = StreamTrainer(settings, config("one")).run()
        rows.append(("1 process", stats.events_applied, stats.stream_events_per_s,
                     time.perf_counter() - t0, stats.versions_published, stats.checkpoints,
                     online("one")))
        t0 = time.perf_counter()
        ranks = run_sharded(settings, config("sharded"), workers, timeout_s=3600)
        wall = time.perf_counter() - t0
        applied = sum(r["events_applied"] for r in ranks)
        firsts = [r["first_event_at"] for r in ranks if r["first_event_at"] is not None]
        lasts = [r["last_applied_at"] for r in ranks if r["last_applied_at"] is not None]
        span = max(lasts) - min(firsts)  # perf_counter is CLOCK_MONOTONIC: one clock per host
        rows.append((f"{workers} ranks", applied, applied / span, wall,
                     ranks[0]["versions_published"], ranks[0]["checkpoints"], online("sharded")))
        client.close()
    finally:
        broker.stop()
        rds.stop()
    table = Table(title=f"Kafka trainer, {policy}, {sent.events:,} events in {partitions} "
                        f"partitions, {threads} torch thread(s) per process or rank")
    for col in ("run", "events applied", "stream events/s", "vs 1 process", "wall s",
                "versions", "checkpoints", "online AUC", "log loss", "rows"):
        table.add_column(col, justify="right")
    base = rows[0][2]
    for name, n, eps, wall, versions, ckpts, m in rows:
        table.add_row(name, f"{n:,}", f"{eps:,.0f}", f"{eps / base:.2f}x", f"{wall:.1f}",
                      str(versions), str(ckpts), f"{m['auc']:.4f}", f"{m['logloss']:.4f}",
                      f"{int(m['rows']):,}")
    Console(width=200).print(table)


if __name__ == "__main__":
    app()
