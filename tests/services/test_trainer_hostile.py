"""The trainer against hostile input, on the real broker and Redis: no message of any size or
content stops it (dead letters always fit a Kafka message), a second trainer of a model is
fenced out, and its memory and checkpoints stay bounded as the stream grows."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from services import wire
from services.stack.infra import ManagedProcess, wait_until
from services.trainer.lease import Fenced, ModelLease
from services.trainer.loop import StreamTrainer, TrainerConfig
from storage.datasets.spec import open_dataset
from storage.settings import Settings
from tests.services.conftest import stream_env

ROOT = Path(__file__).resolve().parents[2]

SPEC = "synthetic:events=2000,fields=3,vocab=500,seed=3"
POLICY = "fiited:dim=16,budget=0.5,interval=10"


def _trainer(settings: Settings, model: str, topic: str, max_events: int | None = None,
             idle_exit_s: float | None = None) -> StreamTrainer:
    schema = open_dataset(SPEC).schema
    return StreamTrainer(settings, TrainerConfig(model=model, policy=POLICY, schema=schema,
                                                 topic=topic, max_events=max_events,
                                                 idle_exit_s=idle_exit_s))


def _events(n: int, prefix: str) -> list[dict[str, object]]:
    batch = next(open_dataset(SPEC).batches(n))
    return wire.batch_to_events(batch, [f"{prefix}:{i}" for i in range(n)])


def _dead_letters(bootstrap: str, topic: str, want: int) -> list[tuple[int, dict]]:
    """(size of the record, parsed record) of the dead letters from `topic`, polled until
    `want` arrived or 30 s passed."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20)
    tp = TopicPartition(wire.DLQ_TOPIC, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got: list[tuple[int, dict]] = []
    deadline = time.monotonic() + 30
    while len(got) < want and time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=500).values():
            got += [(len(m.value), d) for m in msgs
                    if (d := wire.parse_dlq_record(m.value))["topic"] == topic]
    consumer.close()
    return got


def test_huge_invalid_messages_are_dead_lettered_and_training_goes_on(
        stream_settings: Settings, topic: str, broker: ManagedProcess) -> None:
    """Review finding: an event whose unit_id is 300,000 '"' characters (0.6 MB) escapes to a
    1.2 MB dead letter; KafkaProducer.send raised MessageSizeTooLargeError inside ingest and the
    trainer died, then re-read it on every restart. Same for 1-4 MB malformed messages."""
    good = _events(300, "good")
    quoted = dict(good[0], event_id="quotes", unit_id='"' * 300_000)
    messages = [
        wire.encode_events(good[:100]),
        wire.encode_events([quoted]),  # valid JSON, one invalid event of ~0.6 MB
        b"\x01" * (3 << 20),  # 3 MB of control characters: 18 MB once JSON-escaped
        ("\u00e9" * (1 << 20)).encode(),  # 2 MB of two-byte UTF-8, not JSON
        wire.encode_events(good[100:]),
    ]
    prod = KafkaProducer(bootstrap_servers=broker.address, max_request_size=8 << 20)
    for value in messages:
        prod.send(topic, value, partition=0)
    prod.flush()
    prod.close()

    trainer = _trainer(stream_settings, "hostile-dlq", topic, max_events=300)
    stats = trainer.run()
    assert stats.events_applied == 300
    assert stats.events_checksum == wire.event_id_checksum([str(e["event_id"]) for e in good])
    assert stats.events_invalid == 3 and stats.dead_letters_lost == 0

    letters = {d["offset"]: (size, d) for size, d in
               _dead_letters(broker.address, topic, want=3)}
    assert sorted(letters) == [1, 2, 3]
    for offset, (size, d) in letters.items():
        assert size <= wire.DLQ_RECORD_MAX_BYTES < 1 << 20
        assert d["truncated"] is True
        assert len(d["original"]) <= wire.MAX_DLQ_ORIGINAL_BYTES
        original = orjson.dumps(quoted) if offset == 1 else messages[offset]
        assert d["original_bytes"] == len(original)
        assert d["original_sha256"] == hashlib.sha256(original).hexdigest()
        assert original.startswith(d["original"])
    assert "unit_id" in letters[1][1]["reason"]
    assert letters[2][1]["reason"].startswith("message: not JSON")


