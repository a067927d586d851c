"""Global checkpoints of a sharded model, and restoring them into another number of ranks.

    save_global(root / "ckpt-000120", learner, extra={"offsets": {...}})   # every rank
    path = latest_complete(root)                 # None, or the newest committed checkpoint
    load_global(path, learner)                   # every rank of the new job, any world size

A checkpoint is a folder: `shard-R.npz` per rank (its store, ChunkStore.save: atomic, exact),
`dense.pt` once (rank 0: the network's and the dense optimizer's state), `rank-R.json` per rank
(what the caller passes as `extra`, e.g. its partitions' offsets), and `COMMIT` written last by
rank 0 after a barrier: a folder without it is incomplete and is never restored.

Restoring into the same number of ranks loads each shard as it was (bit-exact: values,
optimizer state, utilities, counters). Into another number M, every new rank reads every old
shard and imports the entries it owns under M (`owner_of`): their stored values, access counts,
live-chunk prefixes and utilities; their Adagrad state starts fresh. Embedding lookups, and so
the predictions, are the same before and after.

Why not torch.distributed.checkpoint: it reshards tensors by their row ranges (DTensor /
ShardedTensor offsets); a hash-sharded store is a variable set of (field, key) entries whose
owner is a hash, so re-homing means reading every entry anyway, and the store already writes
an exact, atomic, device-independent snapshot of itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from models.distributed.learner import DistributedLearner
from models.distributed.sharding import owner_of
from storage.vhpi.store import ChunkStore

COMMIT = "COMMIT"


def save_global(path: Path, learner: DistributedLearner, extra: dict[str, Any] | None = None
                ) -> None:
    """Every rank calls it at the same step (a collective); see module docstring."""
    group = learner.group
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    learner.policy.save(path / f"shard-{group.rank}.npz")
    _write_json(path / f"rank-{group.rank}.json", extra or {})
    if group.rank == 0:
        torch.save({"model": learner.net.state_dict(),
                    "optimizer": learner.optimizer.state_dict(),
                    "steps": learner.steps}, path / "dense.pt")
    dist.barrier(group=group.group)
    if group.rank == 0:  # last: only now is every part on disk
        _write_json(path / COMMIT, {"world": group.world, "steps": learner.steps})
    dist.barrier(group=group.group)


def latest_complete(root: Path) -> Path | None:
    """The newest `ckpt-*` folder under root with a COMMIT marker."""
    done = sorted(p for p in Path(root).glob("ckpt-*") if (p / COMMIT).exists())
    return done[-1] if done else None


def load_global(path: Path, learner: DistributedLearner) -> list[dict[str, Any]]:
    """Restore a committed checkpoint into this job (any world size); every rank calls it.
    Returns every old rank's `extra`, so the caller can re-assign what they carried."""
    path = Path(path)
    meta = json.loads((path / COMMIT).read_text())
    old_world = int(meta["world"])
    group = learner.group
    policy = learner.policy
    if old_world == group.world:
        policy.load(path / f"shard-{group.rank}.npz")
    else:
        _reshard(policy.store, [path / f"shard-{r}.npz" for r in range(old_world)],
                 group.rank, group.world)
    dense = torch.load(path / "dense.pt", map_location=learner.device, weights_only=False)
    learner.net.load_state_dict(dense["model"])
    learner.optimizer.load_state_dict(dense["optimizer"])
    learner.steps = int(dense["steps"])
    return [json.loads((path / f"rank-{r}.json").read_text()) for r in range(old_world)]


def _reshard(store: ChunkStore, shards: list[Path], rank: int, world: int) -> None:
    """Import the entries this rank owns under `world` from every old shard's save."""
    for shard in shards:
        src = ChunkStore.load(shard, device="cpu")
        slots = src.live_slots()
        fields, keys = src.index.fields[slots], src.index.keys[slots]
        mine = torch.nonzero(owner_of(fields, keys, world) == rank).squeeze(1)
        slots, fields, keys = slots[mine], fields[mine], keys[mine]
        if slots.numel() == 0:
            continue
        live = (src.addresses(slots) >= 0).sum(dim=1)
        new = store.import_entries(fields, keys, src.counts(slots), src.gather(slots))
        store.resize(new, live)  # only their live prefix (none if they had none)
        if store.tracks_utility:
            store.seed_utilities(new, src.utilities(slots))
        store.step = max(store.step, src.step)
        store.util_origin = store.step if store.tracks_utility else store.util_origin


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)

