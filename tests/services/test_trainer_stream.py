"""The streaming trainer against a real tansu broker and a real redis-server: events in,
versions and embedding records out, dead letters, and exactly-once across a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from services import wire
from services.stack.infra import ManagedProcess, wait_until
from services.stack.replay import ReplayStats, make_producer, replay_dataset
from services.trainer.checkpoint import CheckpointState, list_checkpoints
from services.trainer.loop import StreamTrainer, TrainerConfig
from storage.datasets.spec import open_dataset
from storage.settings import Settings
from tests.services.conftest import stream_env

SPEC = "synthetic:events=6000,fields=4,vocab=2000,seed=1"
POLICY = "fiited:dim=32,budget=0.3,interval=10"  # chunk widths 2-2-4-8-16


def _trainer(settings: Settings, model: str, topic: str, max_events: int) -> StreamTrainer:
    schema = open_dataset(SPEC).schema
    return StreamTrainer(settings, TrainerConfig(model=model, policy=POLICY, schema=schema,
                                                 arch="dlrm", topic=topic,
                                                 max_events=max_events))


def _version(r: redis.Redis, model: str) -> wire.ModelVersion | None:
    blob = r.get(wire.version_key(model))
    return None if blob is None else wire.ModelVersion.from_json(blob)


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
def test_events_in_trainer_out_to_redis(stream_settings: Settings, topic: str,
                                        redis_client: redis.Redis, background: bool) -> None:
    """With publish_background, the Redis writes run on the publishing thread while training
    goes on: the versions must be the same (complete, in order, exact counts)."""
    model = f"stream1-{'bg' if background else 'fg'}"
    # due at the first poll: a background run publishes in the background at least once
    stream_settings = stream_settings.replace(trainer_publish_background=background,
                                              publish_interval_s=0.001)
    sent = replay_dataset(stream_settings, SPEC, topic=topic, batch_events=100)
    assert sent.events == 6000 and sent.failed_messages == 0
    pubsub = redis_client.pubsub()
    pubsub.subscribe(wire.versions_channel(model))
    trainer = _trainer(stream_settings, model, topic, max_events=sent.events)
    stats = trainer.run()

    assert stats.events_applied == sent.events
    assert (stats.phases.get("publish_background", 0.0) > 0) == background
    assert stats.events_checksum == sent.checksum
    rec = _version(redis_client, model)
    assert rec is not None
    assert rec.events_applied == sent.events and int(rec.events_checksum) == sent.checksum
    assert rec.widths == [2, 2, 4, 8, 16] and rec.dim == 32 and rec.arch == "dlrm"
    assert sum(rec.offsets.values()) == sent.messages
    assert rec.metrics["rows"] == sent.events and rec.metrics["auc"] is not None
    assert redis_client.sismember(wire.MODELS_SET, model)
    assert redis_client.exists(rec.dense_key)

    announced: list[int] = []
    while (msg := pubsub.get_message(timeout=0.5)) is not None:
        if msg["type"] == "message":
            announced.append(int(msg["data"]))
    pubsub.close()
    assert len(announced) >= 2 and announced == sorted(set(announced))
    assert announced[-1] == rec.version

    # every live entry of the trainer's store is in Redis and unpacks to its embedding
    export = trainer.policy.export(dirty_only=False)
    live = export.masks != 0
    records = wire.read_current(redis_client, model, export.fields[live].astype(np.int64),
                                export.keys[live])
    values, found = wire.unpack_records(records, tuple(rec.widths), rec.dim)
    assert found.all()
    np.testing.assert_array_equal(values, export.values[live])
    np.testing.assert_array_equal(wire.record_masks(records), export.masks[live])
    ids = np.repeat(export.keys[live][:, None], len(rec.fields), axis=1)
    current = trainer.policy.lookup(ids, train=False).detach().numpy()
    np.testing.assert_array_equal(values, current[np.arange(len(ids)),
                                                   export.fields[live].astype(np.int64)])
    # no other records, and the byte count in the record is what Redis holds
    in_redis = wire.current_bucket_keys(redis_client, model)
    stored = sum(redis_client.hlen(k) - 1 for k in in_redis)  # less each sentinel
    assert stored == int(live.sum()) == rec.redis_embedding_records
    assert rec.redis_embedding_bytes == sum(len(v) for v in records)
    # the dense weights load back into the network
    state = wire.dense_from_bytes(redis_client.get(rec.dense_key))
    for name, tensor in trainer.net.state_dict().items():
        assert np.array_equal(state[name].numpy(), tensor.numpy())

    # Redis loses the model (a restart without persistence): the next publish is a full one
    redis_client.delete(wire.version_key(model), *in_redis)
    trainer.connect()
    try:
        assert trainer.publish()
    finally:
        trainer.close()
    again = _version(redis_client, model)
    assert again is not None and again.full and again.version == rec.version + 1
    assert again.redis_embedding_records == rec.redis_embedding_records
    assert again.redis_embedding_bytes == rec.redis_embedding_bytes
    assert wire.read_current(redis_client, model, export.fields[live].astype(np.int64),
                             export.keys[live]) == records


def test_invalid_events_go_to_dlq_and_training_goes_on(stream_settings: Settings, topic: str,
                                                       broker: ManagedProcess,
                                                       redis_client: redis.Redis) -> None:
    batch = next(open_dataset(SPEC).batches(300))
    events = wire.batch_to_events(batch, [f"dlq:{i}" for i in range(300)])
    bad_event = dict(events[150], label=7, event_id="bad-label")
    messages = [
        wire.encode_events(events[:100]),
        wire.encode_events(events[100:150] + [bad_event] + events[150:200]),
        b"\x00\xffnot json at all",
        wire.encode_events(events[200:]),
    ]
    prod = make_producer(stream_settings.kafka.bootstrap)
    for value in messages:
        prod.send(topic, value, partition=0)
    prod.flush()
    prod.close()

    trainer = _trainer(stream_settings, "dlq1", topic, max_events=300)
    stats = trainer.run()
    assert stats.events_applied == 300  # the good events around the bad ones all applied
    assert stats.events_checksum == wire.event_id_checksum([e["event_id"] for e in events])
    assert stats.events_invalid == 2
    rec = _version(redis_client, "dlq1")
    assert rec is not None and rec.events_invalid == 2

    consumer = KafkaConsumer(bootstrap_servers=broker.address, enable_auto_commit=False)
    tp = TopicPartition(wire.DLQ_TOPIC, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    letters: list[dict[str, object]] = []
    deadline = time.monotonic() + 30
    while len(letters) < 2 and time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=500).values():
            letters += [d for m in msgs if (d := wire.parse_dlq_record(m.value))["topic"] == topic]
    consumer.close()
    assert len(letters) == 2
    by_offset = {d["offset"]: d for d in letters}
    assert "label" in str(by_offset[1]["reason"]) and by_offset[1]["event_index"] == 50
    assert orjson.loads(by_offset[1]["original"])["event_id"] == "bad-label"  # type: ignore[arg-type]
    assert str(by_offset[2]["reason"]).startswith("message: not JSON")
    assert by_offset[2]["original"] == messages[2] and by_offset[2]["event_index"] is None


def _start_trainer(settings: Settings, model: str, topic: str, log: Path,
                   max_events: int | None = None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "services.cli", "train", "--model", model, "--policy", POLICY,
           "--data", SPEC, "--topic", topic]
    if max_events is not None:
        cmd += ["--max-events", str(max_events)]
    env = dict(os.environ) | stream_env(settings)
    root = Path(__file__).resolve().parents[2]
    return subprocess.Popen(cmd, env=env, cwd=root, stdout=open(log, "ab"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)


def test_sigkill_mid_stream_loses_no_event_and_applies_none_twice(
        stream_settings: Settings, topic: str, redis_client: redis.Redis,
        tmp_path: Path) -> None:
    settings = stream_settings.replace(checkpoint_every_events=1000, publish_interval_s=0.2,
                                       trainer_batch_events=64)
    # the events arrive while the trainer runs (1500/s), so the kill lands mid-stream
    replayed: list[ReplayStats] = []
    producer = threading.Thread(target=lambda: replayed.append(replay_dataset(
        settings, SPEC, topic=topic, batch_events=50, rate=1500)))
    total = len(open_dataset(SPEC))  # type: ignore[arg-type]
    model = "kill1"
    root = settings.trainer.checkpoint_dir / model
    log = tmp_path / "trainer.log"

    def published() -> int:
        rec = _version(redis_client, model)
        return 0 if rec is None else rec.events_applied

    def checkpointed() -> int:
        found = list_checkpoints(root)
        if not found:
            return 0
        return CheckpointState.from_json((found[-1] / "state.json").read_bytes()).events_applied

    first = _start_trainer(settings, model, topic, log)
    try:
        wait_until(lambda: b"assigned" in log.read_bytes(), 60, "trainer joined",
                   alive=lambda: first.poll() is None)
        producer.start()
        # kill it once a checkpoint exists and it has applied (and published) events past it
        wait_until(lambda: 0 < checkpointed() < published() < total, 90,
                   "trainer past a checkpoint", alive=lambda: first.poll() is None)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    at_kill, restored_from = published(), checkpointed()
    assert 0 < restored_from < at_kill < total  # events after the checkpoint are redone
    producer.join(timeout=60)
    sent = replayed[0]
    assert sent.events == total and sent.failed_messages == 0

    second = _start_trainer(settings, model, topic, log)
    try:
        wait_until(lambda: published() >= sent.events, 90, "restarted trainer caught up",
                   alive=lambda: second.poll() is None)
        second.send_signal(signal.SIGTERM)  # graceful: final checkpoint and publish, exit 0
        assert second.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
    rec = _version(redis_client, model)
    assert rec is not None
    assert rec.events_applied == sent.events
    assert int(rec.events_checksum) == sent.checksum
    assert checkpointed() == sent.events
    assert f"checksum {sent.checksum}" in log.read_text()


def test_hot_start_switches_policy_from_a_fixed64_trainer_checkpoint(
        stream_settings: Settings, topic: str, redis_client: redis.Redis) -> None:
    """A running fixed-dim model (fixed:32: this file's FIITED has D = 32), then a FIITED model
    started from its checkpoint: the new trainer holds the source's IDs within its budget, the
    source's network, and resumes at the source's Kafka offsets, so it applies only the events
    that came after them."""
    schema = open_dataset(SPEC).schema
    first = replay_dataset(stream_settings, SPEC, topic=topic, batch_events=100, id_prefix="a")
    source = StreamTrainer(stream_settings, TrainerConfig(
        model="hotfixed", policy="fixed:32", schema=schema, arch="dlrm", topic=topic,
        max_events=first.events))
    source.run()
    source_auc = source.learner.metrics.auc()
    then = replay_dataset(stream_settings, SPEC, topic=topic, batch_events=100, id_prefix="b")

    root = Path(stream_settings.trainer.checkpoint_dir) / "hotfixed"
    hot = StreamTrainer(stream_settings, TrainerConfig(
        model="hotfiited", policy=POLICY, schema=schema, arch="dlrm", topic=topic,
        max_events=then.events, hot_start=root))
    store = hot.policy.store
    assert store.index.num_entries == source.policy.store.index.num_entries > 1000
    assert store.used_bytes() <= store.budget_bytes()
    for name, value in source.net.state_dict().items():
        assert np.array_equal(hot.net.state_dict()[name].numpy(), value.numpy()), name
    assert sum(hot.applied.values()) == first.messages  # the source's offsets

    stats = hot.run()
    assert stats.events_applied == then.events  # only what came after the source's offsets
    assert stats.events_checksum == then.checksum
    # the same events again, now scored by a model that starts where the source ended
    assert hot.learner.metrics.auc() > source_auc + 0.02

    from storage.datasets.criteo import SCHEMA as CRITEO

    with pytest.raises(ValueError, match="checkpoint of schema 'synthetic'"):
        StreamTrainer(stream_settings, TrainerConfig(model="hotbad", policy=POLICY, schema=CRITEO,
                                                     topic=topic, hot_start=root))
    with pytest.raises(ValueError, match="no checkpoint to hot-start from"):
        StreamTrainer(stream_settings, TrainerConfig(model="hotbad", policy=POLICY, schema=schema,
                                                     topic=topic, hot_start=root.parent / "none"))


def test_a_background_publish_fenced_out_raises_on_the_training_thread(
        stream_settings: Settings, topic: str, redis_client: redis.Redis) -> None:
    """The zombie case with the Redis writes on the publishing thread: its commit is refused
    inside Redis, and the refusal reaches the training thread when the write is collected;
    the owner's version stays."""
    from services.trainer.lease import Fenced, ModelLease

    model = "stream-bg-fenced"
    sent = replay_dataset(stream_settings, SPEC, topic=topic, batch_events=100, limit=1000)
    trainer = _trainer(stream_settings.replace(trainer_publish_background=True), model, topic,
                       max_events=sent.events)
    trainer.run()  # ends with a publish that waits
    trainer.connect()
    try:
        redis_client.delete(wire.owner_key(model))
        usurper = ModelLease(redis_client, model, ttl_s=30)
        usurper.acquire()
        version = redis_client.get(wire.version_key(model))
        trainer._need_full = True  # something to publish without new events
        assert trainer.publish_in_background()
        in_flight = trainer.version
        with pytest.raises(Fenced):
            trainer.publish()  # collects the background write first ...
        assert trainer.version == in_flight  # ... and raises there, before a version of its own
        assert redis_client.get(wire.version_key(model)) == version
    finally:
        trainer.fenced = True  # as run() marks it: no lease release
        trainer.close()
    usurper.release()


def test_keeping_membership_during_a_publish_takes_no_event(
        stream_settings: Settings, topic: str) -> None:
    """keep_membership polls with the partitions paused (and seeks back what a partition
    assigned by that very poll returns): afterwards the loop's own polls still read every
    message once, from the first, in order."""
    sent = replay_dataset(stream_settings, SPEC, topic=topic, batch_events=100, limit=1000)
    trainer = _trainer(stream_settings, "stream-keep", topic, max_events=sent.events)
    trainer.connect()
    try:
        assert trainer.consumer is not None
        deadline = time.monotonic() + 60
        while not trainer.consumer.assignment():  # the join, through keep_membership only
            assert time.monotonic() < deadline, "no assignment"
            trainer._polled_at = 0.0  # due
            trainer.keep_membership()
        for _ in range(3):  # a fetch lands meanwhile: kept aside while paused
            trainer._polled_at = 0.0
            trainer.keep_membership()
        seen: dict[int, list[int]] = {}
        while sum(map(len, seen.values())) < sent.messages:
            assert time.monotonic() < deadline, seen
            for tp, msgs in trainer.consumer.poll(timeout_ms=200).items():
                seen.setdefault(tp.partition, []).extend(m.offset for m in msgs)
        assert all(offs == list(range(len(offs))) for offs in seen.values()), seen
    finally:
        trainer.close()
