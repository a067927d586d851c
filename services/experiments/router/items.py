"""The server-side item table: item id -> the item's raw feature values, loaded once at start
(CHUNKREC_ROUTER_ITEM_TABLE, a CSV or Parquet file). When one is loaded, /v1/rank takes item
features from it and never from the client.

    items.csv:  item,genre            table = ItemTable.load(Path("items.csv"))
                242,Comedy            table.features(["242"]) -> [{"item": "242",
                17,Drama                                           "genre": "Comedy"}]

Every column is a feature, `item` (the key) included, as the demo's candidates carry it
(services/stack/simulated_users.py); values are read as strings, the form the trainer hashes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from services import wire
from services.experiments.router.schemas import FEATURE_NAME, MAX_ITEM_CHARS

KEY = "item"


class ItemTableError(ValueError):
    """A table that cannot be used (the message says which file and why)."""


class ItemTable:
    def __init__(self, rows: dict[str, dict[str, str]]) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    @classmethod
    def load(cls, path: Path) -> ItemTable:
        try:
            frame = (pd.read_parquet(path) if path.suffix == ".parquet" else
                     pd.read_csv(path, dtype=str, keep_default_na=False))
        except (OSError, ValueError) as exc:
            raise ItemTableError(f"item table {path}: {exc}") from exc
        frame = frame.astype(str)
        if KEY not in frame.columns:
            raise ItemTableError(f"item table {path}: no {KEY!r} column")
        bad = [c for c in frame.columns if not FEATURE_NAME.fullmatch(str(c))]
        if bad:
            raise ItemTableError(f"item table {path}: column names {bad[:5]} are not "
                                 f"feature names ({FEATURE_NAME.pattern})")
        if frame[KEY].duplicated().any():
            dup = frame[KEY][frame[KEY].duplicated()].iloc[0]
            raise ItemTableError(f"item table {path}: item {dup!r} appears twice")
        # the same bounds a client's values get (schemas.py), checked once here
        if (frame[KEY].str.len() > MAX_ITEM_CHARS).any() or (frame[KEY] == "").any():
            raise ItemTableError(f"item table {path}: item ids must be 1..{MAX_ITEM_CHARS} "
                                 "chars")
        if len(frame) and frame.map(len).to_numpy().max() > wire.MAX_STRING_CHARS:
            raise ItemTableError(f"item table {path}: values longer than "
                                 f"{wire.MAX_STRING_CHARS} chars")
        rows = frame.to_dict("records")
        return cls({r[KEY]: r for r in rows})

    def unknown(self, items: list[str]) -> list[str]:
        return [i for i in items if i not in self._rows]

    def features(self, items: list[str]) -> list[dict[str, str]]:
        """The feature values of each item (KeyError for an item not in the table)."""
        return [self._rows[i] for i in items]
