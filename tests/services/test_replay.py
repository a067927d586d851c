"""`chunkrec replay` against a real tansu broker, and its token bucket."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, TopicPartition
from typer.testing import CliRunner

from services import wire
from services.cli import app
from services.stack.infra import ManagedProcess
from services.stack.replay import TokenBucket, parse_rate
from storage.datasets.spec import open_dataset

SPEC = "synthetic:events=3000,fields=3,vocab=500,seed=2"


def test_token_bucket_paces_without_spinning() -> None:
    bucket = TokenBucket(rate=2000, burst=200)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(10):
        bucket.take(200)  # 2000 tokens; the first 200 are the initial burst
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert 0.85 <= wall < 1.5
    assert cpu < 0.2  # it sleeps, it does not spin


def test_parse_rate() -> None:
    assert parse_rate("max") is None and parse_rate("250") == 250.0
    with pytest.raises(ValueError):
        parse_rate("-3")


def test_replay_command_streams_events_in_order(broker: ManagedProcess, topic: str) -> None:
    result = CliRunner().invoke(app, [
        "replay", "--data", SPEC, "--topic", topic, "--rate", "20000", "--limit", "1000",
        "--batch-events", "100", "--bootstrap", broker.address, "--quiet",
    ])
    assert result.exit_code == 0, result.output
    assert "sent 1,000 events in 10 messages" in result.output

    consumer = KafkaConsumer(bootstrap_servers=broker.address, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in (0, 1)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    values: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + 30
    while len(values) < 10 and time.monotonic() < deadline:
        for tp, msgs in consumer.poll(timeout_ms=500).items():
            values += [(tp.partition, m.offset, m.value) for m in msgs]
    consumer.close()
    assert len(values) == 10

    schema = open_dataset(SPEC).schema
    ids: list[str] = []
    for partition in (0, 1):
        batches = [wire.dead_letters(v, schema, topic, p, o) for p, o, v in sorted(values)
                   if p == partition]
        assert all(bad == [] for _, bad in batches)
        part_ids = [e for b, _ in batches for e in b.event_ids]
        rows = [int(e.rpartition(":")[2]) for e in part_ids]
        assert rows == sorted(rows)  # each partition holds its events in stream order
        ids += part_ids
    assert sorted(ids, key=lambda e: int(e.rpartition(":")[2])) == [
        f"{SPEC}:{i}" for i in range(1000)]


def test_replay_takes_a_table_spec(broker: ManagedProcess, topic: str, tmp_path) -> None:  # noqa: ANN001
    """Your own CSV into Kafka: every row becomes a valid event of the table's schema."""
    import pandas as pd

    path = tmp_path / "mine.csv"
    pd.DataFrame({"user": [f"u{i % 7}" for i in range(50)], "item": list(range(50)),
                  "price": [i / 10 for i in range(50)], "click": [i % 3 == 0 for i in range(50)],
                  "ts": list(range(1_700_000_050, 1_700_000_000, -1))}).to_csv(path, index=False)
    spec = f"table:{path},label=click,fields=user|item,dense=price,time=ts"
    result = CliRunner().invoke(app, ["replay", "--data", spec, "--topic", topic,
                                      "--bootstrap", broker.address, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "sent 50 events" in result.output
    consumer = KafkaConsumer(bootstrap_servers=broker.address, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in (0, 1)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    values: list[bytes] = []
    deadline = time.monotonic() + 30
    schema = open_dataset(spec).schema
    good = 0
    while good < 50 and time.monotonic() < deadline:
        for tp, msgs in consumer.poll(timeout_ms=500).items():
            for m in msgs:
                batch, bad = wire.dead_letters(m.value, schema, topic, tp.partition, m.offset)
                assert bad == []
                good += len(batch)
                values.append(m.value)
    consumer.close()
    assert good == 50
