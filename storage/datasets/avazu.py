"""Avazu mobile-ads click logs (Kaggle 2014), CSV with or without a header.

Columns: `id,click,hour,C1,banner_pos,site_id,...,device_ip,device_model,...,C21` (24); Kaggle's
unlabeled test file lacks `click` (23 columns, read with label 0). The header, when present, is
detected from the first line; a file may be gzip-compressed (`.gz`). Each row becomes

    labels      float32[B]    click
    ids         int64[B, 22]  hash_values of each column except id and click, as text; the
                              `hour` field holds the hour of day (0..23), not the full YYMMDDHH
    unit_ids    int64[B]      the user, as the 3 Idiots' Avazu solution defines one:
                              hash_values("id:" + device_id), or, where device_id is the
                              anonymous value a99f214a (~87% of rows), hash_values("ip:" +
                              device_ip + "/" + device_model). device_ip alone merges the many
                              users behind one carrier NAT; device_id alone is mostly anonymous.
    timestamps  int64[B]      hour YYMMDDHH as epoch seconds, UTC

`id` is a 64-bit unsigned integer beyond int64; it is never parsed and is not a feature.
Values such as C20's -1 ("unknown" in Avazu's own coding) are kept as values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from storage.batch import DatasetSchema, SparseBatch
from storage.datasets.textfile import BlockDataset, LineBlock, TextFile, hash_column

_COLUMNS = (
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category",
    "app_id", "app_domain", "app_category", "device_id", "device_ip", "device_model",
    "device_type", "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
)  # fmt: skip
FIELDS = tuple(c for c in _COLUMNS if c not in ("id", "click"))
SCHEMA = DatasetSchema("avazu", fields=FIELDS)
_ANONYMOUS_DEVICE = "a99f214a"
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


class AvazuDataset(BlockDataset):
    """An Avazu CSV as a stream of `SparseBatch`es (schema `avazu`: 22 fields, no dense).

    >>> ds = AvazuDataset("train.csv")
    >>> b = next(ds.batches(1024)); b.ids.shape, b.timestamps[0]
    ((1024, 22), 1413849600)
    """

    def __init__(self, path: str | Path, spec: str | None = None) -> None:
        self.path = Path(path)
        self.spec = spec or f"avazu:{path}"
        self.schema = SCHEMA
        self._file = TextFile(self.path, "avazu")
        self._names, self._has_header = _detect(self._file)
        self.labeled = "click" in self._names

    def _parse(self, block: LineBlock) -> SparseBatch:
        block.check_fields(",", len(self._names))
        usecols = [c for c in self._names if c != "id"]
        dtype: dict[str, object] = dict.fromkeys(FIELDS, object)
        if self.labeled:
            dtype["click"] = np.float64
        frame = block.read_csv(",", self._names, dtype, usecols=usecols)
        n = len(frame)
        if self.labeled:
            labels = frame["click"].to_numpy()
            block.bad_rows(~np.isin(labels, (0.0, 1.0)), "click is not 0 or 1")
        else:
            labels = np.zeros(n)
        hour = frame["hour"]
        when = pd.to_datetime(hour, format="%y%m%d%H", errors="coerce", utc=True)
        bad = when.isna().to_numpy() | (hour.str.len() != 8).to_numpy(dtype=bool, na_value=True)
        block.bad_rows(bad, "hour is not YYMMDDHH")
        timestamps = ((when - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy(np.int64)

        ids = np.empty((n, len(FIELDS)), np.int64)
        for j, name in enumerate(FIELDS):
            column = when.dt.hour if name == "hour" else frame[name]
            ids[:, j] = hash_column(column.astype(str) if name == "hour" else column)
        device = frame["device_id"].fillna("")
        user = "ip:" + frame["device_ip"].fillna("") + "/" + frame["device_model"].fillna("")
        user = user.where(device == _ANONYMOUS_DEVICE, "id:" + device)
        return SparseBatch(
            SCHEMA, labels=labels, ids=ids, unit_ids=hash_column(user), timestamps=timestamps
        )


def _detect(file: TextFile) -> tuple[tuple[str, ...], bool]:
    """(column names as in the file, has_header) from the first line."""
    head = [h.strip() for h in file.first_line.split(",")]
    unlabeled = tuple(c for c in _COLUMNS if c != "click")
    if head[0].lower() == "id":
        lowered = tuple(h.lower() for h in head)
        for names in (_COLUMNS, unlabeled):
            if lowered == tuple(c.lower() for c in names):
                return names, True
        raise file.error(
            f"header has columns {','.join(head)[:80]!r}..., expected "
            f"{','.join(_COLUMNS[:4])},...,C21 (24 columns, or 23 without click)"
        )
    if len(head) == len(_COLUMNS):
        return _COLUMNS, False
    if len(head) == len(unlabeled):
        return unlabeled, False
    raise file.error(f"line 1 has {len(head)} fields, expected {len(_COLUMNS)}")
