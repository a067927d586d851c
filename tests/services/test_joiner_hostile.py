"""The joiner against hostile input and a failing database, on the real broker and a real
database (SQLite and PostgreSQL): a bad exposure or feedback message is dead-lettered alone
and the rest of the step proceeds; a database failure holds the Kafka offsets below the
batch and the batch is written once the database is back; an exposure the database keeps
refusing is dead-lettered alone; joined events the trainer would reject are dead-lettered,
not sent; events messages stay under the size limit; events are sent only once their rows
are committed, and a crash between the two re-sends them from the outbox."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from services import wire
from services.experiments.join_store import MAX_EVENTS_MESSAGE_BYTES
from services.experiments.joiner import JoinerService
from services.stack.infra import ManagedProcess, create_topics
from services.wire import MAX_SHOWN, BadMessage, read_exposure, read_feedback
from storage.batch import DatasetSchema
from storage.db import experiments as store
from storage.db.models import Exposure, Outcome

SCHEMA = DatasetSchema("sim", fields=("user", "item"))
WINDOW = 30.0
T0 = 1_000_000.0


def exposure(rid: str, ts: float, eid: int, arm_id: int, n: int = 3) -> dict:
    return {"request_id": rid, "experiment_id": eid, "phase": 1, "arm": "a", "arm_id": arm_id,
            "model": "m", "model_version": 1, "unit_id": f"u-{rid}", "ts": ts,
            "latency_ms": 2.0,
            "shown": [{"item": str(k), "position": k, "score": 0.1 * (k + 1),
                       "features": {"user": f"u-{rid}", "item": str(k)}} for k in range(n)]}


@dataclass
class Setup:
    tag: str
    topics: dict[str, str]
    eid: int
    arm_id: int
    prod: KafkaProducer
    address: str

    def send(self, which: str, value: bytes, key: bytes = b"k") -> None:
        self.prod.send(self.topics[which], key=key, value=value)

    def service(self, factory: sessionmaker[Session],
                schema_for: Callable[[str], DatasetSchema] = lambda _m: SCHEMA,
                **kw: object) -> JoinerService:
        return JoinerService(self.address, factory, schema_for=schema_for, window_s=WINDOW,
                             grace_s=5.0, wall_clock=False, group_id=f"joiner-{self.tag}",
                             exposures_topic=self.topics["exposures"],
                             feedback_topic=self.topics["feedback"],
                             events_topic=self.topics["events"], max_poll_interval_ms=3000,
                             **kw)  # type: ignore[arg-type]


@pytest.fixture
def setup(broker: ManagedProcess, db_factory: sessionmaker[Session]) -> Iterator[Setup]:
    tag = uuid.uuid4().hex[:8]
    topics = {"exposures": f"exposures-{tag}", "feedback": f"feedback-{tag}",
              "events": f"events-{tag}"}
    create_topics(broker.address, {topics["exposures"]: 2, topics["feedback"]: 1,
                                   topics["events"]: 1})
    with db_factory.begin() as s:
        exp = store.create_experiment(s, f"hostile-{tag}", [store.ArmSpec("a", "m", 1),
                                                           store.ArmSpec("b", "m", 0)])
        eid, arm_id = exp.id, exp.arms[0].id
    prod = KafkaProducer(bootstrap_servers=broker.address, acks="all")
    try:
        yield Setup(tag, topics, eid, arm_id, prod, broker.address)
    finally:
        prod.close()


def read_all(address: str, topic: str) -> list[bytes]:
    consumer = KafkaConsumer(topic, bootstrap_servers=address, auto_offset_reset="earliest",
                             consumer_timeout_ms=2000)
    try:
        return [m.value for m in consumer]
    finally:
        consumer.close()


def events_of(address: str, topic: str) -> list[dict]:
    return [ev for v in read_all(address, topic) for ev in orjson.loads(v)]


def dead_letters(st: Setup) -> list[dict]:
    """Dead letters (events.dlq is shared) whose source is this test's topics."""
    docs = [wire.parse_dlq_record(v) for v in read_all(st.address, wire.DLQ_TOPIC)]
    return [d for d in docs if d["topic"] in (st.topics["exposures"], st.topics["feedback"])]


