"""Click events: the Kafka topic `events`, what every trainer learns from.

One message = a JSON array of events (orjson; a lone object counts as a list of one):

    {"event_id": "movielens-100k:17",     # str, 1..256 chars, unique per event
     "ts": 881250949.0,                   # float epoch seconds, 0 <= ts < 2^53
     "label": 1,                          # int 0 or 1
     "unit_id": 196,                      # str | int | null (optional): who the A/B split hashes
     "ids": {"user": -4417..., ...}       # already-hashed int64 IDs, one per schema field
       or "features": {"user": "196", ...}   # raw values (str or int), hashed here with
                                             # storage.batch.hash_raw (their string forms)
     "dense": {"age": 0.3},               # {name: number finite as float32}, all of the
                                          # schema's (optional when the schema has none)
     "schema": "movielens-100k"}          # schema name; must match the consumer's schema

Exactly one of "ids" / "features"; every schema field present, no unknown key anywhere.
`validate_events(events, schema)` -> (EventBatch of the valid events, [(index, reason)]);
`dead_letters(value, ...)` (dead_letters.py) reads a whole message that way.

The applied-events checksum: `event_id_checksum(ids)` = sum of `event_id_hashes` mod 2^64,
order-independent, so two runs applied the same events exactly once each iff their counts
and checksums agree (the version record carries it, versions.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter, methodcaller
from typing import Any

import numpy as np
import orjson
import pandas as pd

from storage.batch import MISSING_ID, DatasetSchema, SparseBatch, hash_raw

EVENTS_TOPIC = "events"

MAX_MESSAGE_BYTES = 4 << 20  # one Kafka message value
MAX_EVENTS_PER_MESSAGE = 10_000
MAX_EVENT_ID_CHARS = 256
MAX_STRING_CHARS = 1024  # a raw feature value or a string unit id
MAX_SCHEMA_CHARS = 128
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# ts is floored to int64 seconds: bound it where float64 is still exact (orjson reads integers
# past uint64 as floats, so 1e19 would otherwise pass and overflow the floor)
MAX_TS_S = float(1 << 53)
# dense values train as float32: a finite float64 past this reads as inf there
FLOAT32_MAX = float(np.finfo(np.float32).max)

_EVENT_KEYS = frozenset({"event_id", "ts", "label", "unit_id", "ids", "features", "dense",
                         "schema"})
_REQUIRED_KEYS = frozenset({"event_id", "ts", "label", "schema"})
# A fixed key, so event-id hashes (the applied-events checksum) agree across processes.
_EVENT_HASH_KEY = "chunkrec-events1"


class MessageError(ValueError):
    """A Kafka message that cannot be read as a list of events at all (dead-letters whole)."""


@dataclass
class EventBatch:
    """Valid events of one or more messages, ready to train on.

    batch      SparseBatch (labels, ids int64[N, F], dense, unit_ids, timestamps seconds)
    event_ids  list[str] of N ids, in order
    ts         float64[N] event time, epoch seconds (batch.timestamps is its floor)
    """

    batch: SparseBatch
    event_ids: list[str]
    ts: np.ndarray

    def __len__(self) -> int:
        return len(self.event_ids)

    @staticmethod
    def concat(parts: list[EventBatch]) -> EventBatch:
        return EventBatch(
            SparseBatch.concat([p.batch for p in parts]),
            [e for p in parts for e in p.event_ids],
            np.concatenate([p.ts for p in parts]),
        )

    @staticmethod
    def empty(schema: DatasetSchema) -> EventBatch:
        n_dense = schema.num_dense
        return EventBatch(
            SparseBatch(
                schema,
                labels=np.zeros(0, np.float32),
                ids=np.zeros((0, schema.num_fields), np.int64),
                dense=np.zeros((0, n_dense), np.float32) if n_dense else None,
                unit_ids=np.zeros(0, np.int64),
                timestamps=np.zeros(0, np.int64),
            ),
            [],
            np.zeros(0, np.float64),
        )


def event_id_hashes(event_ids: list[str]) -> np.ndarray:
    """uint64[N] stable 64-bit hashes of event ids (what the applied-events checksum sums)."""
    if not event_ids:
        return np.zeros(0, np.uint64)
    arr = np.asarray(event_ids, dtype=object)
    return pd.util.hash_array(arr, hash_key=_EVENT_HASH_KEY, categorize=False).astype(np.uint64)


def event_id_checksum(event_ids: list[str], start: int = 0) -> int:
    """(start + sum of event_id_hashes) mod 2^64: order-independent, so two runs applied the
    same events exactly once each iff their counts and checksums agree."""
    total = np.uint64(start) + event_id_hashes(event_ids).sum(dtype=np.uint64)
    return int(total)


def add_checksums(a: int, b: int) -> int:
    return (a + b) & ((1 << 64) - 1)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_event(ev: object, schema: DatasetSchema, field_set: frozenset[str],
                 dense_set: frozenset[str], deep: bool = True) -> str | None:
    """The reason `ev` is invalid, or None. With deep=False the values inside "ids",
    "features" and "dense" are left to `_bulk_values_ok` (the structure is still checked).

    Runs once per event on the trainer's hot path, hence `type(x) is int` (JSON parsing
    gives exact types; bool is not int here) and comparisons that are False for NaN."""
    if type(ev) is not dict:
        return f"event: expected a JSON object, got {type(ev).__name__}"
    keys = ev.keys()
    if not keys <= _EVENT_KEYS:
        return f"event: unknown keys {sorted(keys - _EVENT_KEYS)}"
    if not _REQUIRED_KEYS <= keys:
        return f"event: missing keys {sorted(_REQUIRED_KEYS - keys)}"
    eid = ev["event_id"]
    if type(eid) is not str or not 0 < len(eid) <= MAX_EVENT_ID_CHARS:
        return f"event_id: expected a string of 1..{MAX_EVENT_ID_CHARS} chars"
    ts = ev["ts"]
    if (type(ts) is not float and type(ts) is not int) or not 0 <= ts < MAX_TS_S:
        return f"ts: expected finite epoch seconds in [0, 2^53), got {ts!r}"[:200]
    label = ev["label"]
    if type(label) is not int or (label != 0 and label != 1):
        return f"label: expected 0 or 1, got {label!r}"[:200]
    name = ev["schema"]
    if name != schema.name:
        if type(name) is not str or len(name) > MAX_SCHEMA_CHARS:
            return "schema: expected a schema name string"
        return f"schema: expected {schema.name!r}, got {name!r}"
    unit = ev.get("unit_id")
    if unit is not None:
        if type(unit) is int:
            if not INT64_MIN <= unit <= INT64_MAX:
                return "unit_id: expected a string, an int64 or null"
        elif type(unit) is not str:
            return "unit_id: expected a string, an int64 or null"
        elif len(unit) > MAX_STRING_CHARS:
            return f"unit_id: longer than {MAX_STRING_CHARS} chars"
    has_ids = "ids" in keys
    if has_ids == ("features" in keys):
        return "event: expected exactly one of 'ids' and 'features'"
    where = "ids" if has_ids else "features"
    values = ev[where]
    if type(values) is not dict:
        return f"{where}: expected an object"
    if values.keys() != field_set:
        missing = sorted(field_set - values.keys())
        unknown = sorted(values.keys() - field_set)
        return f"{where}: missing fields {missing}, unknown fields {unknown}"[:300]
    if deep:
        for f, v in values.items():
            if type(v) is int:
                if not INT64_MIN <= v <= INT64_MAX:
                    return f"{where}.{f}: expected an int64, got {v!r}"[:200]
            elif has_ids or type(v) is not str:
                kind = "an int64" if has_ids else "a string or an int64"
                return f"{where}.{f}: expected {kind}, got {v!r}"[:200]
            elif len(v) > MAX_STRING_CHARS:
                return f"features.{f}: longer than {MAX_STRING_CHARS} chars"
    dense = ev.get("dense")
    if dense is None:
        if dense_set:
            return f"dense: schema {schema.name} needs {sorted(dense_set)}"
    else:
        if type(dense) is not dict:
            return "dense: expected an object"
        if dense.keys() != dense_set:
            return (f"dense: missing {sorted(dense_set - dense.keys())}, "
                    f"unknown {sorted(dense.keys() - dense_set)}")[:300]
        for k, v in dense.items() if deep else ():
            if ((type(v) is not float and type(v) is not int)
                    or not -FLOAT32_MAX <= v <= FLOAT32_MAX):
                return f"dense.{k}: expected a finite float32 number, got {v!r}"[:200]
    return None


def parse_message(value: bytes | None) -> list[Any]:
    """A Kafka message value -> its list of events (a lone object counts as a list of one).
    Raises MessageError when the message is not that at all."""
    if value is None:
        raise MessageError("message: empty value")
    if len(value) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message: {len(value)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"message: not JSON ({str(exc)[:120]})") from None
    if isinstance(doc, dict):
        return [doc]
    if not isinstance(doc, list):
        raise MessageError(f"message: expected a JSON array of events, got {type(doc).__name__}")
    if len(doc) > MAX_EVENTS_PER_MESSAGE:
        raise MessageError(f"message: {len(doc)} events, more than {MAX_EVENTS_PER_MESSAGE}")
    return doc


def _values(events: list[dict[str, Any]], key: str) -> list[Any]:
    """Every value of every event's `key` object, flattened (C-level iteration)."""
    return list(chain.from_iterable(map(dict.values, map(itemgetter(key), events))))


