"""Ingestion vs training: how fast the trainer pulls events from the broker (consume +
validate + decode) against how fast it trains on them (the full loop: the same plus training
steps, publishing to Redis and checkpoints), on the same stream. Goal: ingestion >= 2x
training, so the broker side is never what holds a trainer back. Prints a table.

    python bench/ingestion.py [--data movielens-100k] [--policy fiited:budget=0.25] \\
        [--arch dlrm] [--events 100000] [--threads 1]

Starts its own tansu broker and redis-server (services/stack/infra.py) unless --bootstrap and
--redis are given, replays the data set into a fresh topic once, then reads it with fresh
consumer groups: "poll only" (a bare KafkaConsumer with the trainer's settings), "ingest"
(StreamTrainer with decode_only: poll, validate, decode, dead-letter, no training) and
"train" (StreamTrainer as `chunkrec train` runs it). Rates are events per second of wall time
from the first event to the last, so the consumer-group join is not counted.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import typer
from kafka import KafkaConsumer
from rich.console import Console
from rich.table import Table

from services.stack.infra import create_topics, start_redis, start_tansu
from services.stack.replay import replay_dataset
from services.trainer.loop import StreamTrainer, TrainerConfig
from storage.datasets import open_dataset
from storage.settings import Settings

app = typer.Typer(add_completion=False)


def _poll_only(settings: Settings, topic: str, events: int, messages: int) -> tuple[float, int]:
    """Events/s of a bare consumer (no validation) reading `messages` messages."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=settings.kafka.bootstrap,
        group_id=f"bench-poll-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=settings.kafka.session_timeout_ms,
        heartbeat_interval_ms=settings.kafka.heartbeat_interval_ms,
        max_poll_interval_ms=settings.kafka.max_poll_interval_ms,
        max_poll_records=settings.trainer.max_poll_records)
    seen = 0
    first: float | None = None
    nbytes = 0
    deadline = time.monotonic() + 300
    try:
        while seen < messages and time.monotonic() < deadline:
            for msgs in consumer.poll(timeout_ms=200).values():
                first = first or time.perf_counter()
                seen += len(msgs)
                nbytes += sum(len(m.value) for m in msgs)
        last = time.perf_counter()
    finally:
        consumer.close(autocommit=False)
    if seen < messages or first is None:
        raise RuntimeError(f"poll only: read {seen} of {messages} messages")
    return events / (last - first), nbytes


@app.command()
def main(
    data: str = typer.Option("movielens-100k", help="data-set spec to replay"),
    policy: str = typer.Option("fiited:budget=0.25", help="policy of the trained model"),
    arch: str = typer.Option("dlrm", help="network: dlrm or mlp"),
    events: int = typer.Option(100_000, min=1000, help="events to replay (at most)"),
    batch_events: int = typer.Option(200, help="events per Kafka message"),
    threads: int = typer.Option(1, help="torch threads of the trainer"),
    bootstrap: str | None = typer.Option(None, help="use this broker instead of starting one"),
    redis_url: str | None = typer.Option(None, "--redis", help="use this Redis"),
) -> None:
    console = Console()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chunkrec-ingest-")))
        if bootstrap is None:
            bootstrap = stack.enter_context(start_tansu(log_dir=tmp / "logs")).address
        if redis_url is None:
            redis_url = stack.enter_context(start_redis(log_dir=tmp / "logs")).url
        settings = Settings(kafka_bootstrap=bootstrap, redis_url=redis_url,
                            checkpoint_dir=tmp / "checkpoints", trainer_threads=threads,
                            kafka_max_poll_interval_ms=3000)
        topic = f"bench-events-{uuid.uuid4().hex[:6]}"
        create_topics(bootstrap, {topic: 2, "events.dlq": 1})
        sent = replay_dataset(settings, data, topic=topic, batch_events=batch_events,
                              limit=events)
        console.print(f"replayed {sent.events:,} events of {data} in {sent.messages:,} "
                      f"messages ({sent.events_per_s:,.0f} events/s)")
        schema = open_dataset(data, settings.data_dir).schema

        poll_rate, nbytes = _poll_only(settings, topic, sent.events, sent.messages)
        rows: list[tuple[str, float, str]] = [
            ("poll only (bare consumer)", poll_rate,
             f"{nbytes / sent.events:,.0f} B/event on the wire")]
        results = {}
        for mode in ("ingest", "train"):
            config = TrainerConfig(model=f"bench-{mode}-{uuid.uuid4().hex[:6]}", policy=policy,
                                   schema=schema, arch=arch, topic=topic,
                                   max_events=sent.events, decode_only=mode == "ingest")
            trainer = StreamTrainer(settings, config)
            stats = trainer.run()
            if stats.events_applied != sent.events:
                raise RuntimeError(f"{mode}: applied {stats.events_applied} of {sent.events}")
            results[mode] = stats
            if mode == "ingest":
                note = (f"decode {sent.events / stats.decode_seconds:,.0f} events/s of "
                        "decode time")
            else:
                note = (f"learner {trainer.learner.samples_per_s:,.0f} samples/s of step "
                        f"time; {stats.versions_published} versions, {stats.checkpoints} "
                        "checkpoints")
            what = "consume + validate + decode" if mode == "ingest" else "full trainer loop"
            rows.append((f"{mode} ({what})", stats.stream_events_per_s, note))

    ratio = results["ingest"].stream_events_per_s / results["train"].stream_events_per_s
    table = Table(title=f"ingestion vs training: {data}, {policy}, {arch}, "
                        f"{sent.events:,} events, {threads} torch thread(s)")
    table.add_column("reader")
    table.add_column("events/s", justify="right")
    table.add_column("notes")
    for name, rate, note in rows:
        table.add_row(name, f"{rate:,.0f}", note)
    table.add_row("[bold]ingest / train[/bold]", f"[bold]{ratio:.2f}x[/bold]",
                  "goal >= 2x" + (" (met)" if ratio >= 2 else " (NOT met)"))
    console.print(table)


if __name__ == "__main__":
    app()
