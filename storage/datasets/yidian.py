"""Yidian Zixun (一点资讯) news-feed impressions, the CSV torch-rechub ships:

    ,userId,itemId,showTime,network,refresh,showPos,click,deviceName,OS,province,city,
    age0,age1,age2,age3,female,male

with an unnamed leading row index (dropped), `showTime` in epoch milliseconds, `click` 0/1,
province and city as UTF-8 Chinese text, and the user's age-bucket and gender probabilities.
A file may be gzip-compressed (`.gz`). Each row becomes

    labels      float32[B]     click
    ids         int64[B, 9]    hash_values of user, item, network, refresh, showPos,
                               deviceName, OS, province, city (as text)
    dense       float32[B, 6]  age0..age3, female, male (probabilities in [0, 1], missing -> 0)
    unit_ids    int64[B]       hash_values(userId), the user an A/B split hashes
    timestamps  int64[B]       showTime // 1000, epoch seconds

Rows come in file order (the published sample is grouped by user, not sorted by time).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage.batch import DatasetSchema, SparseBatch
from storage.datasets.textfile import BlockDataset, LineBlock, TextFile, hash_column

# (file column, field name): the file's camelCase names, kept recognisable
_CATEGORICAL = (
    ("userId", "user"), ("itemId", "item"), ("network", "network"), ("refresh", "refresh"),
    ("showPos", "show_pos"), ("deviceName", "device"), ("OS", "os"),
    ("province", "province"), ("city", "city"),
)  # fmt: skip
DENSE = ("age0", "age1", "age2", "age3", "female", "male")
FIELDS = tuple(name for _, name in _CATEGORICAL)
SCHEMA = DatasetSchema("yidian", fields=FIELDS, dense=DENSE)
_HEADER = (
    "", "userId", "itemId", "showTime", "network", "refresh", "showPos", "click",
    "deviceName", "OS", "province", "city", *DENSE,
)  # fmt: skip
_NAMES = ("row", *_HEADER[1:])
_DTYPE: dict[str, object] = {
    "click": np.float64, "showTime": np.int64, **dict.fromkeys(DENSE, np.float64),
    **{col: object for col, _ in _CATEGORICAL},
}  # fmt: skip


class YidianDataset(BlockDataset):
    """A Yidian CSV as a stream of `SparseBatch`es (schema `yidian`: 9 fields, 6 dense).

    >>> ds = YidianDataset("yidian_news_sampled.csv")
    >>> b = next(ds.batches(256)); b.ids.shape, b.dense.shape
    ((256, 9), (256, 6))
    """

    def __init__(self, path: str | Path, spec: str | None = None) -> None:
        self.path = Path(path)
        self.spec = spec or f"yidian:{path}"
        self.schema = SCHEMA
        self._file = TextFile(self.path, "yidian")
        head = tuple(h.strip() for h in self._file.first_line.split(","))
        if head != _HEADER:
            raise self._file.error(
                f"header is {','.join(head)[:80]!r}, expected "
                f"',userId,itemId,showTime,...,female,male' ({len(_HEADER)} columns)"
            )
        self._has_header = True

    def _parse(self, block: LineBlock) -> SparseBatch:
        block.check_fields(",", len(_NAMES))
        usecols = [c for c in _NAMES if c != "row"]
        frame = block.read_csv(",", _NAMES, _DTYPE, usecols=usecols)
        labels = frame["click"].to_numpy()
        block.bad_rows(~np.isin(labels, (0.0, 1.0)), "click is not 0 or 1")
        shown = frame["showTime"].to_numpy()
        block.bad_rows(shown < 0, "showTime is negative")
        dense = np.nan_to_num(frame[list(DENSE)].to_numpy(dtype=np.float64), nan=0.0)
        block.bad_rows(
            ~((dense >= 0.0) & (dense <= 1.0)).all(axis=1), "an age/gender value is not in [0, 1]"
        )
        ids = np.empty((len(frame), len(FIELDS)), np.int64)
        for j, (column, _) in enumerate(_CATEGORICAL):
            ids[:, j] = hash_column(frame[column])
        return SparseBatch(
            SCHEMA,
            labels=labels,
            ids=ids,
            dense=dense,
            unit_ids=ids[:, 0],
            timestamps=shown // 1000,
        )
