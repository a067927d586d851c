"""A chunk store to one .npz file and back, bit-exactly: the index, every pool's values and
optimizer state, the entry and extension records, the sketch, the counters and the config."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from storage.vhpi.config import StoreConfig
from storage.vhpi.hash_index import HashIndex

if TYPE_CHECKING:
    from storage.vhpi.store import ChunkStore


def save_store(store: ChunkStore, path: Path) -> None:
    """Write atomically: a temp file beside `path`, fsync, rename."""
    arrays = {f"index.{k}": v for k, v in store.index.state().items()}
    for j, pool in enumerate(store.pools):
        arrays |= {f"pool{j}.{k}": v for k, v in pool.state_dict().items()}
    arrays |= {name: getattr(store, name) for name in store._ARRAYS}
    if store.sketch is not None:
        arrays["sketch"] = store.sketch.table
    meta = {"config": asdict(store.config)} | {k: getattr(store, k) for k in store._COUNTERS}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_store(cls: type[ChunkStore], path: Path) -> ChunkStore:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    store = cls(StoreConfig(**meta["config"]))
    store.index = HashIndex.from_state(
        {k[6:]: v for k, v in arrays.items() if k.startswith("index.")}
    )
    for j, pool in enumerate(store.pools):
        prefix = f"pool{j}."
        pool.load_state_dict(
            {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        )
    for name in store._ARRAYS:
        setattr(store, name, np.array(arrays[name]))
    if store.sketch is not None:
        store.sketch.table = np.array(arrays["sketch"])
    for key in store._COUNTERS:
        setattr(store, key, meta[key])
    return store
