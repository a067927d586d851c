"""Dead letters: the Kafka topic `events.dlq`, one JSON object per message.

    {"reason": "label: expected 0 or 1, got 2", "original": "<text or base64>",
     "original_encoding": "utf-8" | "base64", "original_bytes": 1234,
     "original_sha256": "9f86...", "truncated": false, "topic": "events", "partition": 0,
     "offset": 1234, "event_index": 3 | null}

`original` is the event re-serialised by orjson for an invalid event inside a valid message
(`event_index` = its position; an Arrow message's row as a JSON object of its columns), or
the whole raw message value for a malformed message
(`event_index` null; base64 when the bytes are not UTF-8). A dead letter always fits one Kafka
message whatever it holds: `original` keeps at most the first MAX_DLQ_ORIGINAL_BYTES bytes
(`truncated` true), beside `original_bytes` (the full length) and `original_sha256` (of the full
original), and `reason` at most MAX_DLQ_REASON_CHARS characters. JSON escaping grows text at
most 6x (a control character takes six), base64 4/3x, so a record stays under
DLQ_RECORD_MAX_BYTES, far below the broker's 1 MB default.

    batch, letters = dead_letters(value, schema, "events", partition, offset)
    parse_dlq_record(letters[0])["original"]   # -> the original bytes
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

from services.wire.arrow_events import is_arrow, read_arrow
from services.wire.events import EventBatch, MessageError, parse_message, validate_events
from storage.batch import DatasetSchema

DLQ_TOPIC = "events.dlq"

MAX_DLQ_ORIGINAL_BYTES = 64 << 10  # what a dead letter keeps of its original
MAX_DLQ_REASON_CHARS = 1024
# the largest dead letter: original escaped at most 6x, reason likewise, plus the fixed keys
DLQ_RECORD_MAX_BYTES = 6 * (MAX_DLQ_ORIGINAL_BYTES + MAX_DLQ_REASON_CHARS) + 1024


def dlq_record(reason: str, original: bytes, topic: str, partition: int, offset: int,
               event_index: int | None = None) -> bytes:
    """A dead letter for topic `events.dlq` (see the module docstring): bounded in size whatever
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
    """Validate one Kafka message, JSON or Arrow (arrow_events.py): (valid events, DLQ record
    values for the rest)."""
    if value is not None and is_arrow(value):
        try:
            batch, bad = read_arrow(value, schema)
        except MessageError as exc:
            return EventBatch.empty(schema), [dlq_record(str(exc), value, topic, partition,
                                                         offset, None)]
        return batch, [dlq_record(reason, row_json, topic, partition, offset, row)
                       for row, reason, row_json in bad]
    try:
        events = parse_message(value)
    except MessageError as exc:
        return EventBatch.empty(schema), [dlq_record(str(exc), value or b"", topic, partition,
                                                     offset, None)]
    batch, bad = validate_events(events, schema)
    return batch, [dlq_record(reason, orjson.dumps(events[i]), topic, partition, offset, i)
                   for i, reason in bad]

