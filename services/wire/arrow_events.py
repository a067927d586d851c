"""Click events as Apache Arrow IPC: many events per Kafka message in columns, for high-rate
producers (`chunkrec replay` sends these). Same events, same rules as the JSON form
(events.py); the trainer tells them apart by the first bytes (an Arrow IPC stream starts with
the continuation marker 0xFFFFFFFF, which no JSON text can).

One message = one uncompressed Arrow IPC stream (schema, then record batches) with columns:

    event_id    string                  1..256 chars, unique per event
    ts          float64 | int64         epoch seconds, 0 <= ts < 2^53
    label       int8..int64             0 or 1
    unit_id     int64 | string, null ok (optional column)
    ids.F       int64                   one per schema field F: already-hashed IDs
      or features.F  string | int64     raw values, hashed as storage.batch.hash_raw does
    dense.D     float32 | float64       one per dense name D, finite as float32

and the stream schema's metadata `chunkrec.schema` = the schema name. Nulls read as missing
(an event with a null event_id, ts, label, ID, feature or dense value is invalid).

    value = encode_arrow(batch, event_ids, ts)         # SparseBatch -> one message value
    batch, bad = read_arrow(value, schema)             # -> EventBatch, [(row, reason, row json)]

A message whose columns do not fit the schema, or that is not a readable uncompressed stream,
is refused whole (MessageError); an invalid row is refused alone with its reason. Validation
and decoding are column operations (pyarrow.compute, numpy): no Python per event, except for
the rows refused. Rows and bytes are bounded before any column is decoded: a compressed
stream (which could expand far past its message) is refused from its metadata.
"""

from __future__ import annotations

import functools
import struct
import time
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from services.wire.events import (
    FLOAT32_MAX,
    MAX_EVENT_ID_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_STRING_CHARS,
    MAX_TS_S,
    EventBatch,
    MessageError,
)
from storage.batch import MISSING_ID, DatasetSchema, SparseBatch, hash_values

ARROW_MAGIC = b"\xff\xff\xff\xff"  # an IPC stream's first message starts with it
MAX_ARROW_EVENTS = 65_536  # rows per message (the message is bounded in bytes too)
SCHEMA_KEY = b"chunkrec.schema"


def is_arrow(value: bytes | None) -> bool:
    return value is not None and value[:4] == ARROW_MAGIC


