"""Named arrays to one `.npz` file and back; the write is atomic, so a crash mid-write leaves
the previous file (or none), never half of one.

    write_npz(path, {"values": float32[N, D], "meta": uint8[M]})   # temp file, fsync, rename
    read_npz(path)  # -> {"values": ..., "meta": ...}, loaded into memory (the file is closed)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write `arrays` to `path`: a temp file beside it, fsync, rename over it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an `.npz` file, read into memory."""
    with np.load(Path(path)) as z:
        return {k: z[k] for k in z.files}
