"""The wire formats between producers, the trainer and serving, defined once.

Every process that writes or reads Kafka or Redis imports this module; nothing else spells a
topic, a key or a byte layout.

Click event (Kafka topic `events`; one message = a JSON array of events, orjson):

    {"event_id": "movielens-100k:17",     # str, 1..256 chars, unique per event
     "ts": 881250949.0,                   # float epoch seconds, 0 <= ts < 2^53
     "label": 1,                          # int 0 or 1
     "unit_id": 196,                      # str | int | null (optional): who the A/B split hashes
     "ids": {"user": -4417..., ...}       # already-hashed int64 IDs, one per schema field
       or "features": {"user": "196", ...}   # raw values (str or int), hashed here with
                                             # storage.batch.hash_values of the string form
     "dense": {"age": 0.3},               # {name: number finite as float32}, all of the
                                          # schema's (optional when the schema has none)
     "schema": "movielens-100k"}          # schema name; must match the consumer's schema

Exactly one of "ids" / "features"; every schema field present, no unknown key anywhere.
`validate_message(value, schema)` -> (EventBatch of the valid events, [(reason, original)]).

Dead letters (topic `events.dlq`, one JSON object per message):

    {"reason": "label: expected 0 or 1, got 2", "original": "<text or base64>",
     "original_encoding": "utf-8" | "base64", "topic": "events", "partition": 0,
     "offset": 1234, "event_index": 3 | null}

`original` is the event re-serialised by orjson for an invalid event inside a valid message
(`event_index` = its position), or the whole raw message value for a malformed message
(`event_index` null; base64 when the bytes are not UTF-8). A dead letter always fits one Kafka
message whatever it holds: `original` keeps at most the first MAX_DLQ_ORIGINAL_BYTES bytes
(`truncated` true), beside `original_bytes` (the full length) and `original_sha256` (of the full
original), and `reason` at most MAX_DLQ_REASON_CHARS characters. JSON escaping grows text at
most 6x (a control character takes six), base64 4/3x, so a record stays under
DLQ_RECORD_MAX_BYTES, far below the broker's 1 MB default.

Redis key layout for model M (M matches [A-Za-z0-9_.-]{1,64}):

    chunkrec:models                      set of model names
    chunkrec:{M}:emb:{field}:{key}       packed embedding record (field name, decimal int64 ID)
    chunkrec:{M}:dense:{version}         torch.save bytes of the network's state_dict
    chunkrec:{M}:version                 JSON model version record (ModelVersion)
    chunkrec:{M}:versions                pub/sub channel; message = the version number (ASCII)
    chunkrec:{M}:owner                   "TOKEN HOST PID" of the trainer owning M (a lease with
                                         a TTL; services/trainer/lease.py)
    chunkrec:{M}:fence                   the highest fencing token issued for M (INCR)

Packed embedding record (bytes):

    uint32 LE  chunk mask: bit j set = chunk j stored
    float32 LE values of the stored chunks only, in position order (chunk j has widths[j]
               values; widths come from the version record)

A record of mask 0 is never written: an ID that lost all chunks is deleted instead.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
import time
from dataclasses import asdict, dataclass, field
from itertools import chain
from operator import itemgetter, methodcaller
from typing import Any

import numpy as np
import orjson
import pandas as pd
from pydantic import TypeAdapter

from storage.batch import MISSING_ID, DatasetSchema, SparseBatch, hash_values

WIRE_VERSION = 1
EVENTS_TOPIC = "events"
DLQ_TOPIC = "events.dlq"
KEY_PREFIX = "chunkrec"
MODELS_SET = f"{KEY_PREFIX}:models"

MAX_MESSAGE_BYTES = 4 << 20  # one Kafka message value
MAX_EVENTS_PER_MESSAGE = 10_000
MAX_EVENT_ID_CHARS = 256
MAX_STRING_CHARS = 1024  # a raw feature value or a string unit id
MAX_SCHEMA_CHARS = 128
MAX_DLQ_ORIGINAL_BYTES = 64 << 10  # what a dead letter keeps of its original
MAX_DLQ_REASON_CHARS = 1024
# the largest dead letter: original escaped at most 6x, reason likewise, plus the fixed keys
DLQ_RECORD_MAX_BYTES = 6 * (MAX_DLQ_ORIGINAL_BYTES + MAX_DLQ_REASON_CHARS) + 1024
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# ts is floored to int64 seconds: bound it where float64 is still exact (orjson reads integers
# past uint64 as floats, so 1e19 would otherwise pass and overflow the floor)
MAX_TS_S = float(1 << 53)
# dense values train as float32: a finite float64 past this reads as inf there
FLOAT32_MAX = float(np.finfo(np.float32).max)

_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_EVENT_KEYS = frozenset({"event_id", "ts", "label", "unit_id", "ids", "features", "dense",
                         "schema"})
_REQUIRED_KEYS = frozenset({"event_id", "ts", "label", "schema"})
# A fixed key, so event-id hashes (the applied-events checksum) agree across processes.
_EVENT_HASH_KEY = "chunkrec-events1"


# ------------------------------------------------------------------------------------------
# Click events
# ------------------------------------------------------------------------------------------


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


Invalid = tuple[str, bytes]  # (reason, original bytes)


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
        raw = np.array([str(v) for row in rows for v in row], dtype=object)
        ids[raw_rows] = hash_values(raw).reshape(len(raw_rows), len(fields))
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
            unit_ids[str_units] = hash_values(np.array([units[i] for i in str_units],
                                                       dtype=object))
    batch = SparseBatch(schema, labels=labels, ids=ids, dense=dense, unit_ids=unit_ids,
                        timestamps=np.floor(ts).astype(np.int64))
    return EventBatch(batch, list(map(itemgetter("event_id"), events)), ts)


def validate_message(value: bytes | None, schema: DatasetSchema) -> tuple[EventBatch,
                                                                           list[Invalid]]:
    """One Kafka message value -> (EventBatch of its valid events, [(reason, original bytes)]
    of the invalid ones). A malformed message gives no events and one invalid entry holding
    the whole value (use `dlq_record(..., event_index=None)` for it: see
    `dead_letters_for_message`)."""
    try:
        events = parse_message(value)
    except MessageError as exc:
        return EventBatch.empty(schema), [(str(exc), value or b"")]
    batch, bad = validate_events(events, schema)
    return batch, [(reason, orjson.dumps(events[i])) for i, reason in bad]


def dlq_record(reason: str, original: bytes, topic: str, partition: int, offset: int,
               event_index: int | None = None) -> bytes:
    """A dead letter for topic `events.dlq` (see module docstring): bounded in size whatever
    `original` and `reason` hold."""
    kept = original[:MAX_DLQ_ORIGINAL_BYTES]
    try:
        text, encoding = _utf8_prefix(kept, len(kept) < len(original)), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    # a lone surrogate cannot be encoded as JSON text: replace it (the reason is for people)
    reason = reason[:MAX_DLQ_REASON_CHARS].encode("utf-8", "replace").decode("utf-8")
    return orjson.dumps({
        "reason": reason, "original": text, "original_encoding": encoding,
        "original_bytes": len(original), "original_sha256": hashlib.sha256(original).hexdigest(),
        "truncated": len(kept) < len(original), "topic": topic, "partition": partition,
        "offset": offset, "event_index": event_index,
    })


def dlq_stub(record: bytes) -> bytes:
    """A dead letter without its original (reason, length, hash and source kept): what is
    sent when the full record could not be."""
    doc = orjson.loads(record)
    doc.update(original="", original_encoding="utf-8", truncated=True)
    return orjson.dumps(doc)


def _utf8_prefix(data: bytes, cut: bool) -> str:
    """`data` as text; when it was `cut` from something longer, a character split by the cut
    is dropped. Raises UnicodeDecodeError when it is not UTF-8 otherwise."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if cut and exc.reason == "unexpected end of data":
            return data[: exc.start].decode("utf-8")
        raise


