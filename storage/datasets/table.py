"""Your own data: a CSV or Parquet file (or a pandas DataFrame) whose columns you name.

    table:PATH,label=click,fields=user|item|city,dense=age|price,time=ts[,unit=user][,name=N]

    ds = open_dataset("table:clicks.parquet,label=click,fields=user|item,time=ts")
    ds = TableDataset(frame, TableColumns(label="click", fields=("user", "item")))

- `label`: 0/1 (or true/false); any other value is refused, naming the row.
- `fields`: categorical columns, `|`-separated; each value (as text: 196 and "196" are one ID)
  is hashed to an int64 ID (`storage.batch.hash_values`); missing -> the missing ID.
- `dense`: numeric columns; missing -> 0; a value that is not a finite number is refused.
- `time`: seconds since the epoch, or anything `pandas.to_datetime` reads; rows are streamed
  in time order (stable, so ties keep file order). Without it, file order.
- `unit`: the column an A/B split hashes (default: the first field).

A `.csv`, `.csv.gz`, `.tsv` or `.parquet` / `.pq` file is read whole, only the named columns
(a table for one machine; the other readers stream). Every problem is a DatasetError of one
line naming the file and the column: `table:x.csv: no column 'clik' (columns: user, click)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from storage.batch import DatasetSchema, SparseBatch
from storage.datasets.base import DatasetError
from storage.datasets.textfile import hash_column

KEYS = ("label", "fields", "dense", "time", "unit", "name")


@dataclass(frozen=True)
class TableColumns:
    """Which columns of a table are what (see the module docstring)."""

    label: str | None
    fields: tuple[str, ...]
    dense: tuple[str, ...] = ()
    time: str | None = None
    unit: str | None = None

    def needed(self) -> list[str]:
        named = [self.label, *self.fields, *self.dense, self.time, self.unit]
        return list(dict.fromkeys(c for c in named if c))


def parse_table_spec(spec: str, arg: str) -> tuple[Path, TableColumns, str]:
    """'clicks.csv,label=click,fields=a|b,dense=x,time=ts' -> (path, columns, schema name)."""
    path, _, rest = arg.partition(",")
    if not path.strip():
        raise DatasetError(f"{spec}: missing PATH after 'table:'")
    params: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in KEYS:
            raise DatasetError(f"{spec}: unexpected {part!r}; expected key=value with key one "
                               f"of {', '.join(KEYS)}")
        if key in params:
            raise DatasetError(f"{spec}: {key}= given twice")
        params[key] = value.strip()

    def names(key: str) -> tuple[str, ...]:
        return tuple(n.strip() for n in params.get(key, "").split("|") if n.strip())

    if not params.get("label"):
        raise DatasetError(f"{spec}: label=COLUMN is required (the 0/1 click column)")
    if not names("fields"):
        raise DatasetError(f"{spec}: fields=A|B|... is required (the categorical columns)")
    columns = TableColumns(label=params["label"], fields=names("fields"), dense=names("dense"),
                           time=params.get("time") or None, unit=params.get("unit") or None)
    return Path(path.strip()).expanduser(), columns, params.get("name") or Path(path).stem


def read_table(path: Path, columns: list[str], where: str) -> pd.DataFrame:
    """The named columns of a CSV / Parquet file; categorical text stays text."""
    if not path.is_file():
        raise DatasetError(f"{where}: file not found")
    suffixes = [s.lower() for s in path.suffixes]
    try:
        if suffixes[-1:] in ([".parquet"], [".pq"]):
            import pyarrow.parquet as pq

            have = pq.read_schema(path).names
            _check_columns(columns, have, where)
            return pd.read_parquet(path, columns=columns)
        sep = "\t" if ".tsv" in suffixes else ","
        have = list(pd.read_csv(path, sep=sep, nrows=0).columns)
        _check_columns(columns, have, where)
        return pd.read_csv(path, sep=sep, usecols=columns, dtype=str, keep_default_na=True)
    except DatasetError:
        raise
    except (OSError, ValueError, ImportError) as exc:  # pandas / pyarrow parse errors
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise DatasetError(f"{where}: cannot read ({type(exc).__name__}: {first})") from None


def _check_columns(wanted: list[str], have: list[str], where: str) -> None:
    missing = [c for c in wanted if c not in have]
    if missing:
        shown = ", ".join(have[:30]) + (", ..." if len(have) > 30 else "")
        raise DatasetError(f"{where}: no column {', '.join(map(repr, missing))} "
                           f"(columns: {shown})")


class TableDataset:
    """A table (file or DataFrame) as a stream of SparseBatches in time order.

    >>> ds = TableDataset(frame, TableColumns("click", ("user", "item"), ("price",), "ts"))
    >>> b = next(ds.batches(256)); b.ids.shape, b.dense.shape
    ((256, 2), (256, 1))
    """

    def __init__(self, source: Path | pd.DataFrame, columns: TableColumns,
                 spec: str | None = None, name: str = "table") -> None:
        self.columns = columns
        self.spec = spec or f"table:{source if isinstance(source, Path) else '<DataFrame>'}"
        self.schema = DatasetSchema(name, fields=columns.fields, dense=columns.dense)
        if isinstance(source, pd.DataFrame):
            _check_columns(columns.needed(), list(source.columns), self.spec)
            frame = source[columns.needed()]
        else:
            frame = read_table(Path(source), columns.needed(), self.spec)
        self._batch = to_batch(frame, columns, self.schema, self.spec)

    @classmethod
    def from_spec(cls, spec: str, arg: str) -> TableDataset:
        path, columns, name = parse_table_spec(spec, arg)
        return cls(path, columns, spec=spec, name=name)

    def __len__(self) -> int:
        return len(self._batch)

    def batches(self, batch_size: int) -> Iterator[SparseBatch]:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for i in range(0, len(self._batch), batch_size):
            yield self._batch.take(slice(i, i + batch_size))


def to_batch(frame: pd.DataFrame, columns: TableColumns, schema: DatasetSchema,
             where: str, need_label: bool = True) -> SparseBatch:
    """One SparseBatch of every row of `frame`, sorted by `columns.time` when given. Without
    `need_label` (scoring) a missing label column reads as zeros."""
    n = len(frame)
    times = None
    if columns.time and columns.time in frame:
        times = _seconds(frame[columns.time], where, columns.time)
        order = np.argsort(times, kind="stable")
        frame, times = frame.iloc[order], times[order]
    if columns.label and columns.label in frame:
        labels = _labels(frame[columns.label], where, columns.label)
    elif need_label:
        raise DatasetError(f"{where}: no label column {columns.label!r}")
    else:
        labels = np.zeros(n, np.float32)
    ids = np.empty((n, len(columns.fields)), np.int64)
    for j, col in enumerate(columns.fields):
        ids[:, j] = hash_column(frame[col].astype("string").to_numpy(dtype=object,
                                                                     na_value=None))
    dense = None
    if columns.dense:
        dense = np.empty((n, len(columns.dense)), np.float32)
        for j, col in enumerate(columns.dense):
            dense[:, j] = _numbers(frame[col], where, col)
    unit = columns.unit or columns.fields[0]
    unit_ids = ids[:, columns.fields.index(unit)] if unit in columns.fields else hash_column(
        frame[unit].astype("string").to_numpy(dtype=object, na_value=None))
    return SparseBatch(schema, labels=labels, ids=ids, dense=dense, unit_ids=unit_ids,
                       timestamps=times)


def _bad(where: str, col: str, mask: np.ndarray, values: pd.Series, what: str) -> None:
    if mask.any():
        row = int(np.flatnonzero(mask)[0])
        raise DatasetError(f"{where}: column {col!r}, row {row}: {values.iloc[row]!r} {what} "
                           f"({int(mask.sum()):,} such rows)")


def _labels(values: pd.Series, where: str, col: str) -> np.ndarray:
    text = values.astype("string").str.strip().str.lower()
    mapped = text.map({"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "false": 0.0, "true": 1.0})
    _bad(where, col, mapped.isna().to_numpy(), values, "is not a 0/1 label")
    return mapped.to_numpy(dtype=np.float32)


def _numbers(values: pd.Series, where: str, col: str) -> np.ndarray:
    nums = pd.to_numeric(values, errors="coerce")
    bad = nums.isna().to_numpy() & values.notna().to_numpy()
    _bad(where, col, bad, values, "is not a number")
    out = nums.fillna(0.0).to_numpy(dtype=np.float64)
    _bad(where, col, ~np.isfinite(out), values, "is not finite")
    return out.astype(np.float32)


def _seconds(values: pd.Series, where: str, col: str) -> np.ndarray:
    """Epoch seconds from numbers (seconds), date-times or date-time text."""
    nums = None if pd.api.types.is_datetime64_any_dtype(values) else pd.to_numeric(
        values, errors="coerce")
    if nums is not None and nums.notna().all():
        return nums.to_numpy(dtype=np.float64).astype(np.int64)
    stamps = pd.to_datetime(values, errors="coerce", utc=True)
    _bad(where, col, stamps.isna().to_numpy(), values, "is not a time")
    return (stamps.astype("int64") // 1_000_000_000).to_numpy(dtype=np.int64)
