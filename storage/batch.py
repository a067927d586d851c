"""The one batch type for sparse CTR data, made by the readers and consumed by every layer.

A `SparseBatch` holds B rows of a data set described by a `DatasetSchema`:

    labels     float32[B]        0.0 / 1.0
    ids        int64[B, F]       one categorical ID per field (raw values mapped to int64)
    dense      float32[B, Dn]    optional numeric features (None when the schema has none)
    unit_ids   int64[B]          optional unit (user) id, what an A/B split hashes
    timestamps int64[B]          optional event time, seconds since the epoch

Example:
    >>> s = DatasetSchema("toy", fields=("user", "item"))
    >>> b = SparseBatch(s, labels=np.array([1.0], np.float32), ids=np.array([[7, 9]]))
    >>> b.ids.shape
    (1, 2)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# A fixed key makes the value -> ID mapping identical across processes and machines
# (pandas requires exactly 16 bytes).
_HASH_KEY = "chunkrec-ids-v01"
MISSING_ID = 0  # a missing categorical value is its own ID in every field


@dataclass(frozen=True)
class DatasetSchema:
    """Field names and counts of a data set: `fields` are categorical, `dense` numeric."""

    name: str
    fields: tuple[str, ...]
    dense: tuple[str, ...] = ()

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    @property
    def num_dense(self) -> int:
        return len(self.dense)


@dataclass
class SparseBatch:
    schema: DatasetSchema
    labels: np.ndarray
    ids: np.ndarray
    dense: np.ndarray | None = None
    unit_ids: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.ascontiguousarray(self.labels, dtype=np.float32)
        self.ids = np.ascontiguousarray(self.ids, dtype=np.int64)
        n = self.labels.shape[0]
        if self.ids.shape != (n, self.schema.num_fields):
            raise ValueError(
                f"ids has shape {self.ids.shape}, expected ({n}, {self.schema.num_fields})"
            )
        if self.dense is not None:
            self.dense = np.ascontiguousarray(self.dense, dtype=np.float32)
            if self.dense.shape != (n, self.schema.num_dense):
                raise ValueError(
                    f"dense has shape {self.dense.shape}, expected ({n}, {self.schema.num_dense})"
                )
        elif self.schema.num_dense:
            raise ValueError(f"schema {self.schema.name} has dense features but dense is None")
        for name in ("unit_ids", "timestamps"):
            arr = getattr(self, name)
            if arr is not None:
                arr = np.ascontiguousarray(arr, dtype=np.int64)
                if arr.shape != (n,):
                    raise ValueError(f"{name} has shape {arr.shape}, expected ({n},)")
                setattr(self, name, arr)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, index: np.ndarray | slice) -> SparseBatch:
        """Rows selected by a slice, a boolean mask or an index array."""

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return SparseBatch(
            self.schema,
            labels=self.labels[index],
            ids=self.ids[index],
            dense=pick(self.dense),
            unit_ids=pick(self.unit_ids),
            timestamps=pick(self.timestamps),
            extras={k: v[index] for k, v in self.extras.items()},
        )

    @staticmethod
    def concat(batches: list[SparseBatch]) -> SparseBatch:
        first = batches[0]

        def cat(name: str) -> np.ndarray | None:
            parts = [getattr(b, name) for b in batches]
            return None if parts[0] is None else np.concatenate(parts)

        return SparseBatch(
            first.schema,
            labels=cat("labels"),
            ids=cat("ids"),
            dense=cat("dense"),
            unit_ids=cat("unit_ids"),
            timestamps=cat("timestamps"),
            extras={k: np.concatenate([b.extras[k] for b in batches]) for k in first.extras},
        )


def rebatch(batches: Iterable[SparseBatch], batch_size: int) -> Iterator[SparseBatch]:
    """Re-cut a stream of batches of any sizes into batches of exactly `batch_size` rows
    (the last one may be shorter)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pending: list[SparseBatch] = []
    have = 0
    for b in batches:
        if len(b) == 0:
            continue
        pending.append(b)
        have += len(b)
        while have >= batch_size:
            joined = SparseBatch.concat(pending) if len(pending) > 1 else pending[0]
            yield joined.take(slice(0, batch_size))
            rest = joined.take(slice(batch_size, None))
            pending = [rest] if len(rest) else []
            have = len(rest)
    if have:
        yield SparseBatch.concat(pending) if len(pending) > 1 else pending[0]


def first_rows(batches: Iterable[SparseBatch], max_rows: int | None) -> Iterator[SparseBatch]:
    """The batches up to `max_rows` rows in all (None: every one), the last cut short."""
    seen = 0
    for batch in batches:
        if max_rows is not None:
            room = max_rows - seen
            if room <= 0:
                return
            if len(batch) > room:
                batch = batch.take(slice(0, room))
        yield batch
        seen += len(batch)


def hash_values(values: np.ndarray | pd.Series) -> np.ndarray:
    """Map raw categorical values (strings or numbers) to int64 IDs, vectorised and stable
    across processes. Missing values (None, NaN, empty string) map to MISSING_ID.

    hash_values(object[N]) -> int64[N]
    """
    s = pd.Series(values, copy=False)
    missing = s.isna().to_numpy().copy()  # to_numpy() may be a read-only view
    if s.dtype == object or isinstance(s.dtype, pd.StringDtype):
        missing |= (s == "").to_numpy(dtype=bool, na_value=False)
    text = s.astype(str).to_numpy(dtype=object)
    out = pd.util.hash_array(text, hash_key=_HASH_KEY, categorize=True).view(np.int64)
    out = out.copy()
    out[out == MISSING_ID] = 1  # keep MISSING_ID reserved
    out[missing] = MISSING_ID
    return out


def hash_raw(values: Sequence[str | int]) -> np.ndarray:
    """Raw feature values as events and scoring requests carry them (a str, or an int that
    hashes as its decimal string, so 196 and "196" are one ID) -> int64[N] IDs: `hash_values`
    of their string forms, in one vectorised call.

    hash_raw(["196", 196, "alice"]) -> int64[3] (the first two equal)
    """
    return hash_values(np.array([v if type(v) is str else str(v) for v in values],
                                dtype=object))
