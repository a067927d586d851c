"""The sharded trainer (`chunkrec train --workers 2`: services/trainer/sharded.py) on gloo against
the real tansu broker and redis-server: every event applied once over two ranks that read
disjoint partitions, one version in Redis that serving loads, and a second job refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis

from models.distributed.checkpoint import latest_complete
from services import wire
from services.serving.registry import build_loaded_model
from services.stack.replay import replay_dataset
from services.trainer.config import TrainerConfig
from services.trainer.lease import LeaseHeld, ModelLease
from services.trainer.sharded import my_partitions, run_sharded
from storage.datasets.spec import open_dataset
from storage.settings import Settings
from storage.vhpi.store import ChunkStore

SPEC = "synthetic:events=6000,fields=4,vocab=2000,seed=1"
POLICY = "fiited:dim=32,budget=0.3,interval=10"  # chunk widths 2-2-4-8-16


def _config(model: str, topic: str, max_events: int | None) -> TrainerConfig:
    return TrainerConfig(model=model, policy=POLICY, schema=open_dataset(SPEC).schema,
                         arch="dlrm", topic=topic, max_events=max_events)


def test_static_assignment() -> None:
    assert my_partitions([0, 1, 2, 3, 4], 0, 2) == [0, 2, 4]
    assert my_partitions([3, 1, 0, 2], 1, 2) == [1, 3]
    assert my_partitions([0, 1], 2, 3) == []


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