def _bulk_values_ok(events: list[dict[str, Any]], schema: DatasetSchema) -> bool:
    """True when every value inside "ids", "features" and "dense" of structurally valid
    events is valid: the per-value checks of `_check_event`, as a few C-level passes over
    all of them (type sets, min / max, lengths, isfinite) instead of a Python loop."""
    with_ids = [ev for ev in events if "ids" in ev]
    if with_ids:
        flat = _values(with_ids, "ids")
        if not set(map(type, flat)) <= {int} or min(flat) < INT64_MIN or max(flat) > INT64_MAX:
            return False
    if len(with_ids) < len(events):
        flat = _values([ev for ev in events if "features" in ev], "features")
        if not set(map(type, flat)) <= {int, str}:
            return False
        ints = [v for v in flat if type(v) is int]
        strs = [v for v in flat if type(v) is str]
        if ints and (min(ints) < INT64_MIN or max(ints) > INT64_MAX):
            return False
        if strs and max(map(len, strs)) > MAX_STRING_CHARS:
            return False
    if schema.num_dense:
        flat = _values(events, "dense")
        if not set(map(type, flat)) <= {int, float}:
            return False
        if not (np.abs(np.array(flat, dtype=np.float64)) <= FLOAT32_MAX).all():  # NaN too
            return False
    return True


