"""Data-set spec strings, accepted everywhere a data set is named:

    criteo:PATH            raw Criteo TSV (train.txt, day_N) or the CSV-with-header variant
    avazu:PATH             Avazu CSV, with or without header
    movielens:DIR_OR_FILE  MovieLens `::` ratings (+ users.dat, movies.dat beside it)
    movielens-100k         MovieLens-100k from the cache (`chunkrec data fetch movielens-100k`)
    frappe:PATH[,PATH]     Frappe libFM files
    yidian:PATH            Yidian news-feed impressions (the torch-rechub CSV)
    synthetic:events=N,fields=F,vocab=V,zipf=A,seed=S,drift=D

A spec that cannot be read raises `DatasetError` whose message is one line naming the file and
the problem.
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


def parse_kv(text: str, spec: str) -> dict[str, str]:
    """`a=1,b=2` -> {"a": "1", "b": "2"}; raises DatasetError naming the spec on bad syntax."""
    out: dict[str, str] = {}
    if not text:
        return out
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise DatasetError(f"{spec}: expected key=value, got {part!r}")
        out[key.strip()] = value.strip()
    return out


def open_dataset(spec: str) -> Dataset:
    """Open a data set by spec string (see module docstring)."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "criteo":
        from storage.datasets.criteo import CriteoDataset

        return CriteoDataset(_need_path(spec, arg), spec=spec)
    if kind == "avazu":
        from storage.datasets.avazu import AvazuDataset

        return AvazuDataset(_need_path(spec, arg), spec=spec)
    if kind == "movielens":
        from storage.datasets.movielens import MovieLensDataset

        return MovieLensDataset(_need_path(spec, arg), spec=spec)
    if kind == "movielens-100k":
        from storage.datasets.movielens import open_movielens_100k

        return open_movielens_100k(spec=spec)
    if kind == "frappe":
        from storage.datasets.frappe import FrappeDataset

        return FrappeDataset(_need_path(spec, arg).split(","), spec=spec)
    if kind == "yidian":
        from storage.datasets.yidian import YidianDataset

        return YidianDataset(_need_path(spec, arg), spec=spec)
    if kind == "synthetic":
        from storage.datasets.synthetic import SyntheticDataset

        return SyntheticDataset.from_params(parse_kv(arg, spec), spec=spec)
    raise DatasetError(
        f"{spec}: unknown data set kind {kind!r}; expected one of criteo, avazu, movielens, "
        "movielens-100k, frappe, yidian, synthetic"
    )


def _need_path(spec: str, arg: str) -> str:
    if not arg.strip():
        raise DatasetError(f"{spec}: missing PATH after ':'")
    return arg.strip()