def read_until(svc: JoinerService, total: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while svc.messages < total:
        assert time.monotonic() < deadline, f"joiner read {svc.messages}/{total}"
        svc.step(timeout_ms=200)


def committed_vs_read(svc: JoinerService, topic: str) -> list[tuple[int, int]]:
    """[(committed offset or 0, offset after the last message read)] per partition of `topic`
    (the consumer's position: the tests read every message before they look; tansu's end
    offsets may lag when several messages share a record batch)."""
    tps = [TopicPartition(topic, p) for p in sorted(svc.consumer.partitions_for_topic(topic))]
    return [(svc.consumer.committed(tp) or 0, svc.consumer.position(tp)) for tp in tps]


def exposure_rows(factory: sessionmaker[Session]) -> dict[str, int]:
    with factory() as s:
        return dict(s.execute(select(Outcome.request_id, func.count())
                              .group_by(Outcome.request_id)).all())


# ------------------------------------------------------------------------------------------


def test_bad_messages_are_dead_lettered_alone_and_the_rest_proceeds(
        setup: Setup, db_factory: sessionmaker[Session]) -> None:
    st = setup
    good = exposure("good", T0, st.eid, st.arm_id)
    dup = exposure("dup", T0 + 1, st.eid, st.arm_id)
    dup["shown"].append({**dup["shown"][0], "position": 3})  # item "0" shown twice
    null_score = exposure("nullscore", T0 + 2, st.eid, st.arm_id)
    null_score["shown"][1]["score"] = None
    missing = exposure("missing", T0 + 3, st.eid, st.arm_id)
    del missing["unit_id"]
    huge = exposure("huge", T0 + 4, st.eid, st.arm_id)
    huge["shown"][0]["features"]["user"] = "x" * 100_000
    bad_ts = orjson.dumps(exposure("badts", T0 + 5, st.eid, st.arm_id)).replace(
        str(T0 + 5).encode(), b"1e400")  # parses as infinity
    msgs = [orjson.dumps(good), orjson.dumps(dup), orjson.dumps(null_score), b'{"request_id": ',
            orjson.dumps(missing), orjson.dumps(huge), bad_ts]
    for m in msgs:
        st.send("exposures", m)
    feedback = [orjson.dumps({"request_id": "good", "item": "1", "clicked": True,
                              "ts": T0 + 3}),
                orjson.dumps({"request_id": "dup", "item": "0", "clicked": True, "ts": T0 + 4}),
                orjson.dumps({"request_id": "good", "item": "2", "clicked": "yes",
                              "ts": T0 + 4}),
                b"\xff\xfe not json"]
    for m in feedback:
        st.send("feedback", m)
    st.prod.flush()

    svc = st.service(db_factory)
    try:
        read_until(svc, len(msgs) + len(feedback))
        svc.drain()
        exp_offsets = committed_vs_read(svc, st.topics["exposures"])
        fb_offsets = committed_vs_read(svc, st.topics["feedback"])
    finally:
        svc.close()

    # the good exposure and the de-duplicated one are in the database, nothing else
    assert exposure_rows(db_factory) == {"good": 3, "dup": 3}
    with db_factory() as s:
        clicked = set(s.execute(select(Outcome.request_id, Outcome.item)
                                .where(Outcome.clicked)).all())
        dup_rows = dict(s.execute(select(Outcome.item, Outcome.position)
                                  .where(Outcome.request_id == "dup")).all())
        assert s.get(Exposure, "dup").n_shown == 3
    assert clicked == {("good", "1"), ("dup", "0")}
    assert dup_rows == {"0": 0, "1": 1, "2": 2}  # the first showing of "0" is kept

    events = events_of(st.address, st.topics["events"])
    assert sorted(e["event_id"] for e in events) == sorted(
        wire.joined_event_id(r, str(k)) for r in ("good", "dup") for k in range(3))
    assert {e["event_id"] for e in events if e["label"]} == {
        wire.joined_event_id("good", "1"), wire.joined_event_id("dup", "0")}

    dlq = dead_letters(st)
    by_source = {(d["topic"] == st.topics["feedback"], d["original"][:40]): d["reason"]
                 for d in dlq}
    assert len(dlq) == 7, [d["reason"] for d in dlq]
    reasons = " | ".join(sorted(by_source.values()))
    for needle in ("score", "unit_id", "features", "ts", "JSON", "clicked"):
        assert needle in reasons, reasons
    assert all(len(d["reason"]) <= 600 for d in dlq)
    assert svc.state.stats.dead_letters == 7 and svc.state.stats.duplicate_items == 1
    # everything was handled, so the offsets passed every message
    assert all(c == e for c, e in exp_offsets + fb_offsets), (exp_offsets, fb_offsets)


def _rename(factory: sessionmaker[Session], old: str, new: str) -> None:
    with factory.begin() as s:
        s.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


def test_database_failure_holds_offsets_and_the_batch_is_written_after_recovery(
        setup: Setup, db_factory: sessionmaker[Session]) -> None:
    st = setup
    n = 6
    for i in range(n):
        st.send("exposures", orjson.dumps(exposure(f"r{i}", T0 + i, st.eid, st.arm_id)),
                key=f"r{i}".encode())
    st.prod.flush()
    svc = st.service(db_factory, retry_s=0.05, max_retry_s=0.2)
    try:
        read_until(svc, n)
        _rename(db_factory, "outcomes", "outcomes_away")
        try:
            svc.drain()  # the write fails: the process lives on, nothing is committed
            for _ in range(3):
                svc.step(timeout_ms=50)
            assert all(c == 0 for c, _ in committed_vs_read(svc, st.topics["exposures"]))
            assert read_all(st.address, st.topics["events"]) == []  # rows first, then events
            with db_factory() as s:
                assert s.scalar(select(func.count()).select_from(Exposure)) == 0
        finally:
            _rename(db_factory, "outcomes_away", "outcomes")
        deadline = time.monotonic() + 30
        while len(exposure_rows(db_factory)) < n:
            assert time.monotonic() < deadline, "the batch was not written after recovery"
            svc.step(timeout_ms=100)
        svc.step(timeout_ms=50)
        offsets = committed_vs_read(svc, st.topics["exposures"])
    finally:
        svc.close()
    assert exposure_rows(db_factory) == {f"r{i}": 3 for i in range(n)}
    assert all(c == e for c, e in offsets), offsets
    events = events_of(st.address, st.topics["events"])
    assert len(events) == 3 * n == len({e["event_id"] for e in events})


def test_exposure_the_database_keeps_refusing_is_dead_lettered_alone(
        setup: Setup, db_factory: sessionmaker[Session]) -> None:
    st = setup
    good = [exposure(f"g{i}", T0 + i, st.eid, st.arm_id) for i in range(3)]
    orphan = exposure("noexp", T0 + 1.5, st.eid + 1000, st.arm_id)  # no such experiment (FK)
    for ex in [*good[:2], orphan, good[2]]:
        st.send("exposures", orjson.dumps(ex), key=ex["request_id"].encode())
    st.prod.flush()
    svc = st.service(db_factory, retry_s=0.01, max_retry_s=0.05)
    try:
        read_until(svc, 4)
        svc.drain()
        deadline = time.monotonic() + 30
        while svc.backlog:
            assert time.monotonic() < deadline, "the batch never went through"
            svc.step(timeout_ms=50)
        offsets = committed_vs_read(svc, st.topics["exposures"])
    finally:
        svc.close()
    assert exposure_rows(db_factory) == {"g0": 3, "g1": 3, "g2": 3}
    (dead,) = dead_letters(st)
    assert orjson.loads(dead["original"])["request_id"] == "noexp"
    assert "IntegrityError" in dead["reason"]
    assert all(c == e for c, e in offsets), offsets
    assert len(events_of(st.address, st.topics["events"])) == 9


def test_joined_events_the_trainer_would_reject_are_dead_lettered_not_sent(
        setup: Setup, db_factory: sessionmaker[Session]) -> None:
    st = setup
    good = exposure("ok", T0, st.eid, st.arm_id)
    extra = exposure("extra", T0 + 1, st.eid, st.arm_id)
    for s in extra["shown"]:
        s["features"]["genre"] = "comedy"  # not a field of the schema
    for ex in (good, extra):
        st.send("exposures", orjson.dumps(ex))
    st.prod.flush()
    svc = st.service(db_factory)
    try:
        read_until(svc, 2)
        svc.drain()
    finally:
        svc.close()
    events = events_of(st.address, st.topics["events"])
    assert {e["event_id"] for e in events} == {wire.joined_event_id("ok", str(k))
                                               for k in range(3)}
    assert all(e["schema"] == "sim" for e in events)
    dlq = dead_letters(st)
    assert len(dlq) == 3
    assert all("unknown fields ['genre']" in d["reason"] for d in dlq)
    assert {orjson.loads(d["original"])["event_id"] for d in dlq} == {
        wire.joined_event_id("extra", str(k)) for k in range(3)}
    # the A/B record of the request is kept: only the training events are refused
    assert exposure_rows(db_factory) == {"ok": 3, "extra": 3}


def test_events_messages_stay_under_the_size_limit(
        setup: Setup, db_factory: sessionmaker[Session]) -> None:
    st = setup
    big = exposure("big", T0, st.eid, st.arm_id, n=600)
    for s in big["shown"]:
        s["features"]["user"] = "u" * 1000 + s["item"]
    assert len(orjson.dumps(big)) > 1.2 * MAX_EVENTS_MESSAGE_BYTES  # its events need two
    st.send("exposures", orjson.dumps(big))
    st.prod.flush()
    svc = st.service(db_factory)
    try:
        read_until(svc, 1)
        svc.drain()
    finally:
        svc.close()
    values = read_all(st.address, st.topics["events"])
    assert len(values) >= 2
    assert all(len(v) <= MAX_EVENTS_MESSAGE_BYTES for v in values)
    events = [ev for v in values for ev in orjson.loads(v)]
    assert len(events) == 600 == len({e["event_id"] for e in events})


def test_events_are_sent_after_their_rows_commit_and_resent_after_a_crash(
        setup: Setup, db_factory: sessionmaker[Session]) -> None:
    st = setup
    n = 4
    for i in range(n):
        st.send("exposures", orjson.dumps(exposure(f"c{i}", T0 + i, st.eid, st.arm_id)))
    st.prod.flush()
    svc = st.service(db_factory)
    seen_rows: list[int] = []

    def crash(topic: str, value: bytes, key: bytes | None = None) -> None:
        if topic == st.topics["events"]:
            with db_factory() as s:  # another connection: sees committed rows only
                seen_rows.append(s.scalar(select(func.count()).select_from(Exposure)))
            raise RuntimeError("killed between the database commit and the send")

    try:
        read_until(svc, n)
        svc.producer.send = crash  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="killed"):
            svc.drain()
    finally:
        svc.close()
    assert seen_rows and seen_rows[0] == n
    assert read_all(st.address, st.topics["events"]) == []

    again = st.service(db_factory)  # the restart: re-reads the exposures, sends the outbox
    try:
        read_until(again, n)
        again.drain()
    finally:
        again.close()
    assert exposure_rows(db_factory) == {f"c{i}": 3 for i in range(n)}
    events = events_of(st.address, st.topics["events"])
    assert len(events) == 3 * n == len({e["event_id"] for e in events})


