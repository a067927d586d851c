"""Criteo display-ads logs (Kaggle DAC and Terabyte), in any of their common text layouts.

Formats, detected from the first line:

    tsv         raw `train.txt` / Terabyte `day_N`: `label \\t I1..I13 \\t C1..C26`, no header
    csv         header `label,I1..I13,C1..C26` (the usual pandas re-export)
    csv-plain   the same 40 comma-separated fields without a header
    kaggle-test header `Id,Label,I1..I13,C1..C26`: Kaggle's test file; `Id` is dropped, the
                dummy label is read as is (all 0)

Any of them may be gzip-compressed (`.gz`). Each row becomes

    labels  float32[B]       0 / 1
    dense   float32[B, 13]   log(1 + max(x, 0)) of I1..I13, missing -> 0 (the DLRM convention)
    ids     int64[B, 26]     hash_values(C1..C26 as text), missing -> MISSING_ID

Criteo has no user or time column: `unit_ids` and `timestamps` are None.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from storage.batch import DatasetSchema, SparseBatch
from storage.datasets.textfile import BlockDataset, LineBlock, TextFile, hash_column

DENSE = tuple(f"I{i}" for i in range(1, 14))
FIELDS = tuple(f"C{i}" for i in range(1, 27))
SCHEMA = DatasetSchema("criteo", fields=FIELDS, dense=DENSE)
_COLUMNS = ("label", *DENSE, *FIELDS)
_DTYPE: dict[str, object] = {"label": np.float64, **dict.fromkeys(DENSE, np.float64)}
_DTYPE |= dict.fromkeys(FIELDS, object)  # object parses faster than pandas 3 str


class CriteoDataset(BlockDataset):
    """A Criteo file as a stream of `SparseBatch`es (schema `criteo`: 26 fields, 13 dense).

    >>> ds = CriteoDataset("day_0.gz")
    >>> next(ds.batches(4096)).dense.shape
    (4096, 13)
    """

    def __init__(self, path: str | Path, spec: str | None = None) -> None:
        self.path = Path(path)
        self.spec = spec or f"criteo:{path}"
        self.schema = SCHEMA
        self._file = TextFile(self.path, "criteo")
        self.format, self._sep, self._names, self._has_header = _detect(self._file)

    def _parse(self, block: LineBlock) -> SparseBatch:
        block.check_fields(self._sep, len(self._names))
        frame = block.read_csv(self._sep, self._names, _DTYPE, usecols=_COLUMNS)
        labels = frame["label"].to_numpy()
        block.bad_rows(~np.isin(labels, (0.0, 1.0)), "label is not 0 or 1")
        dense = frame[list(DENSE)].to_numpy(dtype=np.float64)
        dense = np.log1p(np.clip(np.nan_to_num(dense, nan=0.0), 0.0, None))
        ids = np.empty((len(frame), len(FIELDS)), np.int64)
        for j, name in enumerate(FIELDS):
            ids[:, j] = hash_column(frame[name])
        return SparseBatch(SCHEMA, labels=labels, ids=ids, dense=dense)


def _detect(file: TextFile) -> tuple[str, str, tuple[str, ...], bool]:
    """(format, separator, column names as in the file, has_header) from the first line."""
    line = file.first_line
    if "\t" in line:
        got = line.count("\t") + 1
        if got != len(_COLUMNS):
            raise file.error(
                f"line 1 has {got} tab-separated fields, expected {len(_COLUMNS)} "
                "(label, I1..I13, C1..C26)"
            )
        return "tsv", "\t", _COLUMNS, False
    head = [h.strip().lower() for h in line.split(",")]
    want = [c.lower() for c in _COLUMNS]
    if head == want:
        return "csv", ",", _COLUMNS, True
    if head == ["id", *want]:
        return "kaggle-test", ",", ("Id", *_COLUMNS), True
    if len(head) == len(_COLUMNS) and _is_number(head[0]):
        return "csv-plain", ",", _COLUMNS, False
    raise file.error(
        f"unrecognised first line {line[:60]!r}: expected raw TSV (40 tab-separated fields) or "
        "a CSV header 'label,I1..I13,C1..C26' or 'Id,Label,I1..'"
    )


def _is_number(text: str) -> bool:
    return bool(pd.notna(pd.to_numeric(text, errors="coerce")))
