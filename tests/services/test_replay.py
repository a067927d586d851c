"""`chunkrec replay` against a real tansu broker, and its token bucket."""

from __future__ import annotations

import time

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from typer.testing import CliRunner

from services import wire
from services.cli import app
from services.stack.infra import ManagedProcess
from services.stack.replay import TokenBucket, parse_rate, unit_head
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


def test_unit_head_keeps_each_units_first_share() -> None:
    units = np.array([7, 7, 3, 7, 3, 9, 7])
    assert unit_head(units, 0.5).tolist() == [True, True, True, False, False, False, False]
    assert unit_head(units, 1.0).all() and not unit_head(units, 0.0).any()


def test_unit_share_replays_each_users_first_half(broker: ManagedProcess, topic: str,
                                                  tmp_path) -> None:  # noqa: ANN001
    """`replay --unit-share 0.5`: each user's earlier half of their events (time order), the
    rest left to the simulated users; build_sessions(unit_share=0.5) takes exactly the rest."""
    import pandas as pd

    from services.stack.simulated_users import build_sessions

    path = tmp_path / "mine.csv"
    frame = pd.DataFrame({"user": [i % 7 for i in range(50)], "item": list(range(50)),
                          "click": [i % 3 == 0 for i in range(50)],
                          "ts": list(range(1_700_000_050, 1_700_000_000, -1))})
    frame.to_csv(path, index=False)
    spec = f"table:{path},label=click,fields=user|item,time=ts,unit=user"
    result = CliRunner().invoke(app, ["replay", "--data", spec, "--topic", topic,
                                      "--bootstrap", broker.address, "--quiet",
                                      "--unit-share", "0.5"])
    assert result.exit_code == 0, result.output
    ordered = frame.sort_values("ts", kind="stable")
    head = unit_head(ordered["user"].to_numpy(), 0.5)
    assert f"sent {int(head.sum())} events" in result.output  # 4 of user 0's 8, 3 of 7 others
    assert int(head.sum()) == 4 + 6 * 3
    consumer = KafkaConsumer(bootstrap_servers=broker.address, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in (0, 1)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    schema = open_dataset(spec).schema
    items = open_dataset(spec).batches(100)
    want_ids = next(iter(items)).ids[head]  # the reader's rows in time order, as hashed
    got: list[np.ndarray] = []
    deadline = time.monotonic() + 30
    while sum(len(g) for g in got) < len(want_ids) and time.monotonic() < deadline:
        for tp, msgs in consumer.poll(timeout_ms=500).items():
            for m in msgs:
                batch, bad = wire.dead_letters(m.value, schema, topic, tp.partition, m.offset)
                assert bad == []
                got.append(batch.batch.ids)
    consumer.close()
    assert sorted(map(tuple, np.concatenate(got).tolist())) == sorted(
        map(tuple, want_ids.tolist()))
    ratings = ordered.rename(columns={"ts": "timestamp"}).assign(rating=5.0)
    rest = build_sessions(ratings, session_items=1, unit_share=0.5)
    assert sorted(int(s.items[0]) for s in rest) == sorted(
        ordered["item"].to_numpy()[~head].tolist())
