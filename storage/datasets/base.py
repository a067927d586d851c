"""What every data-set reader is: the `Dataset` interface and the one error they raise. The
readers (criteo.py, avazu.py, ..., table.py for the user's own CSV / Parquet) implement it;
the registry (spec.py) opens one by spec string. This module imports neither.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from storage.batch import DatasetSchema, SparseBatch


class DatasetError(ValueError):
    """A data set that cannot be opened or read; str() is one line naming file and problem."""


class Dataset(Protocol):
    schema: DatasetSchema
    spec: str

    def batches(self, batch_size: int) -> Iterator[SparseBatch]:
        """Stream the data set in order, in batches of exactly `batch_size` rows (the last one
        may be shorter), holding no more than a few batches in memory."""
        ...
