"""A chunk store's state as one `.npz` file and back, bit-exactly: the index, every pool's values
and optimizer state, the entry records and chunk links, the sketch, the counters and the
config.

    write_snapshot(path, Snapshot(config, counters, index, entries, sketch))  # atomic; CPU arrays
    snap = read_snapshot(path)    # the store rebuilds itself from it (ChunkStore.load)

Keys of the file: `index.*` (HashIndex.state), `pool{j}.*` and the entry arrays by name
(EntryTable.state), `sketch` (the admission sketch's table, when there is one) and `meta` (JSON:
the config and the counters). Arrays under other keys are kept by whoever added them and
ignored here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from storage.atomic_npz import read_npz, write_npz
from storage.vhpi.config import StoreConfig


@dataclass
class Snapshot:
    config: StoreConfig
    counters: dict[str, int]  # the store's step, epoch, ... by name
    index: dict[str, np.ndarray]  # the index's arrays (DeviceHashIndex.state)
    entries: dict[str, np.ndarray]  # EntryTable.state()
    sketch: np.ndarray | None  # FrequencySketch.table


def write_snapshot(path: Path, snap: Snapshot) -> None:
    """Write atomically: a temp file beside `path`, fsync, rename."""
    arrays = {f"index.{k}": v for k, v in snap.index.items()}
    arrays |= snap.entries
    if snap.sketch is not None:
        arrays["sketch"] = snap.sketch
    config = asdict(snap.config)
    config.pop("device")  # where a store ran is no part of its state: load picks the device
    meta = {"config": config} | snap.counters
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    write_npz(path, arrays)


def read_snapshot(path: Path, counters: tuple[str, ...]) -> Snapshot:
    """What `write_snapshot` wrote; `counters`: the names of the counters to read back."""
    arrays = read_npz(path)
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    index = {k[6:]: v for k, v in arrays.items() if k.startswith("index.")}
    # snapshots from before `tail_utilities` hold the utilities of chunks >= 2 in extension
    # records only: read them back in that layout
    meta["config"].setdefault("tail_utilities", "extension")
    # and from before one-byte utilities store them as float16: read them back that way (their
    # counts and `last` load as today's layout has them: EntryTable.load_state)
    meta["config"].setdefault("utility_code", "float16")
    return Snapshot(
        config=StoreConfig(**meta["config"]),
        counters={k: meta[k] for k in counters},
        index=index,
        entries=arrays,
        sketch=arrays.get("sketch"),
    )