def parse_dlq_record(value: bytes) -> dict[str, Any]:
    """A dead letter -> its dict, with "original" decoded back to the original bytes (their
    first MAX_DLQ_ORIGINAL_BYTES when "truncated")."""
    doc = orjson.loads(value)
    text = doc["original"]
    doc["original"] = (base64.b64decode(text) if doc["original_encoding"] == "base64"
                       else text.encode("utf-8"))
    return doc


def dead_letters(value: bytes | None, schema: DatasetSchema, topic: str, partition: int,
                 offset: int) -> tuple[EventBatch, list[bytes]]:
    """Validate one Kafka message: (valid events, DLQ record values for the rest)."""
    try:
        events = parse_message(value)
    except MessageError as exc:
        return EventBatch.empty(schema), [dlq_record(str(exc), value or b"", topic, partition,
                                                     offset, None)]
    batch, bad = validate_events(events, schema)
    return batch, [dlq_record(reason, orjson.dumps(events[i]), topic, partition, offset, i)
                   for i, reason in bad]


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


# ------------------------------------------------------------------------------------------
# Redis key layout
# ------------------------------------------------------------------------------------------


def check_model_name(model: str) -> str:
    if not _MODEL_NAME.match(model):
        raise ValueError(f"model name {model!r}: expected 1..64 of [A-Za-z0-9_.-]")
    return model