def validate_events(events: list[Any], schema: DatasetSchema) -> tuple[EventBatch,
                                                                         list[tuple[int, str]]]:
    """Validate parsed events: (EventBatch of the valid ones in order, [(index, reason)] of the
    invalid ones). Structure is checked per event; the values in bulk, and per event again
    only when the bulk check finds a bad one (to name it). Raw features are hashed per
    field in one vectorised call."""
    field_set = frozenset(schema.fields)
    dense_set = frozenset(schema.dense)
    good: list[int] = []
    bad: list[tuple[int, str]] = []
    for i, ev in enumerate(events):
        reason = _check_event(ev, schema, field_set, dense_set, deep=False)
        if reason is None:
            good.append(i)
        else:
            bad.append((i, reason))
    if not _bulk_values_ok([events[i] for i in good], schema):
        still: list[int] = []
        for i in good:
            reason = _check_event(events[i], schema, field_set, dense_set, deep=True)
            if reason is None:
                still.append(i)
            else:
                bad.append((i, reason))
        good = still
        bad.sort()
    return _to_event_batch([events[i] for i in good], schema), bad


def _to_event_batch(events: list[dict[str, Any]], schema: DatasetSchema) -> EventBatch:
    n = len(events)
    if n == 0:
        return EventBatch.empty(schema)
    fields = schema.fields
    pick = itemgetter(*fields) if len(fields) > 1 else (lambda d: (d[fields[0]],))
    ids = np.empty((n, len(fields)), np.int64)
    raw_rows = [i for i, ev in enumerate(events) if "features" in ev]
    if len(raw_rows) < n:
        id_rows = [i for i, ev in enumerate(events) if "ids" in ev]
        rows = list(map(pick, map(itemgetter("ids"), (events[i] for i in id_rows))))
        ids[id_rows] = np.array(rows, dtype=np.int64).reshape(len(id_rows), len(fields))
    if raw_rows:
        rows = list(map(pick, map(itemgetter("features"), (events[i] for i in raw_rows))))
        raw = hash_raw(list(chain.from_iterable(rows)))
        ids[raw_rows] = raw.reshape(len(raw_rows), len(fields))
    labels = np.fromiter(map(itemgetter("label"), events), np.float32, n)
    ts = np.fromiter(map(itemgetter("ts"), events), np.float64, n)
    dense = None
    if schema.num_dense:
        dpick = (itemgetter(*schema.dense) if schema.num_dense > 1
                 else (lambda d: (d[schema.dense[0]],)))
        dense = np.array(list(map(dpick, map(itemgetter("dense"), events))),
                         dtype=np.float32).reshape(n, schema.num_dense)
    units = list(map(methodcaller("get", "unit_id"), events))
    if set(map(type, units)) <= {int}:
        unit_ids = np.array(units, dtype=np.int64)
    else:  # null unit ids read MISSING_ID; string ones are hashed like features
        unit_ids = np.array([u if _is_int(u) else MISSING_ID for u in units], dtype=np.int64)
        str_units = [i for i, u in enumerate(units) if isinstance(u, str)]
        if str_units:
            unit_ids[str_units] = hash_raw([units[i] for i in str_units])
    batch = SparseBatch(schema, labels=labels, ids=ids, dense=dense, unit_ids=unit_ids,
                        timestamps=np.floor(ts).astype(np.int64))
    return EventBatch(batch, list(map(itemgetter("event_id"), events)), ts)


