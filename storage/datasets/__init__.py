"""Readers for CTR data sets, all yielding `storage.batch.SparseBatch`. Open one by spec string
with `open_dataset("criteo:PATH")`; see `storage.datasets.spec`."""

from storage.datasets.spec import Dataset, DatasetError, open_dataset

__all__ = ["Dataset", "DatasetError", "open_dataset"]
