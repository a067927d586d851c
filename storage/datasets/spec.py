"""Data-set spec strings, accepted everywhere a data set is named:

    criteo:PATH            raw Criteo TSV (train.txt, day_N) or the CSV-with-header variant
    avazu:PATH             Avazu CSV, with or without header
    movielens:DIR_OR_FILE  MovieLens `::` ratings (+ users.dat, movies.dat beside it)
    movielens-100k         MovieLens-100k from the cache (`chunkrec data fetch movielens-100k`)
    frappe:PATH[,PATH]     Frappe libFM files
    yidian:PATH            Yidian news-feed impressions (the torch-rechub CSV)
    synthetic:events=N,fields=F,vocab=V,zipf=A,seed=S,drift=D
    table:PATH,label=click,fields=a|b|c[,dense=x|y][,time=ts][,unit=a]   your CSV / Parquet

A spec that cannot be read raises `DatasetError` whose message is one line naming the file and
the problem. This module is the registry (a spec's kind -> its reader); the interface the
readers implement is storage/datasets/base.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from storage.datasets.avazu import AvazuDataset
from storage.datasets.base import Dataset, DatasetError
from storage.datasets.criteo import CriteoDataset
from storage.datasets.frappe import FrappeDataset
from storage.datasets.movielens import MovieLensDataset, open_movielens_100k
from storage.datasets.synthetic import SyntheticDataset
from storage.datasets.table import TableDataset
from storage.datasets.yidian import YidianDataset

__all__ = ["DATASETS", "Dataset", "DatasetError", "open_dataset", "parse_kv"]


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


# kind -> opener(spec, text after "kind:", data_dir)
DATASETS: dict[str, Callable[[str, str, Path | None], Dataset]] = {
    "criteo": lambda spec, arg, _: CriteoDataset(_need_path(spec, arg), spec=spec),
    "avazu": lambda spec, arg, _: AvazuDataset(_need_path(spec, arg), spec=spec),
    "movielens": lambda spec, arg, _: MovieLensDataset(_need_path(spec, arg), spec=spec),
    "movielens-100k": lambda spec, _, data_dir: open_movielens_100k(spec, data_dir),
    "frappe": lambda spec, arg, _: FrappeDataset(_need_path(spec, arg).split(","), spec=spec),
    "yidian": lambda spec, arg, _: YidianDataset(_need_path(spec, arg), spec=spec),
    "synthetic": lambda spec, arg, _: SyntheticDataset.from_params(parse_kv(arg, spec), spec),
    "table": lambda spec, arg, _: TableDataset.from_spec(spec, arg),
}


def open_dataset(spec: str, data_dir: Path | None = None) -> Dataset:
    """Open a data set by spec string (see module docstring). `data_dir`: where the cached
    data sets are (Settings.data_dir; movielens-100k reads `data_dir / "movielens-100k"`)."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    opener = DATASETS.get(kind)
    if opener is None:
        raise DatasetError(
            f"{spec}: unknown data set kind {kind!r}; expected one of {', '.join(DATASETS)}"
        )
    return opener(spec, arg, data_dir)


def _need_path(spec: str, arg: str) -> str:
    if not arg.strip():
        raise DatasetError(f"{spec}: missing PATH after ':'")
    return arg.strip()
