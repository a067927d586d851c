"""The joiner against the real broker (tansu fixture): exposures and feedback in, with
duplicate, late, early (before its exposure) and orphan feedback; every shown item comes out
exactly once, as a labelled event on `events` and as an outcome row; every odd case is
counted."""

from __future__ import annotations

import time
import uuid

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from sqlalchemy import func, select

from services.experiments.joiner import JoinerService, JoinState
from services.stack.infra import create_topics
from storage.batch import DatasetSchema
from storage.db import experiments as store
from storage.db.models import Exposure, Outcome

WINDOW = 30.0
SCHEMA = DatasetSchema("sim", fields=("user", "item"))


def exposure(rid: str, ts: float, eid: int, arm_id: int) -> dict:
    return {"request_id": rid, "experiment_id": eid, "phase": 1, "arm": "a", "arm_id": arm_id,
            "model": "m", "model_version": 1, "unit_id": f"u-{rid}", "ts": ts,
            "latency_ms": 2.0,
            "shown": [{"item": str(k), "position": k, "score": 0.1 * (k + 1),
                       "features": {"user": f"u-{rid}", "item": str(k)}} for k in range(3)]}


def test_joiner_neither_loses_nor_double_counts(broker, db_factory) -> None:
    tag = uuid.uuid4().hex[:8]
    topics = {"exposures": f"exposures-{tag}", "feedback": f"feedback-{tag}",
              "events": f"events-{tag}"}
    create_topics(broker.address, {topics["exposures"]: 2, topics["feedback"]: 2,
                                   topics["events"]: 1})
    with db_factory.begin() as s:
        exp = store.create_experiment(s, "join", [store.ArmSpec("a", "m", 1),
                                                  store.ArmSpec("b", "m", 0)])
        eid, arm_id = exp.id, exp.arms[0].id

    n = 40
    t0 = 1_000_000.0
    exposures = [exposure(f"r{i}", t0 + i, eid, arm_id) for i in range(n)]
    feedback: list[dict] = []
    expected_clicks = set()
    for i in range(0, n, 2):  # every other request: a click on item 0 inside the window
        feedback.append({"request_id": f"r{i}", "item": "0", "clicked": True, "ts": t0 + i + 5})
        expected_clicks.add((f"r{i}", "0"))
    for i in range(0, 10, 2):  # duplicates of five of them
        feedback.append({"request_id": f"r{i}", "item": "0", "clicked": True, "ts": t0 + i + 6})
    for i in (1, 3, 5):  # late: outside the attribution window
        feedback.append({"request_id": f"r{i}", "item": "1", "clicked": True,
                         "ts": t0 + i + WINDOW + 1})
    for i in (7, 9):  # explicit non-clicks
        feedback.append({"request_id": f"r{i}", "item": "2", "clicked": False, "ts": t0 + i + 1})
    feedback.append({"request_id": "nope", "item": "0", "clicked": True, "ts": t0 + 3})
    early = {"request_id": f"r{n}", "item": "2", "clicked": True, "ts": t0 + n + 2}
    expected_clicks.add((f"r{n}", "2"))

    prod = KafkaProducer(bootstrap_servers=broker.address, acks="all")
    for ex in exposures:
        prod.send(topics["exposures"], key=ex["request_id"].encode(), value=orjson.dumps(ex))
    prod.send(topics["exposures"], key=b"dup", value=orjson.dumps(exposures[0]))  # duplicate
    for fb in sorted(feedback, key=lambda f: f["ts"]):  # each topic in time order
        prod.send(topics["feedback"], key=fb["request_id"].encode(), value=orjson.dumps(fb))
    prod.flush()
    total_msgs = n + 1 + len(feedback)

    svc = JoinerService(broker.address, db_factory, schema_for=lambda model: SCHEMA,
                        window_s=WINDOW, grace_s=5.0, wall_clock=False,
                        group_id=f"joiner-{tag}", exposures_topic=topics["exposures"],
                        feedback_topic=topics["feedback"], events_topic=topics["events"],
                        max_poll_interval_ms=3000)
    try:
        deadline = time.monotonic() + 60
        while svc.messages < total_msgs:
            assert time.monotonic() < deadline, f"joiner read {svc.messages}/{total_msgs}"
            svc.step(timeout_ms=200)
        # a click read before its exposure (delivered out of order): held, then joined
        prod.send(topics["feedback"], key=b"e", value=orjson.dumps(early))
        prod.flush()
        while svc.messages < total_msgs + 1:
            assert time.monotonic() < deadline, "early feedback not read"
            svc.step(timeout_ms=200)
        assert svc.state.orphans.get(f"r{n}")
        prod.send(topics["exposures"], key=b"x",
                  value=orjson.dumps(exposure(f"r{n}", t0 + n, eid, arm_id)))
        prod.flush()
        while svc.messages < total_msgs + 2:
            assert time.monotonic() < deadline, "last exposure not read"
            svc.step(timeout_ms=200)
        svc.drain()
    finally:
        svc.close()
        prod.close()
    st = svc.state.stats
    assert st.exposures == n + 1 and st.duplicate_exposures == 1
    assert st.clicks == len(expected_clicks) and st.duplicates == 5 and st.late == 3
    # topics interleave freely in a poll, so more feedback may arrive before its exposure
    assert st.non_clicks == 2 and st.orphans == 1 and st.early >= 1
    assert st.late_arrivals == 0
    assert st.closed == n + 1 and st.events_emitted == 3 * (n + 1)

    with db_factory() as s:
        assert s.scalar(select(func.count()).select_from(Exposure)) == n + 1
        rows = s.execute(select(Outcome.request_id, Outcome.item, Outcome.clicked,
                                Outcome.late_feedback)).all()
        # each exposure carries its items' in-window clicks and log loss (what the report
        # reads), the same as its outcomes
        sums = s.execute(select(Exposure.request_id, Exposure.clicks, Exposure.log_loss)).all()
        scores = s.execute(select(Outcome.request_id, Outcome.score, Outcome.clicked)).all()
    for rid, clicks, loss in sums:
        mine = [(p, c) for r, p, c in scores if r == rid]
        assert clicks == sum(c for _, c in mine)
        p = np.clip([p for p, _ in mine], 1e-7, 1 - 1e-7)
        y = np.array([c for _, c in mine])
        assert loss == pytest.approx(-np.sum(np.where(y, np.log(p), np.log1p(-p))))
    assert len(rows) == 3 * (n + 1)
    assert {(r, i) for r, i, c, _ in rows if c} == expected_clicks
    assert sum(late for *_, late in rows) == 3

    consumer = KafkaConsumer(topics["events"], bootstrap_servers=broker.address,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    events = [ev for m in consumer for ev in orjson.loads(m.value)]
    consumer.close()
    assert len(events) == 3 * (n + 1) == len({e["event_id"] for e in events})
    assert {tuple(e["event_id"].split(":")[1:]) for e in events if e["label"]} == expected_clicks
    assert all(e["schema"] == "sim" and set(e["features"]) == {"user", "item"} for e in events)


def test_join_state_closes_by_watermark_and_counts_late_arrivals() -> None:
    st = JoinState(window_s=10, grace_s=2)
    st.on_exposure({"request_id": "a", "ts": 100.0, "shown": [{"item": "x"}]})
    st.on_feedback({"request_id": "a", "item": "x", "clicked": True, "ts": 105.0})
    assert st.advance(now=111.0) == []  # window + grace not over yet
    (done,) = st.advance(now=112.0)
    assert done.clicks == {"x": 105.0}
    st.on_feedback({"request_id": "a", "item": "x", "clicked": True, "ts": 106.0})
    assert st.stats.duplicates == 1  # a duplicate after closing is still a duplicate
    st.on_exposure({"request_id": "b", "ts": 200.0, "shown": [{"item": "y"}]})
    st.advance(now=213.0)
    st.on_feedback({"request_id": "b", "item": "y", "clicked": True, "ts": 205.0})
    assert st.stats.late_arrivals == 1 and st.late_updates == [("b", "y")]
    assert st.held_offsets() == {}


def test_version_recorder_copies_versions_and_chunk_histogram(redis_client, db_factory) -> None:
    import numpy as np

    from services import wire
    from services.experiments.version_recorder import record_versions
    from services.trainer.publisher import RedisPublisher
    from storage.db.models import ModelVersionRow
    from tests.services.fake_policy import HandPolicy

    model = f"m{uuid.uuid4().hex[:6]}"
    widths = (2, 2, 4)
    masks = np.array([1, 3, 7, 7, 5], np.uint32)  # live chunks 1, 2, 3, 3, 2
    records = wire.pack_records(masks, np.ones((5, 8), np.float32), widths)
    policy = HandPolicy(widths)
    policy.set(np.zeros(5, np.int64), np.arange(5), masks, np.ones((5, 8), np.float32))
    ver = wire.ModelVersion(
        model=model, version=4, created_at=123.0, policy="fiited", schema="sim",
        fields=["user"], dense_names=[], arch="mlp", dim=8, widths=list(widths),
        dense_key=wire.dense_key(model, 4), full=True, entries_written=5, entries_deleted=0,
        embedding_bytes=9999, embedding_value_bytes=5000, redis_embedding_bytes=sum(
            map(len, records)), redis_embedding_records=5, events_applied=10,
        events_checksum="0", events_invalid=0, offsets={}, metrics={"auc": 0.7})
    RedisPublisher(redis_client, model, ("user",)).publish(policy, b"", 4, True, ver)  # type: ignore[arg-type]
    assert record_versions(db_factory, redis_client, [model, "absent"]) == 1
    assert record_versions(db_factory, redis_client, [model]) == 0  # already recorded
    with db_factory() as s:
        row = s.scalars(select(ModelVersionRow)).one()
    assert (row.version, row.embedding_bytes, row.metrics) == (4, 9999, {"auc": 0.7})
    assert row.chunk_histogram == {"1": 1, "2": 2, "3": 2}


def test_version_recorder_skips_records_that_are_not_versions(redis_client, db_factory) -> None:
    """Anything may sit under a model's version key: the joiner's recorder skips it (it used
    to raise inside the joiner's tick and stop the joiner)."""
    from services import wire
    from services.experiments.version_recorder import record_versions, schema_of

    good = f"m{uuid.uuid4().hex[:6]}"
    ver = wire.ModelVersion(
        model=good, version=1, created_at=1.0, policy="fixed:8", schema="sim",
        fields=["user"], dense_names=[], arch="mlp", dim=8, widths=[8],
        dense_key=wire.dense_key(good, 1), full=True, entries_written=0, entries_deleted=0,
        embedding_bytes=1, embedding_value_bytes=1, redis_embedding_bytes=0,
        redis_embedding_records=0, events_applied=0, events_checksum="0", events_invalid=0,
        offsets={}, metrics={"auc": None})
    redis_client.set(wire.version_key(good), ver.to_json())
    junk = {f"j{uuid.uuid4().hex[:6]}": blob for blob in (
        b"{not json", b"[1]", b'{"version": "x"}', ver.to_json().replace(b'"dim":8',
                                                                         b'"dim":"eight"'))}
    for name, blob in junk.items():
        redis_client.set(wire.version_key(name), blob)
        assert schema_of(redis_client, name) is None
    assert record_versions(db_factory, redis_client, [*junk, good]) == 1
    assert schema_of(redis_client, good).fields == ("user",)
