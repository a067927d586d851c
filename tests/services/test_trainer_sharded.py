"""The sharded trainer (`chunkrec train --workers 2`: services/trainer/sharded.py) on gloo against
the real tansu broker and redis-server: every event applied once over two ranks that read
disjoint partitions, one version in Redis that serving loads, a second job refused, and a
SIGKILL of either rank mid-stream followed by a restart applying every event exactly once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import redis

from models.distributed.checkpoint import latest_complete
from services import wire
from services.serving.registry import build_loaded_model
from services.stack.infra import wait_until
from services.stack.replay import ReplayStats, replay_dataset
from services.trainer.config import TrainerConfig
from services.trainer.lease import LeaseHeld, ModelLease
from services.trainer.sharded import (
    has_global_checkpoint,
    has_single_checkpoints,
    my_partitions,
)
from services.trainer.sharded_run import run_sharded
from storage.datasets.spec import open_dataset
from storage.settings import Settings
from storage.vhpi.store import ChunkStore

SPEC = "synthetic:events=6000,fields=4,vocab=2000,seed=1"
POLICY = "fiited:dim=32,budget=0.3,interval=10"  # chunk widths 2-2-4-8-16
ROOT = Path(__file__).resolve().parents[2]


def _config(model: str, topic: str, max_events: int | None) -> TrainerConfig:
    return TrainerConfig(model=model, policy=POLICY, schema=open_dataset(SPEC).schema,
                         arch="dlrm", topic=topic, max_events=max_events)


def test_static_assignment() -> None:
    assert my_partitions([0, 1, 2, 3, 4], 0, 2) == [0, 2, 4]
    assert my_partitions([3, 1, 0, 2], 1, 2) == [1, 3]
    assert my_partitions([0, 1], 2, 3) == []


def test_checkpoint_kinds_are_told_apart(tmp_path: Path) -> None:
    (tmp_path / "ckpt-00000001").mkdir()
    assert not has_single_checkpoints(tmp_path) and not has_global_checkpoint(tmp_path)
    (tmp_path / "ckpt-00000001" / "COMMIT").write_text("{}")
    assert has_global_checkpoint(tmp_path) and not has_single_checkpoints(tmp_path)
    (tmp_path / "ckpt-00000002").mkdir()
    (tmp_path / "ckpt-00000002" / "state.json").write_text("{}")
    assert has_single_checkpoints(tmp_path)


def test_two_ranks_apply_every_event_once_and_publish(stream_settings: Settings, topic: str,
                                                      redis_client: redis.Redis) -> None:
    sent = replay_dataset(stream_settings, SPEC, topic=topic, batch_events=100)
    assert sent.events == 6000 and sent.failed_messages == 0
    ranks = run_sharded(stream_settings, _config("shard2", topic, sent.events), workers=2,
                        timeout_s=300)

    # each rank read its own partition, both had events, and together every event once
    assert [sorted(r["offsets"]) for r in ranks] == [[f"{topic}:0"], [f"{topic}:1"]]
    assert all(r["events_applied"] > 0 for r in ranks)
    assert sum(r["events_applied"] for r in ranks) == sent.events
    checksum = 0
    for r in ranks:
        checksum = wire.add_checksums(checksum, r["events_checksum"])
    assert checksum == sent.checksum
    assert ranks[0]["steps"] == ranks[1]["steps"]  # lock-step

    rec = wire.ModelVersion.from_json(redis_client.get(wire.version_key("shard2")))
    assert rec.events_applied == sent.events and int(rec.events_checksum) == sent.checksum
    assert sum(rec.offsets.values()) == sent.messages
    assert rec.widths == [2, 2, 4, 8, 16] and rec.metrics["ranks"] == 2
    assert rec.metrics["rows"] == sent.events  # the job's rows, every rank's (not rank 0's)
    assert 0.0 <= rec.metrics["auc"] <= 1.0

    # the final checkpoint's shards are exactly what Redis holds under the version
    ckpt = latest_complete(Path(stream_settings.trainer.checkpoint_dir) / "shard2")
    assert ckpt is not None
    fields, keys, masks, values = [], [], [], []
    for r in range(2):
        store = ChunkStore.load(ckpt / f"shard-{r}.npz", device="cpu")
        f, k, m, v = store.export(store.live_slots())
        live = m != 0
        fields.append(f[live].astype(np.int64))
        keys.append(k[live])
        masks.append(m[live])
        values.append(v.numpy()[live])
    f, k = np.concatenate(fields), np.concatenate(keys)
    assert len(set(zip(f.tolist(), k.tolist(), strict=True))) == len(f)  # shards disjoint
    records = wire.read_current(redis_client, "shard2", f, k)
    got, found = wire.unpack_records(records, tuple(rec.widths), rec.dim)
    assert found.all()
    np.testing.assert_array_equal(wire.record_masks(records), np.concatenate(masks))
    np.testing.assert_array_equal(got[:, :np.concatenate(values).shape[1]],
                                  np.concatenate(values))
    stored = sum(redis_client.hlen(key) - 1 for key in
                 wire.current_bucket_keys(redis_client, "shard2"))
    assert stored == len(f) == rec.redis_embedding_records
    assert rec.redis_embedding_bytes == sum(len(x) for x in records)

    # serving loads the version and scores with it
    loaded = build_loaded_model(rec, redis_client.get(rec.dense_key),
                                redis_client.get(rec.manifest_key), cache_entries=100)
    emb = np.zeros((3, len(rec.fields), rec.dim), np.float32)
    emb[:, :, :got.shape[1]] = got[:3 * len(rec.fields)].reshape(3, len(rec.fields), -1)
    p = loaded.predict(emb, None)
    assert p.shape == (3,) and np.isfinite(p).all()

    # 2 -> 1 rank: the one rank takes both partitions' offsets and both ranks' counters, so
    # it resumes where the two stopped (nothing to apply again) and publishes the next version
    one = run_sharded(stream_settings, _config("shard2", topic, sent.events), workers=1,
                      timeout_s=300)
    assert sorted(one[0]["offsets"]) == [f"{topic}:0", f"{topic}:1"]
    assert sum(one[0]["offsets"].values()) == sent.messages
    assert one[0]["events_applied"] == sent.events
    assert one[0]["events_checksum"] == sent.checksum
    again = wire.ModelVersion.from_json(redis_client.get(wire.version_key("shard2")))
    assert again.version > rec.version and again.events_applied == sent.events
    assert again.redis_embedding_records == rec.redis_embedding_records


def test_second_job_for_the_model_is_refused(stream_settings: Settings, topic: str,
                                             redis_client: redis.Redis) -> None:
    owner = ModelLease(redis_client, "shardheld", ttl_s=120)  # another trainer, alive
    owner.acquire()
    try:
        settings = stream_settings.replace(trainer_lease_ttl_s=0.5)
        with pytest.raises(LeaseHeld, match="trained by another process"):
            run_sharded(settings, _config("shardheld", topic, 10), workers=2, timeout_s=300)
        assert redis_client.get(wire.version_key("shardheld")) is None  # it wrote nothing
    finally:
        owner.release()


def _start_job(settings: Settings, topic: str, log: Path, max_events: int | None = None
               ) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "services.cli", "train", "--model", "shardkill", "--policy",
           POLICY, "--data", SPEC, "--topic", topic, "--workers", "2"]
    if max_events is not None:
        cmd += ["--max-events", str(max_events)]
    return subprocess.Popen(cmd, env=dict(os.environ) | settings.to_env(), cwd=ROOT,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)


@pytest.mark.slow
def test_sigkill_of_either_rank_loses_nothing_and_applies_nothing_twice(
        stream_settings: Settings, topic: str, redis_client: redis.Redis,
        tmp_path: Path) -> None:
    settings = stream_settings.replace(checkpoint_every_events=1000, checkpoint_interval_s=1.0)
    root = Path(settings.trainer.checkpoint_dir) / "shardkill"
    replayed: list[ReplayStats] = []
    stop = threading.Event()

    def produce() -> None:  # rounds of SPEC (own event ids) until the kills are done, so each
        while not stop.is_set():  # job finds events to apply however slowly it starts
            replayed.append(replay_dataset(settings, SPEC, topic=topic, batch_events=100,
                                           rate=250, id_prefix=f"round{len(replayed)}"))

    producer = threading.Thread(target=produce)
    producer.start()
    rng = random.Random(3)
    for k, victim in enumerate((1, 0)):  # a SIGKILL of rank 1, then of rank 0
        seen = latest_complete(root)
        job = _start_job(settings, topic, tmp_path / f"job-{k}.log")
        try:  # a new checkpoint of this job (it applied events), then a random moment
            wait_until(lambda seen=seen: latest_complete(root) not in (None, seen), 180,
                       f"job {k} checkpointed", alive=lambda job=job: job.poll() is None)
            kill_at = time.monotonic() + rng.uniform(0.2, 2.0)
            wait_until(lambda kill_at=kill_at: time.monotonic() >= kill_at, 10, "kill time",
                       alive=lambda job=job: job.poll() is None)
            ranks = sorted(psutil.Process(job.pid).children(), key=lambda p: p.pid)
            ranks = [p for p in ranks if "spawn_main" in " ".join(p.cmdline())]
            assert len(ranks) == 2
            os.kill(ranks[victim].pid, signal.SIGKILL)  # spawned in rank order
            assert job.wait(timeout=60) != 0  # the launcher stopped the other rank, and failed
        finally:
            if job.poll() is None:
                job.kill()
                job.wait(timeout=30)
    stop.set()
    producer.join()
    assert sum(r.failed_messages for r in replayed) == 0
    events = sum(r.events for r in replayed)
    sent_checksum = 0
    for r in replayed:
        sent_checksum = wire.add_checksums(sent_checksum, r.checksum)
    final = _start_job(settings, topic, tmp_path / "final.log", max_events=events)
    try:
        assert final.wait(timeout=300) == 0, (tmp_path / "final.log").read_text()[-3000:]
    finally:
        if final.poll() is None:
            final.kill()
    rec = wire.ModelVersion.from_json(redis_client.get(wire.version_key("shardkill")))
    assert rec.events_applied == events and int(rec.events_checksum) == sent_checksum
    ckpt = latest_complete(root)
    assert ckpt is not None
    extras = [json.loads((ckpt / f"rank-{r}.json").read_text()) for r in range(2)]
    assert sum(e["events_applied"] for e in extras) == events
    checksum = 0
    for e in extras:
        checksum = wire.add_checksums(checksum, int(e["events_checksum"]))
    assert checksum == sent_checksum
