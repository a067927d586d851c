"""Ingestion vs training, JSON vs Arrow messages: how fast the trainer pulls events from the
broker (consume + validate + decode) against how fast it trains on them (the full loop: the
same plus training steps, publishing to Redis and checkpoints), on the same stream sent both
ways. Goals: Arrow ingestion >= 1M events/s in one process, and ingestion >= 2x training, so
the broker side is never what holds a trainer back. Prints a table.

    python bench/ingestion.py [--data movielens-100k] [--policy fiited:budget=0.25] \\
        [--arch dlrm] [--events 100000] [--threads 1] [--device cpu|cuda]

Starts its own tansu broker and redis-server (services/stack/infra.py) unless --bootstrap and
--redis are given, replays the data set into a fresh topic once, then reads it with fresh
consumer groups: "poll only" (a bare KafkaConsumer with the trainer's settings), "ingest"
(StreamTrainer with decode_only: poll, validate, decode, dead-letter, no training) and
"train" (StreamTrainer as `chunkrec train` runs it). Rates are events per second of wall time
from the first event to the last, so the consumer-group join is not counted. "decode only"
runs wire.dead_letters over the same message values in memory (no broker): the format's own
cost.
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

from services import wire
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
    json_batch: int = typer.Option(200, help="events per JSON message"),
    arrow_batch: int = typer.Option(4096, help="events per Arrow message"),
    threads: int = typer.Option(1, help="torch threads of the trainer"),
    bootstrap: str | None = typer.Option(None, help="use this broker instead of starting one"),
    redis_url: str | None = typer.Option(None, "--redis", help="use this Redis"),
    device: str = typer.Option("cpu", help="where the trainer's store and network live: "
                                           "cpu or cuda"),
) -> None:
    console = Console()
    rows: list[tuple[str, str, float, str]] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chunkrec-ingest-")))
        if bootstrap is None:
            bootstrap = stack.enter_context(start_tansu(log_dir=tmp / "logs")).address
        if redis_url is None:
            redis_url = stack.enter_context(start_redis(log_dir=tmp / "logs")).url
        settings = Settings(kafka_bootstrap=bootstrap, redis_url=redis_url,
                            checkpoint_dir=tmp / "checkpoints", trainer_threads=threads,
                            trainer_device=device,
                            kafka_max_poll_interval_ms=3000)
        schema = open_dataset(data, settings.data_dir).schema
        ingest: dict[str, float] = {}
        train_rate = 0.0
        for fmt, per_msg in (("json", json_batch), ("arrow", arrow_batch)):
            topic = f"bench-events-{fmt}-{uuid.uuid4().hex[:6]}"
            create_topics(bootstrap, {topic: 2, "events.dlq": 1})
            sent = replay_dataset(settings, data, topic=topic, batch_events=per_msg,
                                  limit=events, fmt=fmt)  # type: ignore[arg-type]
            console.print(f"{fmt}: replayed {sent.events:,} events of {data} in "
                          f"{sent.messages:,} messages ({sent.events_per_s:,.0f} events/s)")
            values = _values(settings, topic, sent.messages)
            t0 = time.perf_counter()
            decoded = sum(len(wire.dead_letters(v, schema, topic, 0, 0)[0]) for v in values)
            decode_rate = decoded / (time.perf_counter() - t0)
            nbytes = sum(map(len, values))
            rows.append((fmt, "decode only (wire.dead_letters, in memory)", decode_rate,
                         f"{nbytes / sent.events:,.0f} B/event, {per_msg} events/message"))
            poll_rate, _ = _poll_only(settings, topic, sent.events, sent.messages)
            rows.append((fmt, "poll only (bare consumer)", poll_rate, ""))
            modes = ("ingest", "train") if fmt == "arrow" else ("ingest",)
            for mode in modes:
                config = TrainerConfig(model=f"bench-{mode}-{uuid.uuid4().hex[:6]}",
                                       policy=policy, schema=schema, arch=arch, topic=topic,
                                       max_events=sent.events, decode_only=mode == "ingest")
                trainer = StreamTrainer(settings, config)
                stats = trainer.run()
                if stats.events_applied != sent.events:
                    raise RuntimeError(f"{mode}: applied {stats.events_applied} of "
                                       f"{sent.events}")
                if mode == "ingest":
                    ingest[fmt] = stats.stream_events_per_s
                    note = (f"decode {sent.events / stats.decode_seconds:,.0f} events/s of "
                            "decode time")
                else:
                    train_rate = stats.stream_events_per_s
                    wall = time.perf_counter() - (stats.first_event_at or 0.0)
                    split = ", ".join(f"{k} {v:.1f}" for k, v in
                                      stats.phase_split(wall).items() if v >= 0.05)
                    note = (f"learner {trainer.learner.samples_per_s:,.0f} samples/s of "
                            f"step time; {stats.versions_published} versions, "
                            f"{stats.checkpoints} checkpoints; seconds by phase of "
                            f"{wall:.1f} s: {split} (bench/trainer_loop.py)")
                what = ("consume + validate + decode" if mode == "ingest"
                        else "full trainer loop")
                rows.append((fmt, f"{mode} ({what})", stats.stream_events_per_s, note))

    table = Table(title=f"ingestion vs training: {data}, {policy}, {arch}, "
                        f"{events:,} events at most, {threads} torch thread(s), {device}")
    for col in ("format", "reader"):
        table.add_column(col)
    table.add_column("events/s", justify="right")
    table.add_column("notes")
    for fmt, name, rate, note in rows:
        table.add_row(fmt, name, f"{rate:,.0f}", note)
    goal = ingest["arrow"] >= 1e6
    table.add_row("[bold]arrow / json[/bold]", "ingest", f"[bold]"
                  f"{ingest['arrow'] / ingest['json']:.2f}x[/bold]",
                  "arrow ingest goal >= 1M events/s" + (" (met)" if goal else " (NOT met)"))
    ratio = ingest["arrow"] / train_rate
    table.add_row("[bold]arrow[/bold]", "ingest / train", f"[bold]{ratio:.2f}x[/bold]",
                  "goal >= 2x" + (" (met)" if ratio >= 2 else " (NOT met)"))
    console.print(table)


def _values(settings: Settings, topic: str, messages: int) -> list[bytes]:
    """Every message value of `topic` (`messages` of them), read once."""
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka.bootstrap,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             consumer_timeout_ms=10_000, max_partition_fetch_bytes=8 << 20)
    try:
        out = []
        for m in consumer:
            out.append(m.value)
            if len(out) >= messages:
                break
        return out
    finally:
        consumer.close()


if __name__ == "__main__":
    app()
