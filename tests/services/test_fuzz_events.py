"""Bad events: 10,000 fuzzed events (malformed JSON, wrong types, NaN/inf, missing or extra
fields, huge strings, huge or negative IDs, wrong labels) mixed with good ones. Every bad one
gets a dead letter with a reason, nothing raises, and every good event is kept (count and
event-id checksum). Unit level on `wire.dead_letters` for the 10k; end to end through the
real broker and the trainer for a smaller mix.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from typing import Any

import orjson
import redis
from kafka import KafkaConsumer, TopicPartition

from services import wire
from services.stack.infra import ManagedProcess, wait_until
from services.stack.replay import make_producer
from services.trainer.loop import StreamTrainer, TrainerConfig
from storage.batch import DatasetSchema
from storage.datasets.spec import open_dataset
from storage.settings import Settings

SCHEMA = DatasetSchema("toy", fields=("user", "item"), dense=("age",))
N_BAD = 10_000

Event = dict[str, Any]


def _good(i: int, rng: random.Random, schema: DatasetSchema = SCHEMA) -> Event:
    ev: Event = {"event_id": f"good:{i}", "ts": 1.7e9 + i, "label": rng.randint(0, 1),
                 "unit_id": rng.choice([i, f"u{i}", None]), "schema": schema.name}
    if rng.random() < 0.5:
        ev["ids"] = {f: rng.randint(wire.INT64_MIN, wire.INT64_MAX) for f in schema.fields}
    else:
        ev["features"] = {f: rng.choice([str(rng.randint(0, 99)), rng.randint(-5, 5)])
                          for f in schema.fields}
    if schema.dense:
        ev["dense"] = {d: rng.uniform(-3, 3) for d in schema.dense}
    return ev


def _set(path: tuple[str, ...], value: Any) -> Callable[[Event], None]:
    def mutate(ev: Event) -> None:
        where = ev
        for p in path[:-1]:
            where = where.setdefault(p, {})
        where[path[-1]] = value
    return mutate


def _drop(key: str) -> Callable[[Event], None]:
    return lambda ev: ev.pop(key, None)


def _ids_field(value: Any) -> Callable[[Event], None]:
    def mutate(ev: Event) -> None:
        ev.pop("features", None)
        ev["ids"] = {"user": value, "item": 1}
    return mutate


def _feature(value: Any) -> Callable[[Event], None]:
    def mutate(ev: Event) -> None:
        ev.pop("ids", None)
        ev["features"] = {"user": "1", "item": value}
    return mutate


HUGE = "x" * 5000
# mutations of a good event that leave the message valid JSON but the event invalid
EVENT_MUTATIONS: list[Callable[[Event], None]] = [
    _set(("event_id",), 17), _set(("event_id",), None), _set(("event_id",), ""),
    _set(("event_id",), "e" * 300), _set(("event_id",), ["a"]),
    _set(("ts",), -1), _set(("ts",), "1700000000"), _set(("ts",), None), _set(("ts",), True),
    _set(("ts",), 1e300), _set(("ts",), 2**64 - 1), _set(("ts",), {"$date": 1}),
    _set(("label",), 2), _set(("label",), -1), _set(("label",), 1.0), _set(("label",), True),
    _set(("label",), "1"), _set(("label",), None), _set(("label",), 2**64 - 1),
    _drop("event_id"), _drop("ts"), _drop("label"), _drop("schema"), _drop("dense"),
    _set(("extra",), 1), _set(("__proto__",), {}), _set(("schema",), "other"),
    _set(("schema",), HUGE), _set(("schema",), 3),
    _set(("unit_id",), 1.5), _set(("unit_id",), [1]), _set(("unit_id",), HUGE),
    _set(("unit_id",), 2**63), _set(("unit_id",), True),
    _ids_field(2**63), _ids_field(2**64 - 1), _ids_field(-(2**63) - 1), _ids_field(1.5),
    _ids_field("7"), _ids_field(None), _ids_field(True), _ids_field([1]), _ids_field({}),
    _feature(HUGE), _feature(1.5), _feature(None), _feature([1]), _feature(2**63),
    _feature(False),
    lambda ev: ev.update(ids={"user": 1, "item": 2}, features={"user": "1", "item": "2"}),
    lambda ev: (ev.pop("ids", None), ev.pop("features", None)),
    lambda ev: ev.update(ids={"user": 1}) if "ids" in ev else ev.update(features={"user": 1}),
    lambda ev: (ev.pop("features", None), ev.update(ids={"user": 1, "item": 2, "x": 3})),
    lambda ev: (ev.pop("features", None), ev.update(ids=[1, 2])),
    _set(("dense",), None), _set(("dense",), [0.5]), _set(("dense",), {}),
    _set(("dense", "age"), "0.5"), _set(("dense", "age"), None), _set(("dense", "age"), 1e300),
    _set(("dense", "age"), -1e39), _set(("dense", "age"), True), _set(("dense", "zzz"), 1.0),
]
# events that are not objects at all (inside a valid array)
NOT_OBJECTS: list[Any] = [None, 1, "event", [1, 2], 1.5, True, [], {"ids": None}]
# whole message values that cannot be read as a list of events (one dead letter each)
BAD_MESSAGES: list[bytes] = [
    b"", b"not json", b"\x00\xff\xfe", b"[", b'[{"event_id": "a"', b"[NaN]", b"[Infinity]",
    b'[{"ts": -Infinity}]', b"[1e400]", b'["\\ud800"]', b"123", b'"a string"', b"null",
    b"true", b"[" * 5000 + b"]" * 5000, b'{"a": ' * 2000 + b"1" + b"}" * 2000,
    b"\xef\xbb\xbf[]x", b"[" + b"{}," * (wire.MAX_EVENTS_PER_MESSAGE + 1) + b"{}]",
    b'["' + b"y" * (wire.MAX_MESSAGE_BYTES + 10) + b'"]', b"[1,,2]", b"[1 2]",
]


def fuzz_messages(n_bad: int, seed: int, schema: DatasetSchema = SCHEMA,
                  good_per_message: int = 8) -> tuple[list[bytes], list[str], int]:
    """(message values, good event ids, bad count): each message is either a whole bad value
    or good events with bad ones mixed in at random positions."""
    rng = random.Random(seed)
    messages: list[bytes] = []
    good_ids: list[str] = []
    bad = g = 0
    while bad < n_bad:
        if rng.random() < 0.1:
            messages.append(rng.choice(BAD_MESSAGES))
            bad += 1
            continue
        events: list[Any] = []
        for _ in range(good_per_message):
            ev = _good(g, rng, schema)
            g += 1
            events.append(ev)
            good_ids.append(ev["event_id"])
        for _ in range(min(rng.randint(1, 4), n_bad - bad)):
            if rng.random() < 0.1:
                broken: Any = rng.choice(NOT_OBJECTS)
            else:
                broken = _good(-1, rng, schema)
                broken["event_id"] = f"bad:{bad}"
                rng.choice(EVENT_MUTATIONS)(broken)
            events.insert(rng.randint(0, len(events)), broken)
            bad += 1
        messages.append(json.dumps(events).encode())  # orjson refuses ints past 64 bits
    return messages, good_ids, bad


def test_10k_fuzzed_events_all_dead_lettered_and_good_ones_kept() -> None:
    messages, good_ids, n_bad = fuzz_messages(N_BAD, seed=7)
    assert n_bad == N_BAD
    kept: list[str] = []
    letters: list[dict[str, Any]] = []
    for offset, value in enumerate(messages):
        batch, dlq = wire.dead_letters(value, SCHEMA, "events", 0, offset)
        kept += batch.event_ids
        assert batch.batch.ids.shape == (len(batch), 2) and len(batch.ts) == len(batch)
        if len(batch):
            assert (batch.batch.timestamps >= 0).all()
            assert batch.batch.dense is not None and abs(batch.batch.dense).max() <= 3
        letters += [wire.parse_dlq_record(rec) for rec in dlq]
    assert len(letters) == N_BAD
    assert all(isinstance(d["reason"], str) and d["reason"] for d in letters)
    assert all(len(d["reason"]) <= 400 for d in letters)
    assert not any(i.startswith("bad:") for i in kept)
    assert kept == good_ids  # every good event, in order, once
    assert wire.event_id_checksum(kept) == wire.event_id_checksum(good_ids)
    # a dead letter carries the original: the event re-serialised, or the whole message value;
    # past wire.MAX_DLQ_ORIGINAL_BYTES its prefix, with the whole one's length and hash
    by_hash = {hashlib.sha256(v).hexdigest(): v for v in BAD_MESSAGES}
    for d in letters:
        if d["event_index"] is None:
            whole = by_hash[d["original_sha256"]]
            assert d["original_bytes"] == len(whole) and whole.startswith(d["original"])
            assert d["truncated"] == (len(whole) > wire.MAX_DLQ_ORIGINAL_BYTES)
            assert d["truncated"] or d["original"] == whole
        else:
            assert not d["truncated"]
            orjson.loads(d["original"])
    reasons = {str(d["reason"]).split(":")[0] for d in letters}
    assert {"message", "event", "ts", "label", "ids", "features", "dense", "unit_id",
            "event_id", "schema"} <= reasons


def test_fuzzed_events_through_the_broker_and_trainer(stream_settings: Settings, topic: str,
                                                     broker: ManagedProcess,
                                                     redis_client: redis.Redis) -> None:
    spec = "synthetic:events=1000,fields=2,vocab=500,seed=3,dense=1"  # every mutation bad
    schema = open_dataset(spec).schema
    messages, good_ids, n_bad = fuzz_messages(500, seed=11, schema=schema, good_per_message=6)
    prod = make_producer(stream_settings.kafka.bootstrap)
    for value in messages:
        if len(value) < wire.MAX_MESSAGE_BYTES:  # the broker refuses the oversized one itself
            prod.send(topic, value, partition=0)
    prod.flush()
    prod.close()
    n_bad -= sum(len(v) >= wire.MAX_MESSAGE_BYTES for v in messages)

    trainer = StreamTrainer(stream_settings, TrainerConfig(
        model="fuzz1", policy="fiited:dim=16,budget=0.5,interval=10", schema=schema,
        topic=topic, idle_exit_s=3.0))
    stats = trainer.run()
    assert stats.events_applied == len(good_ids)
    assert stats.events_checksum == wire.event_id_checksum(good_ids)
    assert stats.events_invalid == n_bad

    consumer = KafkaConsumer(bootstrap_servers=broker.address, enable_auto_commit=False)
    tp = TopicPartition(wire.DLQ_TOPIC, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    letters: list[dict[str, Any]] = []

    def drained() -> bool:
        for msgs in consumer.poll(timeout_ms=200).values():
            letters.extend(d for m in msgs
                           if (d := wire.parse_dlq_record(m.value))["topic"] == topic)
        return len(letters) >= n_bad

    try:
        wait_until(drained, 30, "dead letters")
    finally:
        consumer.close()
    assert len(letters) == n_bad and all(d["reason"] for d in letters)