# ------------------------------------------------------------------------------------------


def test_read_exposure_and_feedback_reject_hostile_fields() -> None:
    base = exposure("r", T0, 1, 1)
    doc, dups = read_exposure(orjson.dumps(base))
    assert dups == 0 and doc["shown"][2]["features"] == {"user": "u-r", "item": "2"}

    def bad(change: Callable[[dict], None]) -> str:
        ex = orjson.loads(orjson.dumps(base))
        change(ex)
        with pytest.raises(BadMessage) as info:
            read_exposure(orjson.dumps(ex))
        reason = str(info.value)
        assert reason.startswith("exposure: ") and len(reason) <= 600
        return reason

    assert "experiment_id" in bad(lambda e: e.update(experiment_id=True))
    assert "phase" in bad(lambda e: e.update(phase=1 << 40))
    assert "arm_id" in bad(lambda e: e.update(arm_id="7"))
    assert "unit_id" in bad(lambda e: e.update(unit_id="u" * 5000))
    assert "request_id" in bad(lambda e: e.update(request_id=""))
    assert "latency_ms" in bad(lambda e: e.update(latency_ms=-1.0))
    assert "shown" in bad(lambda e: e.update(shown=[e["shown"][0]] * (MAX_SHOWN + 1)))
    assert "item" in bad(lambda e: e["shown"][0].update(item="i" * 300))
    assert "position" in bad(lambda e: e["shown"][0].update(position=1.5))
    assert "features" in bad(lambda e: e["shown"][0].update(features={"user": 1 << 63}))
    assert "features" in bad(lambda e: e["shown"][0].update(features={"k" * 10**6: "v"}))
    assert "features" in bad(lambda e: e["shown"][0].update(features=[1, 2]))
    assert "model" in bad(lambda e: e.update(model="../etc"))

    with pytest.raises(BadMessage, match="JSON"):
        read_exposure(b"[1, 2")
    with pytest.raises(BadMessage, match="bytes"):
        read_exposure(b" " * (wire.MAX_MESSAGE_BYTES + 1))
    with pytest.raises(BadMessage, match="ts"):
        read_feedback(b'{"request_id": "r", "item": "1", "clicked": true, "ts": 1e400}')
    with pytest.raises(BadMessage, match="clicked"):
        read_feedback(b'{"request_id": "r", "item": "1", "clicked": 1, "ts": 5.0}')
    assert read_feedback(b'{"request_id": "r", "item": "1", "clicked": true, "ts": 5}') == {
        "request_id": "r", "item": "1", "clicked": True, "ts": 5.0}