def batch_to_events(batch: SparseBatch, event_ids: list[str],
                    ts: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Events carrying already-hashed IDs ("ids"), one per row of `batch` (what replay sends).
    ts float[B] defaults to batch.timestamps, else the current time."""
    schema = batch.schema
    n = len(batch)
    if ts is None:
        ts = (batch.timestamps.astype(np.float64) if batch.timestamps is not None
              else np.full(n, time.time()))
    fields = schema.fields
    rows = batch.ids.tolist()
    labels = (batch.labels > 0.5).astype(np.int64).tolist()
    tss = np.asarray(ts, np.float64).tolist()
    units = batch.unit_ids.tolist() if batch.unit_ids is not None else [None] * n
    dense = batch.dense.tolist() if batch.dense is not None else None
    out: list[dict[str, Any]] = []
    for i in range(n):
        ev: dict[str, Any] = {"event_id": event_ids[i], "ts": tss[i], "label": labels[i],
                              "unit_id": units[i], "ids": dict(zip(fields, rows[i], strict=True)),
                              "schema": schema.name}
        if dense is not None:
            ev["dense"] = dict(zip(schema.dense, dense[i], strict=True))
        out.append(ev)
    return out


def encode_events(events: list[dict[str, Any]]) -> bytes:
    """Events -> one Kafka message value (a JSON array)."""
    return orjson.dumps(events)