def test_checkpoints_do_not_grow_with_the_stream(stream_settings: Settings, topic: str,
                                                 broker: ManagedProcess) -> None:
    """Review finding: StreamMetrics kept every prediction (8 bytes an event, in memory and in
    every checkpoint). Now the trainer keeps `metrics_window` rows and histograms."""
    settings = stream_settings.replace(metrics_window=200, trainer_max_poll_records=2)
    events = _events(2000, "grow")
    prod = KafkaProducer(bootstrap_servers=broker.address)
    for a in range(0, 2000, 100):
        prod.send(topic, wire.encode_events(events[a:a + 100]), partition=0)
    prod.flush()
    prod.close()
    sizes = []
    for upto in (600, 2000):
        trainer = _trainer(settings, "hostile-grow", topic, max_events=upto)
        stats = trainer.run()
        assert upto <= stats.events_applied <= upto + 200  # whole messages: may overshoot
        assert len(trainer.learner.metrics) == stats.events_applied
        assert trainer.learner.metrics.predictions.shape[0] <= 2 * 200
        ckpt = sorted((settings.trainer.checkpoint_dir / "hostile-grow").glob("ckpt-*"))[-1]
        sizes.append((ckpt / "metrics.npz").stat().st_size)
        record = trainer.version_record()
        assert record.metrics["rows"] == stats.events_applied
        assert record.metrics["window_rows"] == 200
        assert record.metrics["auc"] is not None and record.metrics["window_auc"] is not None
    assert sizes[0] == sizes[1]


def test_one_trainer_per_model_second_refused_zombie_fenced(
        stream_settings: Settings, topic: str, broker: ManagedProcess,
        redis_client: redis.Redis, tmp_path: Path) -> None:
    """Review finding: a second `chunkrec train --model M` joined the group, took partitions
    and its full republish deleted every key it did not write. Now the model has one owner."""
    model = "hostile-lease"
    prod = KafkaProducer(bootstrap_servers=broker.address)
    prod.send(topic, wire.encode_events(_events(500, "lease")), partition=0)
    prod.flush()
    prod.close()
    owner = _trainer(stream_settings, model, topic, idle_exit_s=60)
    done: dict[str, BaseException | None] = {}

    def run() -> None:
        try:
            owner.run()
            done["error"] = None
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            done["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    def published_all() -> bool:
        blob = redis_client.get(wire.version_key(model))
        return blob is not None and wire.ModelVersion.from_json(blob).events_applied == 500

    wait_until(published_all, 60, "the owner's version of 500 events", alive=thread.is_alive)
    keys_before = set(redis_client.scan_iter(match=wire.bucket_pattern(model)))
    assert keys_before

    # a second trainer process of the model: refused at start, one line, exit code 2
    env = dict(os.environ) | stream_env(stream_settings) | {
        "CHUNKREC_TRAINER_LEASE_TTL_S": "1", "CHUNKREC_CHECKPOINT_DIR": str(tmp_path / "b")}
    t0 = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "services.cli", "train", "--model", model, "--policy", POLICY,
         "--data", SPEC, "--topic", topic], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=60)
    assert second.returncode == 2, second.stderr[-2000:]
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model 'hostile-lease' is trained by another process"), last
    assert time.monotonic() - t0 < 30
    assert set(redis_client.scan_iter(match=wire.bucket_pattern(model))) == keys_before
    assert thread.is_alive()  # the owner was not disturbed

    # a zombie: the owner's lease lapses (as if paused past it) and another trainer takes the
    # model; the old owner's next write is refused inside Redis and it stops, writing nothing
    redis_client.delete(wire.owner_key(model))
    usurper = ModelLease(redis_client, model, ttl_s=30)
    token = usurper.acquire()
    assert token > (owner.lease.token or 0)
    checkpoints = sorted((stream_settings.trainer.checkpoint_dir / model).glob("ckpt-*"))
    version = redis_client.get(wire.version_key(model))
    owner.stop()  # its final checkpoint and publish must be refused
    thread.join(timeout=60)
    assert isinstance(done["error"], Fenced) and owner.fenced
    assert sorted((stream_settings.trainer.checkpoint_dir / model).glob("ckpt-*")) == checkpoints
    assert redis_client.get(wire.version_key(model)) == version
    assert redis_client.get(wire.owner_key(model)) == usurper.me.encode()
    usurper.release()


def test_a_corrupt_version_record_is_replaced_not_fatal(
        stream_settings: Settings, topic: str, broker: ManagedProcess,
        redis_client: redis.Redis) -> None:
    """Anything in Redis under the model's version key: the trainer's publish reads it to keep
    versions increasing; a record that does not parse is replaced by a full republish."""
    model = "hostile-version"
    prod = KafkaProducer(bootstrap_servers=broker.address)
    prod.send(topic, wire.encode_events(_events(300, "ver")), partition=0)
    prod.flush()
    prod.close()
    for junk in (b"{not json", b'{"version": "x"}', b"[1, 2]", b'"\\u0000"'):
        redis_client.set(wire.version_key(model), junk)
        trainer = _trainer(stream_settings, model, topic, max_events=300)
        stats = trainer.run()
        assert stats.events_applied == 300 and stats.versions_published >= 1
        rec = wire.ModelVersion.from_json(redis_client.get(wire.version_key(model)))
        assert rec.events_applied == 300 and rec.version >= 1