def emb_prefix(model: str) -> str:
    return f"{KEY_PREFIX}:{model}:emb:"


def emb_key(model: str, field_name: str, key: int) -> str:
    return f"{KEY_PREFIX}:{model}:emb:{field_name}:{int(key)}"


def emb_keys(model: str, field_names: tuple[str, ...] | list[str], fields: np.ndarray,
             keys: np.ndarray) -> list[str]:
    """Keys of N entries, vectorised: fields int[N] (index into field_names), keys int64[N]."""
    if len(keys) == 0:
        return []
    prefixes = np.array([emb_key(model, f, 0)[:-1] for f in field_names], dtype=object)
    # object-array + is elementwise str concatenation, done in C
    return (prefixes[np.asarray(fields, np.int64)] + np.asarray(keys, np.int64).astype(str)
            .astype(object)).tolist()


def dense_key(model: str, version: int) -> str:
    return f"{KEY_PREFIX}:{model}:dense:{int(version)}"


def version_key(model: str) -> str:
    return f"{KEY_PREFIX}:{model}:version"


def owner_key(model: str) -> str:
    return f"{KEY_PREFIX}:{model}:owner"


def fence_key(model: str) -> str:
    return f"{KEY_PREFIX}:{model}:fence"


def versions_channel(model: str) -> str:
    return f"{KEY_PREFIX}:{model}:versions"


def dense_to_bytes(state_dict: dict[str, Any]) -> bytes:
    """torch.save bytes of a network's state_dict (what `dense_key` holds)."""
    import torch

    buf = io.BytesIO()
    torch.save(state_dict, buf)
    return buf.getvalue()


def dense_from_bytes(blob: bytes) -> dict[str, Any]:
    import torch

    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------
# Packed embedding records
# ------------------------------------------------------------------------------------------


def _column_mask(masks: np.ndarray, widths: tuple[int, ...]) -> np.ndarray:
    """uint32[N] chunk masks -> bool[N, D]: which of the D values are stored."""
    k = len(widths)
    bits = (masks.astype(np.uint32)[:, None] >> np.arange(k, dtype=np.uint32)) & 1
    return np.repeat(bits.astype(bool), widths, axis=1)


