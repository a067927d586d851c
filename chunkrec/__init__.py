"""chunkrec: online-learning CTR with self-resizing (FIITED) embedding tables, from Python.

    import chunkrec
    rec = chunkrec.Recommender(policy="fiited:budget=0.25")
    rec.fit(df, label="click", fields=["user", "item"], dense=["price"], time="ts")
    rec.predict_proba(df)[:, 1]

The public façade over the project's layers (storage/, models/, services/ stay as they are):
`Recommender` (chunkrec/recommender.py) for notebooks, `open_dataset` for every data-set spec
the command line takes (including `table:PATH,label=...` for your own CSV / Parquet), and
`parse_policy` for policy specs. Importing chunkrec is light; torch loads with `Recommender`.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("chunkrec")
except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from chunkrec.recommender import NotFittedError, Recommender
    from models.policies.registry import parse_policy
    from storage.datasets.spec import DatasetError, open_dataset

# name -> module: imported on first use, so `import chunkrec` does not load torch or pandas
_LAZY = {
    "Recommender": "chunkrec.recommender",
    "NotFittedError": "chunkrec.recommender",
    "open_dataset": "storage.datasets.spec",
    "DatasetError": "storage.datasets.spec",
    "parse_policy": "models.policies.registry",
}

__all__ = ["DatasetError", "NotFittedError", "Recommender", "__version__", "open_dataset",
           "parse_policy"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'chunkrec' has no attribute {name!r}")
