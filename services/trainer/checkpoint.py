"""Trainer checkpoints: the embedding store, the network and its optimizer, the online metrics
and the Kafka offsets, written together and atomically.

Layout under `root` (one root per model):

    ckpt-00000007/
        policy.bin      policy.save(): the VHPI store (or the policy's own format)
        dense.pt        torch.save({"model": state_dict, "optimizer": state_dict})
        metrics.npz     StreamMetrics.state(): the newest predictions and labels (the trainer
                        keeps `metrics_window` of them), running sums, score histograms
        state.json      CheckpointState: events_applied, checksum, offsets, version, ...

A checkpoint is written into a temporary folder beside the others, every file fsynced, then
renamed to its final name (a rename is atomic) and the parent folder fsynced; a crash leaves
either the whole new checkpoint or none of it (plus a `.tmp-*` folder the next write removes).
The newest `keep` checkpoints stay; older ones are deleted after the new one is in place.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from models.metrics import StreamMetrics
from models.policy import EmbeddingPolicy
from storage.atomic_npz import write_npz

_NAME = re.compile(r"^ckpt-(\d{8})$")


@dataclass
class CheckpointState:
    """What state.json holds. `offsets` maps "topic:partition" to the next offset to read:
    every event before it has been applied, none after it."""

    model: str
    policy: str
    arch: str
    schema: str
    events_applied: int
    events_checksum: int  # sum of wire.event_id_hashes of the applied events, mod 2^64
    events_invalid: int
    offsets: dict[str, int]
    version: int  # the last model version published before this checkpoint
    rows_trained: int = 0
    batches_trained: int = 0
    created_at: float = field(default_factory=time.time)
    seq: int = 0

    def to_json(self) -> bytes:
        d = asdict(self)
        d["events_checksum"] = str(self.events_checksum)  # uint64 does not fit JSON numbers
        return orjson.dumps(d)

    @classmethod
    def from_json(cls, blob: bytes) -> CheckpointState:
        d = orjson.loads(blob)
        d["events_checksum"] = int(d["events_checksum"])
        return cls(**d)


@dataclass
class Restored:
    state: CheckpointState
    path: Path


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def write_checkpoint(root: Path, state: CheckpointState, policy: EmbeddingPolicy,
                     model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     metrics: StreamMetrics, keep: int = 2) -> Path:
    """Write one checkpoint atomically (see module docstring); returns its folder."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    existing = list_checkpoints(root)
    seq = int(_NAME.match(existing[-1].name).group(1)) + 1 if existing else 1  # type: ignore[union-attr]
    state.seq = seq
    state.created_at = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    policy.save(tmp / "policy.bin")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
               tmp / "dense.pt")
    write_npz(tmp / "metrics.npz", metrics.state())
    (tmp / "state.json").write_bytes(state.to_json())
    for f in tmp.iterdir():
        _fsync_file(f)
    _fsync_dir(tmp)
    final = root / f"ckpt-{seq:08d}"
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest(root: Path, policy: EmbeddingPolicy, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer, metrics_retain: int | None = None,
                ) -> tuple[Restored, StreamMetrics] | None:
    """Restore the newest checkpoint into `policy`, `model` and `optimizer` (in place);
    returns its state and the restored metrics (keeping `metrics_retain` rows, default what
    was saved), or None when there is none."""
    found = list_checkpoints(root)
    if not found:
        return None
    path = found[-1]
    state = CheckpointState.from_json((path / "state.json").read_bytes())
    policy.load(path / "policy.bin")
    dense: dict[str, Any] = torch.load(path / "dense.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(dense["model"])
    optimizer.load_state_dict(dense["optimizer"])
    with np.load(path / "metrics.npz") as z:
        metrics = StreamMetrics.from_state(z, retain=metrics_retain)
    return Restored(state, path), metrics