def encode_arrow(batch: SparseBatch, event_ids: list[str],
                 ts: np.ndarray | None = None) -> bytes:
    """Events of `batch` (already-hashed IDs) -> one message value. ts float64[B] defaults to
    batch.timestamps, else the current time (as batch_to_events)."""
    schema = batch.schema
    if ts is None:
        ts = (batch.timestamps.astype(np.float64) if batch.timestamps is not None
              else np.full(len(batch), time.time()))
    cols: dict[str, Any] = {
        "event_id": pa.array(event_ids, pa.string()),
        "ts": pa.array(np.asarray(ts, np.float64)),
        "label": pa.array((batch.labels > 0.5).astype(np.int8)),
    }
    if batch.unit_ids is not None:
        cols["unit_id"] = pa.array(batch.unit_ids, pa.int64())
    for j, f in enumerate(schema.fields):
        cols[f"ids.{f}"] = pa.array(batch.ids[:, j])
    if batch.dense is not None:
        for j, d in enumerate(schema.dense):
            cols[f"dense.{d}"] = pa.array(batch.dense[:, j])
    table = pa.table(cols).replace_schema_metadata({SCHEMA_KEY: schema.name.encode()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


# ---- reading ---------------------------------------------------------------------------
def _u32(buf: bytes, pos: int) -> int:
    return struct.unpack_from("<I", buf, pos)[0]


def _batch_header(metadata: bytes) -> tuple[int, bool]:
    """(rows, compressed) of a record-batch message, from its flatbuffer metadata (Message ->
    header: RecordBatch {length: long, nodes, buffers, compression}) without decoding any
    buffer. Raises MessageError when it cannot be read."""
    try:
        def field(table: int, i: int) -> int | None:
            vtable = table - struct.unpack_from("<i", metadata, table)[0]
            size = struct.unpack_from("<H", metadata, vtable)[0]
            if 4 + 2 * i >= size:
                return None
            off = struct.unpack_from("<H", metadata, vtable + 4 + 2 * i)[0]
            return table + off if off else None

        message = _u32(metadata, 0)
        header = field(message, 2)
        if header is None:
            raise MessageError("message: Arrow record batch without a header")
        batch = header + _u32(metadata, header)
        length = field(batch, 0)
        rows = struct.unpack_from("<q", metadata, length)[0] if length is not None else 0
        return rows, field(batch, 3) is not None
    except (struct.error, IndexError):
        raise MessageError("message: unreadable Arrow record batch metadata") from None


def _read_table(value: bytes) -> pa.Table:
    """The message's record batches as one table, bounded before decoding (module doc)."""
    if len(value) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message: {len(value)} bytes, more than {MAX_MESSAGE_BYTES}")
    reader = pa.BufferReader(value)
    try:
        first = pa.ipc.read_message(reader)
        if first.type != "schema":
            raise MessageError("message: an Arrow stream must start with its schema")
        schema = pa.ipc.read_schema(first)
        batches, rows = [], 0
        while True:
            try:
                msg = pa.ipc.read_message(reader)
            except EOFError:  # the end-of-stream marker (or no more bytes)
                break
            if msg.type != "record batch":
                raise MessageError(f"message: Arrow {msg.type} messages are not accepted "
                                   "(one schema, then record batches)")
            n, compressed = _batch_header(msg.metadata.to_pybytes())
            if compressed:
                raise MessageError("message: compressed Arrow buffers are not accepted")
            rows += n
            if rows > MAX_ARROW_EVENTS:
                raise MessageError(f"message: more than {MAX_ARROW_EVENTS} events")
            batches.append(pa.ipc.read_record_batch(msg, schema))
        if reader.tell() < reader.size():
            raise MessageError("message: bytes after the Arrow stream's end")
    except (pa.ArrowException, OSError, ValueError) as exc:
        if isinstance(exc, MessageError):
            raise
        raise MessageError(f"message: not an Arrow IPC stream ({str(exc)[:120]})") from None
    return pa.Table.from_batches(batches, schema)


def _column_kind(t: pa.DataType) -> str | None:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    return None


def _check_columns(table: pa.Table, schema: DatasetSchema) -> dict[str, str]:
    """Field name -> "ids" or "features" per schema field; MessageError when the columns do
    not fit the schema (unknown, missing or of the wrong type)."""
    name = (table.schema.metadata or {}).get(SCHEMA_KEY, b"").decode("utf-8", "replace")
    if name != schema.name:
        raise MessageError(f"schema: expected {schema.name!r}, got {name[:128]!r}")
    kinds = {c: _column_kind(table.schema.field(c).type) for c in table.column_names}
    want = {"event_id": {"str"}, "ts": {"float", "int"}, "label": {"int"},
            "unit_id": {"int", "str"}} | {f"dense.{d}": {"float", "int"} for d in schema.dense}
    source: dict[str, str] = {}
    for f in schema.fields:
        has = [k for k in ("ids", "features") if f"{k}.{f}" in kinds]
        if len(has) != 1:
            raise MessageError(f"columns: expected exactly one of ids.{f} and features.{f}")
        source[f] = has[0]
        want[f"{has[0]}.{f}"] = {"int"} if has[0] == "ids" else {"str", "int"}
    required = set(want) - {"unit_id"}
    if len(set(table.column_names)) != len(table.column_names):
        raise MessageError("columns: a column name appears twice")
    missing, unknown = sorted(required - kinds.keys()), sorted(kinds.keys() - want.keys())
    if missing or unknown:
        raise MessageError(f"columns: missing {missing}, unknown {unknown}"[:300])
    for col, kind in kinds.items():
        if kind not in want[col]:
            raise MessageError(f"{col}: column of type {table.schema.field(col).type} not "
                               f"accepted (expected {'/'.join(sorted(want[col]))})")
    return source


def _ok(mask: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A boolean column as bool[N] with null -> False."""
    if mask.null_count:
        mask = pc.fill_null(mask, False)
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def _present(col: pa.ChunkedArray) -> np.ndarray:
    """bool[N]: not null (no compute at all when the column has no null)."""
    return _ok(pc.is_valid(col)) if col.null_count else np.ones(len(col), bool)


@functools.cache
def _int_range(t: pa.DataType) -> tuple[int, int]:
    info = np.iinfo(t.to_pandas_dtype())
    return int(info.min), int(info.max)


def _int_in(col: pa.ChunkedArray, lo: int, hi: int) -> np.ndarray:
    """Rows of an integer column that are not null and within [lo, hi] (uint64 included:
    the bounds are clipped to the column's type, so no comparison needs a cast; a type whose
    whole range is inside needs none at all, e.g. int64 IDs)."""
    t = col.type
    t_min, t_max = _int_range(t)
    if lo <= t_min and t_max <= hi:
        return _present(col)
    lo_s, hi_s = pa.scalar(max(lo, t_min), t), pa.scalar(min(hi, t_max), t)
    return _ok(pc.and_(pc.greater_equal(col, lo_s), pc.less_equal(col, hi_s)))


def _row_checks(table: pa.Table, schema: DatasetSchema,
                source: dict[str, str]) -> list[tuple[str, np.ndarray]]:
    """(reason, bool[N] row ok) per rule, in the JSON form's order of checks."""
    i64 = (-(1 << 63), (1 << 63) - 1)
    eid_len = pc.utf8_length(table["event_id"])
    checks = [
        (f"event_id: expected a string of 1..{MAX_EVENT_ID_CHARS} chars",
         _ok(pc.and_(pc.greater(eid_len, 0), pc.less_equal(eid_len, MAX_EVENT_ID_CHARS)))),
        ("ts: expected finite epoch seconds in [0, 2^53)",
         _ok(pc.and_(pc.greater_equal(table["ts"], 0), pc.less(table["ts"], MAX_TS_S)))),
        ("label: expected 0 or 1", _int_in(table["label"], 0, 1)),
    ]
    if "unit_id" in table.column_names:
        unit = table["unit_id"]
        if pa.types.is_integer(unit.type):
            ok = _int_in(unit, *i64) | _ok(pc.is_null(unit))
        else:
            ok = _ok(pc.less_equal(pc.utf8_length(unit), MAX_STRING_CHARS)) | _ok(
                pc.is_null(unit))
        checks.append(("unit_id: expected a string, an int64 or null", ok))
    for f in schema.fields:
        col = table[f"{source[f]}.{f}"]
        if pa.types.is_integer(col.type):
            kind = "an int64" if source[f] == "ids" else "a string or an int64"
            checks.append((f"{source[f]}.{f}: expected {kind}", _int_in(col, *i64)))
        else:
            checks.append((f"features.{f}: expected a string of at most {MAX_STRING_CHARS} "
                           "chars", _ok(pc.less_equal(pc.utf8_length(col), MAX_STRING_CHARS))))
    for d in schema.dense:
        col = table[f"dense.{d}"]
        values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)  # nulls: NaN
        with np.errstate(invalid="ignore"):
            checks.append((f"dense.{d}: expected a finite float32 number",
                           np.abs(values) <= FLOAT32_MAX))
    return checks


def read_arrow(value: bytes, schema: DatasetSchema
               ) -> tuple[EventBatch, list[tuple[int, str, bytes]]]:
    """One Arrow message -> (EventBatch of the valid rows in order, [(row, reason, the row as
    JSON)] of the invalid ones). Raises MessageError when the message is refused whole."""
    table = _read_table(value)
    source = _check_columns(table, schema)
    try:
        checks = _row_checks(table, schema, source)
    except pa.ArrowException as exc:  # a column the checks cannot read: the message goes
        raise MessageError(f"message: unreadable columns ({str(exc)[:120]})") from None
    good = np.logical_and.reduce([ok for _, ok in checks]) if checks else np.ones(0, bool)
    bad_rows = np.flatnonzero(~good)
    bad = []
    for row in bad_rows.tolist():
        reason = next(r for r, ok in checks if not ok[row])
        doc = table.slice(row, 1).to_pylist()[0]
        bad.append((row, reason, orjson.dumps(doc, default=str)))
    if bad_rows.size:
        table = table.filter(pa.array(good))
    return _to_event_batch(table, schema, source), bad


def _to_event_batch(table: pa.Table, schema: DatasetSchema,
                    source: dict[str, str]) -> EventBatch:
    n = table.num_rows
    if n == 0:
        return EventBatch.empty(schema)
    ids = np.empty((n, schema.num_fields), np.int64)
    for j, f in enumerate(schema.fields):
        col = table[f"{source[f]}.{f}"]
        if source[f] == "ids":
            ids[:, j] = (col if col.type == pa.int64() else pc.cast(col, pa.int64())).to_numpy()
        else:  # raw values: ints hash as their decimal string, as in JSON events
            text = col if not pa.types.is_integer(col.type) else pc.cast(col, pa.string())
            ids[:, j] = hash_values(text.to_numpy(zero_copy_only=False))
    dense = None
    if schema.num_dense:
        dense = np.empty((n, schema.num_dense), np.float32)
        for j, d in enumerate(schema.dense):
            dense[:, j] = pc.cast(table[f"dense.{d}"], pa.float64()).to_numpy()
    unit_ids = np.full(n, MISSING_ID, np.int64)
    if "unit_id" in table.column_names:
        unit = table["unit_id"]
        present = _ok(pc.is_valid(unit))
        if pa.types.is_integer(unit.type):
            unit_ids[present] = pc.cast(pc.fill_null(unit, 0), pa.int64()).to_numpy()[present]
        elif present.any():
            unit_ids[present] = hash_values(unit.filter(pa.array(present)).to_numpy(
                zero_copy_only=False))
    ts = pc.cast(table["ts"], pa.float64()).to_numpy()
    batch = SparseBatch(schema, labels=pc.cast(table["label"], pa.float32()).to_numpy(),
                        ids=ids, dense=dense, unit_ids=unit_ids,
                        timestamps=np.floor(ts).astype(np.int64))
    return EventBatch(batch, table["event_id"].to_pylist(), np.asarray(ts, np.float64))