def pack_records(masks: np.ndarray, values: np.ndarray, widths: tuple[int, ...]) -> list[bytes]:
    """N packed records: masks uint32[N], values float32[N, D] -> [bytes] (see module doc).

    Vectorised: one [N, 1 + D] uint32 matrix (mask word, then the values' bits) is filtered
    by a keep mask in row-major order, which lays the records end to end; the list is cut
    from that one buffer."""
    masks = np.asarray(masks, np.uint32)
    values = np.ascontiguousarray(values, np.float32)
    n = masks.shape[0]
    if n == 0:
        return []
    d = sum(widths)
    if values.shape != (n, d):
        raise ValueError(f"values has shape {values.shape}, expected ({n}, {d})")
    if np.any(masks >> np.uint32(len(widths))):
        raise ValueError(f"a mask has bits beyond K={len(widths)}")
    keep = np.empty((n, 1 + d), bool)
    keep[:, 0] = True
    keep[:, 1:] = _column_mask(masks, widths)
    words = np.empty((n, 1 + d), "<u4")
    words[:, 0] = masks
    words[:, 1:] = values.astype("<f4", copy=False).view("<u4")
    blob = words[keep].tobytes()
    ends = np.cumsum(keep.sum(axis=1) * 4)
    starts = np.r_[0, ends[:-1]]
    mv = memoryview(blob)
    return [bytes(mv[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


@dataclass
class PackedExport:
    """An EmbeddingExport turned into Redis writes: `sets` (key, record) for entries with
    stored chunks, `deletes` for those without (mask 0) and for evicted ones."""

    sets: list[tuple[str, bytes]]
    deletes: list[str]

    @property
    def record_bytes(self) -> int:
        return sum(len(v) for _, v in self.sets)


def pack_export(model: str, field_names: tuple[str, ...], export: Any) -> PackedExport:
    """models.policy.EmbeddingExport -> PackedExport (keys per the layout above)."""
    masks = np.asarray(export.masks, np.uint32)
    live = masks != 0
    keys = emb_keys(model, field_names, export.fields[live], export.keys[live])
    records = pack_records(masks[live], np.asarray(export.values)[live], tuple(export.widths))
    deletes = emb_keys(model, field_names, export.fields[~live], export.keys[~live])
    deletes += emb_keys(model, field_names, export.deleted_fields, export.deleted_keys)
    return PackedExport(list(zip(keys, records, strict=True)), deletes)


def unpack_records(records: list[bytes | None], widths: tuple[int, ...],
                   dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Records (None = missing) -> (float32[N, D] zero-padded, found bool[N]).

    Missing records read as zeros (count them with `(~found).sum()`). Raises ValueError on a
    record whose length does not match its mask, or that holds a NaN or an infinity."""
    d = sum(widths) if dim is None else dim
    if d != sum(widths):
        raise ValueError(f"widths {widths} do not sum to D={d}")
    n = len(records)
    out = np.zeros((n, d), np.float32)
    found = np.fromiter((r is not None for r in records), bool, n)
    if not found.any():
        return out, found
    present = [r for r in records if r is not None]
    lengths = np.fromiter((len(r) for r in present), np.int64, len(present))
    if np.any(lengths % 4) or np.any(lengths < 4):
        raise ValueError("corrupt embedding record: length not a positive multiple of 4")
    words = np.frombuffer(b"".join(present), "<u4")
    ends = np.cumsum(lengths // 4)
    starts = ends - lengths // 4
    masks = words[starts]
    if np.any(masks >> np.uint32(len(widths))):
        raise ValueError(f"corrupt embedding record: mask bits beyond K={len(widths)}")
    cols = _column_mask(masks, widths)
    if not np.array_equal(cols.sum(axis=1), lengths // 4 - 1):
        raise ValueError("corrupt embedding record: length does not match its chunk mask")
    is_value = np.ones(words.shape[0], bool)
    is_value[starts] = False
    values = words[is_value].view("<f4")
    if not np.isfinite(values).all():  # would score NaN: a record no trainer writes
        raise ValueError("corrupt embedding record: a value is not finite")
    rows = np.zeros((len(present), d), np.float32)
    rows[cols] = values
    out[found] = rows
    return out, found


def record_masks(records: list[bytes | None]) -> np.ndarray:
    """uint32[N] chunk masks of records (0 for missing ones)."""
    return np.array([0 if r is None else int.from_bytes(r[:4], "little") for r in records],
                    dtype=np.uint32)


# ------------------------------------------------------------------------------------------
# Model version record
# ------------------------------------------------------------------------------------------


@dataclass
class ModelVersion:
    """What `chunkrec:{M}:version` holds (JSON): enough for serving to rebuild the network and
    decode the embeddings, and for dashboards to follow the run."""

    model: str
    version: int  # increases by one per publish, across restarts
    created_at: float  # epoch seconds
    policy: str  # policy spec
    schema: str
    fields: list[str]
    dense_names: list[str]
    arch: str  # "dlrm" | "mlp"
    dim: int  # D
    widths: list[int]  # chunk widths, summing to D
    dense_key: str
    full: bool  # full republish (True) or only the entries touched since the last version
    entries_written: int
    entries_deleted: int
    embedding_bytes: int  # policy.memory().total_bytes (values, optimizer, metadata, index)
    embedding_value_bytes: int  # policy.memory().value_bytes
    redis_embedding_bytes: int  # sum of the sizes of the live records in Redis
    redis_embedding_records: int
    events_applied: int
    events_checksum: str  # decimal uint64: sum of event_id_hashes of applied events mod 2^64
    events_invalid: int
    offsets: dict[str, int]  # "topic:partition" -> next offset to read
    metrics: dict[str, float | None] = field(default_factory=dict)  # auc, logloss, ... (null:
    # not defined yet)
    wire_version: int = WIRE_VERSION

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_json(cls, blob: bytes | str) -> ModelVersion:
        """Parse and type-check a record (anything may sit in Redis under the key): raises
        ValueError (orjson's or pydantic's) when it is not a version record."""
        doc = orjson.loads(blob)
        if not isinstance(doc, dict):
            raise ValueError(f"version record: expected a JSON object, got {type(doc).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        return _VERSION_ADAPTER.validate_python({k: v for k, v in doc.items() if k in known})

    @property
    def schema_obj(self) -> DatasetSchema:
        return DatasetSchema(self.schema, tuple(self.fields), tuple(self.dense_names))


_VERSION_ADAPTER = TypeAdapter(ModelVersion)


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: metrics that are not defined yet are written as null."""
    return float(x) if x is not None and math.isfinite(x) else None


# ------------------------------------------------------------------------------------------
# A/B exposures and feedback (router -> joiner)
# ------------------------------------------------------------------------------------------
#
# Exposure (topic `exposures`, one JSON object per message, key = request_id), written by the
# router for every ranked request:
#
#     {"request_id": "9f1c...", "experiment_id": 3, "phase": 1, "arm": "fiited",
#      "arm_id": 7, "model": "fiited", "model_version": 12, "unit_id": "196",
#      "ts": 1732240000.12, "latency_ms": 4.1, "schema": "movielens-100k",
#      "shown": [{"item": "242", "position": 0, "score": 0.61,
#                 "features": {"user": "196", "item": "242", ...}}, ...]}
#
# Feedback (topic `feedback`, key = request_id):
#
#     {"request_id": "9f1c...", "item": "242", "clicked": true, "ts": 1732240003.5}
#
# The joiner turns each shown item into a click event (`events`, label = clicked inside the
# attribution window) with event_id "exp:{request_id}:{item}".

EXPOSURES_TOPIC = "exposures"
FEEDBACK_TOPIC = "feedback"


def joined_event_id(request_id: str, item: str) -> str:
    """The event id of a shown item's labelled event (deterministic: a re-join is a duplicate
    id, not a new event)."""
    return f"exp:{request_id}:{item}"[:MAX_EVENT_ID_CHARS]
