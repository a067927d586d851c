"""Frappe app-usage logs in libFM format (the NFM / BARS `frappe_x1` files).

Each line is `label idx:1 idx:1 ...` with label 1 (app used) or -1 (sampled negative) and ten
one-hot features, one per field: user, item, daytime, weekday, isweekend, homework, cost,
weather, country, city. Feature indices are global: each field owns a contiguous index range,
in that field order, shared by the train / validation / test splits. Each row becomes

    labels    float32[B]      1 -> 1, -1 (or 0) -> 0
    ids       int64[B, 10]    the global feature index itself (no hashing), the k-th smallest
                              index of a line in field k, so a line may list them in any order
    unit_ids  int64[B]        the user feature index (ids[:, 0])

Note: index 0 is a real user (the first one), equal to MISSING_ID; Frappe has no missing
values, so nothing else ever reads as 0.

Several files (e.g. `frappe.validation.libfm,frappe.test.libfm`) are read one after another.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from storage.batch import DatasetSchema, SparseBatch, rebatch
from storage.datasets.textfile import LineBlock, TextFile

FIELDS = (
    "user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather",
    "country", "city",
)  # fmt: skip
SCHEMA = DatasetSchema("frappe", fields=FIELDS)
_NAMES = ("label", *(f"{kind}{k}" for k in range(len(FIELDS)) for kind in ("idx", "val")))
_DTYPE: dict[str, object] = {n: (np.int64 if n.startswith("idx") else np.float64) for n in _NAMES}
_TRAILING_SPACE = re.compile(rb"[ \t]+(?=\r?\n)")


class FrappeDataset:
    """Frappe libFM files as one stream of `SparseBatch`es (schema `frappe`: 10 fields).

    >>> ds = FrappeDataset(["frappe.validation.libfm", "frappe.test.libfm"])
    >>> next(ds.batches(512)).ids.shape
    (512, 10)
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], spec: str | None = None) -> None:
        if isinstance(paths, (str, Path)):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("FrappeDataset needs at least one path")
        self.spec = spec or "frappe:" + ",".join(str(p) for p in self.paths)
        self.schema = SCHEMA
        self._files = [TextFile(p, "frappe") for p in self.paths]

    def batches(self, batch_size: int) -> Iterator[SparseBatch]:
        """Rows of each file in order, `batch_size` at a time (the last may be shorter)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return rebatch(self._blocks(), batch_size)

    def _blocks(self) -> Iterator[SparseBatch]:
        for file in self._files:
            for block in file.blocks():
                yield _parse(block)

    def __repr__(self) -> str:
        return f"FrappeDataset({self.spec!r})"


def _parse(block: LineBlock) -> SparseBatch:
    if _TRAILING_SPACE.search(block.data):
        block = block.with_data(_TRAILING_SPACE.sub(b"", block.data))
    block.check_fields(" ", len(FIELDS), noun="features", offset=1)
    block.check_fields(":", len(FIELDS), noun="idx:value pairs", offset=1)
    frame = block.with_data(block.data.replace(b":", b" ")).read_csv(" ", _NAMES, _DTYPE)
    raw_labels = frame["label"].to_numpy()
    block.bad_rows(~np.isin(raw_labels, (1.0, -1.0, 0.0)), "label is not 1, -1 or 0")
    values = frame[[f"val{k}" for k in range(len(FIELDS))]].to_numpy()
    block.bad_rows((values != 1.0).any(axis=1), "a feature value is not 1 (one-hot expected)")
    ids = np.sort(frame[[f"idx{k}" for k in range(len(FIELDS))]].to_numpy(np.int64), axis=1)
    block.bad_rows((ids < 0).any(axis=1), "negative feature index")
    return SparseBatch(SCHEMA, labels=raw_labels > 0, ids=ids, unit_ids=ids[:, 0])
