"""Delimited text data files read in blocks of whole lines, for the data-set readers.

`TextFile(path, kind)` opens a plain or gzip file, refuses one that is missing or empty, and
`TextFile.blocks()` yields `LineBlock`s of about `BLOCK_BYTES` each. A block knows the file line
number of each of its lines, so every problem becomes a one-line `DatasetError`:

    criteo:/x/train.txt: line 3 has 12 fields, expected 40

Field counts are checked on the raw bytes with numpy before pandas parses the block, because
pandas' C parser silently pads a short line with NaN.

Example:
    >>> f = TextFile(Path("day_0.gz"), "criteo")
    >>> for block in f.blocks():
    ...     block.check_fields("\\t", 40)
    ...     frame = block.read_csv("\\t", names, dtype)
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from storage.batch import MISSING_ID, SparseBatch, hash_values, rebatch
from storage.datasets.base import DatasetError

# One pandas call per ~4 MiB (about 16k Criteo lines) amortises its fixed cost; smaller blocks
# read measurably slower, larger ones only hold more memory.
BLOCK_BYTES = 1 << 22
_HEAD_BYTES = 1 << 16
_BOM = b"\xef\xbb\xbf"


class TextFile:
    """A plain or `.gz` text file of one data set; `where` ("kind:path") prefixes every error.

    Opening checks that the file exists and holds a non-blank line; `first_line` is that line
    (decoded, without its line ending), which the readers use to detect the format.
    """

    def __init__(self, path: str | Path, kind: str, encoding: str = "utf-8") -> None:
        self.path = Path(path)
        self.where = f"{kind}:{self.path}"
        self.encoding = encoding
        if not self.path.exists():
            raise self.error("no such file")
        if self.path.is_dir():
            raise self.error("is a directory, expected a file")
        head = self._head()
        for raw in head.split(b"\n"):
            line = raw.rstrip(b"\r")
            if line:
                self.first_line = line.decode(encoding, errors="replace")
                return
        raise self.error("file is empty")

    def error(self, problem: str) -> DatasetError:
        return DatasetError(f"{self.where}: {problem}")

    def _open(self) -> IO[bytes]:
        try:
            if self.path.suffix == ".gz":
                return gzip.open(self.path, "rb")
            return open(self.path, "rb")
        except OSError as exc:
            raise self.error(f"cannot open: {exc.strerror or exc}") from exc

    def _read(self, f: IO[bytes], n: int) -> bytes:
        try:
            return f.read(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise self.error(f"cannot read: {exc}") from exc

    def _head(self) -> bytes:
        with self._open() as f:
            head = self._read(f, _HEAD_BYTES)
        return head.removeprefix(_BOM)

    def read_all(self) -> LineBlock:
        """The whole file as one block (for files that must be held in memory anyway)."""
        with self._open() as f:
            data = self._read(f, -1).removeprefix(_BOM)
        if not data.endswith(b"\n"):
            data += b"\n"
        return LineBlock(data, 1, self.where, self.encoding)

    def blocks(
        self, skip_header: bool = False, block_bytes: int | None = None
    ) -> Iterator[LineBlock]:
        """Blocks of whole lines, in file order; `skip_header` drops the first non-blank line."""
        block_bytes = block_bytes or BLOCK_BYTES
        line_no = 1
        carry = b""
        first = True
        with self._open() as f:
            while True:
                chunk = self._read(f, block_bytes)
                if first:
                    chunk = chunk.removeprefix(_BOM)
                    first = False
                if not chunk:
                    break
                data = carry + chunk
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # one line longer than a block: keep reading
                    carry = data
                    continue
                carry = data[cut:]
                block = LineBlock(data[:cut], line_no, self.where, self.encoding)
                line_no += block.num_lines
                if skip_header and len(block):
                    block, skip_header = block.drop_first(), False
                if len(block):
                    yield block
        if carry:
            block = LineBlock(carry + b"\n", line_no, self.where, self.encoding)
            if skip_header and len(block):
                block = block.drop_first()
            if len(block):
                yield block


class LineBlock:
    """Whole lines of a file: `data` ends with a newline; blank lines are skipped.

    line_numbers int64[R]   1-based file line number of each of the R non-blank lines
    starts, ends int64[R]   byte span of each line in `data`, without its line ending
    """

    def __init__(self, data: bytes, first_line_no: int, where: str, encoding: str) -> None:
        self.data = data
        self.where = where
        self.encoding = encoding
        arr = np.frombuffer(data, np.uint8)
        newlines = np.flatnonzero(arr == 10)
        self.num_lines = int(newlines.size)
        starts = np.concatenate(([0], newlines[:-1] + 1)).astype(np.int64)
        ends = newlines.astype(np.int64)
        has_cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13)
        ends[has_cr] -= 1
        keep = ends > starts
        self.starts = starts[keep]
        self.ends = ends[keep]
        self.line_numbers = first_line_no + np.flatnonzero(keep).astype(np.int64)
        self.first_line_no = first_line_no

    def __len__(self) -> int:
        return int(self.line_numbers.size)

    def error(self, problem: str) -> DatasetError:
        return DatasetError(f"{self.where}: {problem}")

    def drop_first(self) -> LineBlock:
        """The block without its first non-blank line (a header)."""
        cut = int(self.ends[0])
        cut = self.data.index(b"\n", cut) + 1
        return LineBlock(self.data[cut:], int(self.line_numbers[0]) + 1, self.where, self.encoding)

    def with_data(self, data: bytes) -> LineBlock:
        """The same lines rewritten (e.g. a separator replaced); `data` must keep every newline."""
        return LineBlock(data, self.first_line_no, self.where, self.encoding)

    def field_counts(self, sep: str) -> np.ndarray:
        """Fields per line when split on the one-character `sep`: int64[R]."""
        arr = np.frombuffer(self.data, np.uint8)
        seps = np.flatnonzero(arr == ord(sep))
        return np.searchsorted(seps, self.ends) - np.searchsorted(seps, self.starts) + 1

    def check_fields(self, sep: str, expected: int, noun: str = "fields", offset: int = 0) -> None:
        """Raise naming the first line whose field count (minus `offset`) is not `expected`."""
        counts = self.field_counts(sep) - offset
        bad = np.flatnonzero(counts != expected)
        if bad.size:
            i = int(bad[0])
            raise self.error(
                f"line {self.line_numbers[i]} has {counts[i]} {noun}, expected {expected}"
            )

    def read_csv(
        self,
        sep: str,
        names: Sequence[str],
        dtype: Mapping[str, Any],
        usecols: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Parse the block (fields already checked) into a frame of R rows; an unparsable value
        raises naming its line and column. Empty fields read as missing (NaN)."""
        kwargs: dict[str, Any] = dict(
            sep=sep,
            header=None,
            names=list(names),
            usecols=list(usecols) if usecols is not None else None,
            engine="c",
            quoting=csv.QUOTE_NONE,
            keep_default_na=False,
            na_values=[""],
            encoding=self.encoding,
        )
        try:
            frame = pd.read_csv(io.BytesIO(self.data), dtype=dict(dtype), **kwargs)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._locate_bad_value(kwargs, dtype, exc) from exc
        if len(frame) != len(self):
            raise self.error(
                f"lines {self.line_numbers[0]}-{self.line_numbers[-1]} parse into {len(frame)} "
                f"rows, expected {len(self)} (stray carriage return?)"
            )
        return frame

    def _locate_bad_value(
        self, kwargs: dict[str, Any], dtype: Mapping[str, Any], exc: Exception
    ) -> DatasetError:
        """Re-read the block as text to find the first line and column that cannot convert."""
        first = f"lines {self.line_numbers[0]}-{self.line_numbers[-1]}"
        try:
            raw = pd.read_csv(io.BytesIO(self.data), dtype=str, **kwargs)
        except (ValueError, UnicodeDecodeError) as exc2:
            return self.error(f"{first}: {str(exc2).splitlines()[0]}")
        worst: tuple[int, str] | None = None
        for col, want in dtype.items():
            if not pd.api.types.is_numeric_dtype(want) or col not in raw:
                continue
            kind = np.dtype(want).kind
            if kind not in "iuf":
                continue
            text = raw[col]
            num = pd.to_numeric(text, errors="coerce")
            bad = num.isna() & text.notna()
            if kind in "iu":
                bad |= text.isna() | (num.notna() & (num != np.floor(num)))
            rows = np.flatnonzero(bad.to_numpy())
            if rows.size:
                i = int(rows[0])
                value = text.iloc[i]
                what = "is empty" if pd.isna(value) else f"{value!r} is not a valid number"
                msg = f"line {self.line_numbers[i]}: {col} {what}"
                if worst is None or i < worst[0]:
                    worst = (i, msg)
        if worst is not None:
            return self.error(worst[1])
        return self.error(f"{first}: {str(exc).splitlines()[0]}")

    def bad_rows(self, bad: np.ndarray, problem: str) -> None:
        """Raise `line N: <problem>` for the first True of `bad` (bool[R]), if any."""
        rows = np.flatnonzero(bad)
        if rows.size:
            raise self.error(f"line {self.line_numbers[int(rows[0])]}: {problem}")


def hash_column(values: pd.Series | np.ndarray) -> np.ndarray:
    """`storage.batch.hash_values` of a column, hashing each distinct value once (the same IDs,
    several times faster on real columns, where values repeat).

    hash_column(str[N]) -> int64[N]
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    hashed = hash_values(np.asarray(uniques, dtype=object))
    ids = hashed[np.maximum(codes, 0)] if hashed.size else np.zeros(len(codes), np.int64)
    ids[codes < 0] = MISSING_ID
    return ids


class BlockDataset:
    """A data set read from one text file in blocks of whole lines. A subclass sets `_file` and
    `_has_header` and turns a block into a SparseBatch in `_parse`."""

    _file: TextFile
    _has_header: bool

    def batches(self, batch_size: int) -> Iterator[SparseBatch]:
        """Rows in file order, `batch_size` at a time (the last batch may be shorter)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return rebatch(self._blocks(), batch_size)

    def _blocks(self) -> Iterator[SparseBatch]:
        rows = 0
        for block in self._file.blocks(skip_header=self._has_header):
            rows += len(block)
            yield self._parse(block)
        if rows == 0:
            raise self._file.error("no data rows")

    def _parse(self, block: LineBlock) -> SparseBatch:
        raise NotImplementedError
