"""The joiner: matches exposures (Kafka `exposures`) with feedback (`feedback`) inside an
attribution window, emits one labelled click event per shown item to `events` (the trainers
learn from served traffic: the online-learning loop closes) and writes exposures and
outcomes to the database.

Attribution, in event time: a click on a shown item counts when it arrives within
`window_s` of the exposure (feedback.ts - exposure.ts <= window_s). An exposure closes once
the watermark passes ts + window_s + grace_s: the event time every input partition has
reached (the slowest partition with unread messages holds it back), or the wall clock;
`grace_s` absorbs feedback that is delivered out of order. Counted, never silently lost or
double counted:

    duplicates     a second click on the same (request, item): ignored
    late           a click outside the window: recorded on its outcome (late_feedback), no label
    late_arrivals  an in-window click delivered after its exposure closed: recorded as late
    orphans        feedback whose exposure never arrived (dropped when it would have closed)
    early          feedback that arrived before its exposure (held, then joined)

Hostile input. Every message is parsed into a typed record on read (`read_exposure`,
`read_feedback`: types, int ranges that fit the database's columns, finite numbers, bounded
strings, at most MAX_SHOWN items); one that fails goes ALONE to `events.dlq` (wire.dlq_record,
with the reason) and the rest of the poll proceeds. An item shown twice in one exposure is
de-duplicated, not rejected: its first showing is kept (`duplicate_items` counts the rest), so
the request still counts in its experiment. The joined events are checked with the trainer's
own validator (wire.validate_events, the model's DatasetSchema) before they are sent: an event
it would refuse goes to `events.dlq` (`event_index` = the item's place in `shown`) instead of
`events`, while its exposure and outcomes are still written (the A/B record of what users saw
and clicked does not depend on the trainer's schema). An events message stays under
MAX_EVENTS_MESSAGE_BYTES (checked on the encoded bytes).

Delivery, step by step: (1) the exposures and outcomes of what closed, and the Kafka messages
derived from them (events, their dead letters) as rows of `joiner_outbox`, are committed in ONE
database transaction; (2) the outbox is sent and each row is deleted once the broker stored
every message of the send; (3) only then are the Kafka offsets committed, below everything
still held (open exposures, their feedback, batches not written yet). Hence:

    database   exactly once: a re-read exposure already in the database is skipped
    events     at least once: sent only after their rows are committed; never lost (an outbox
               row stays until the broker confirmed it, and is sent again after a restart);
               sent twice only when the process dies, or the outbox delete fails, after a send
               and before its rows are deleted. The ids are deterministic (wire.joined_event_id)
               so a duplicate is recognisable; the trainer does not de-duplicate them today.
    dead letters of unreadable messages: sent before the offsets pass them; a send the broker
               refuses stops the joiner without committing (a restart re-reads: at least once).

A database failure (connection, lock, missing table) never kills the joiner and never lets the
offsets pass the batch: the batch is kept, the input partitions are paused, and the write is
retried with exponential backoff (drain() included). After `isolate_after` failures in a row
the batch is written one exposure per transaction: an exposure the database refuses on its own
(an integrity or data error, e.g. an unknown experiment) is dead-lettered alone, the others go
through. One joiner per database: two would both send the outbox.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import delete, select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from services import wire
from storage.batch import DatasetSchema
from storage.db.models import Exposure, OutboxMessage, Outcome

log = logging.getLogger(__name__)
Offset = tuple[str, int, int]  # topic, partition, offset

MAX_SHOWN = 1000  # items per exposure: the router's limit on candidates per /v1/rank
MAX_FEATURES = 256  # raw features per shown item
MAX_FEATURE_NAME_CHARS = 128
MAX_EVENTS_MESSAGE_BYTES = 512 << 10  # one events message value, far below the broker's 1 MB
MAX_REASON_CHARS = 500
DB_INT_MAX = (1 << 31) - 1  # the Integer columns are 32-bit on PostgreSQL


def _column_chars(column: Any) -> int:
    return int(column.property.columns[0].type.length)


# ------------------------------------------------------------------------------------------
# Exposures and feedback, parsed and bounded on read
# ------------------------------------------------------------------------------------------

Int32 = Annotated[int, Field(ge=0, le=DB_INT_MAX)]
DbId = Annotated[int, Field(ge=1, le=DB_INT_MAX)]
EpochS = Annotated[float, Field(ge=0, lt=wire.MAX_TS_S, allow_inf_nan=False)]
RequestId = Annotated[str, Field(min_length=1, max_length=_column_chars(Exposure.request_id))]
Item = Annotated[str, Field(min_length=1, max_length=_column_chars(Outcome.item))]
RawValue = (Annotated[str, Field(max_length=wire.MAX_STRING_CHARS)]
            | Annotated[int, Field(ge=wire.INT64_MIN, le=wire.INT64_MAX)])
Features = Annotated[dict[Annotated[str, Field(min_length=1, max_length=MAX_FEATURE_NAME_CHARS)],
                          RawValue], Field(max_length=MAX_FEATURES)]
# strict: JSON true is not 1, "7" is not 7; unknown keys are dropped (newer routers may add some)
_STRICT = ConfigDict(strict=True, extra="ignore")


class ShownMsg(BaseModel):
    model_config = _STRICT

    item: Item
    position: Int32
    score: Annotated[float, Field(allow_inf_nan=False)]
    features: Features


class ExposureMsg(BaseModel):
    """An exposure as the router writes it (services/wire/ documents the format); the string
    lengths are the database columns' (unit_id: 256, not wire's 1024, or PostgreSQL refuses)."""

    model_config = _STRICT

    request_id: RequestId
    experiment_id: DbId
    phase: Int32
    arm: Annotated[str, Field(max_length=64)] = ""
    arm_id: DbId
    model: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    model_version: Int32
    unit_id: Annotated[str, Field(max_length=_column_chars(Exposure.unit_id))]
    ts: EpochS
    latency_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    shown: Annotated[list[ShownMsg], Field(max_length=MAX_SHOWN)]


class FeedbackMsg(BaseModel):
    model_config = _STRICT

    request_id: RequestId
    item: Item
    clicked: bool
    ts: EpochS


class BadMessage(ValueError):
    """A message that cannot be joined; str() is the reason its dead letter carries."""


M = TypeVar("M", bound=BaseModel)


def _parse(kind: str, model: type[M], value: bytes | None) -> M:
    if value is None:
        raise BadMessage(f"{kind}: empty value")
    if len(value) > wire.MAX_MESSAGE_BYTES:
        raise BadMessage(f"{kind}: {len(value)} bytes, more than {wire.MAX_MESSAGE_BYTES}")
    try:
        return model.model_validate_json(value)
    except ValidationError as exc:
        # a location may hold a hostile dict key (any length): each part is cut short
        parts = [".".join(str(p)[:40] for p in e["loc"]) + ": " + e["msg"]
                 for e in exc.errors(include_url=False, include_input=False,
                                     include_context=False)[:4]]
        raise BadMessage(f"{kind}: " + "; ".join(parts)[:MAX_REASON_CHARS]) from None


def read_exposure(value: bytes | None) -> tuple[dict[str, Any], int]:
    """A Kafka exposure message -> (its dict, items dropped as repeats). Raises BadMessage.

    An item shown more than once keeps its first showing (list order: the router lists the
    ranking top first), so (request, item) stays the outcomes' key."""
    doc = _parse("exposure", ExposureMsg, value).model_dump()
    seen: set[str] = set()
    shown = [s for s in doc["shown"] if not (s["item"] in seen or seen.add(s["item"]))]
    dropped = len(doc["shown"]) - len(shown)
    doc["shown"] = shown
    return doc, dropped


def read_feedback(value: bytes | None) -> dict[str, Any]:
    """A Kafka feedback message -> its dict. Raises BadMessage."""
    return _parse("feedback", FeedbackMsg, value).model_dump()


# ------------------------------------------------------------------------------------------
# Matching
# ------------------------------------------------------------------------------------------


@dataclass
class Pending:
    exposure: dict[str, Any]
    offset: Offset | None
    clicks: dict[str, float] = field(default_factory=dict)  # item -> feedback ts (in window)
    late: dict[str, int] = field(default_factory=dict)  # item -> clicks outside the window
    held: list[Offset] = field(default_factory=list)  # feedback offsets attached

    @property
    def close_at(self) -> float:
        return float(self.exposure["ts"])


@dataclass
class JoinStats:
    exposures: int = 0
    duplicate_exposures: int = 0
    feedback: int = 0
    clicks: int = 0
    non_clicks: int = 0
    duplicates: int = 0
    late: int = 0
    late_arrivals: int = 0
    early: int = 0
    orphans: int = 0
    unknown_items: int = 0
    closed: int = 0
    events_emitted: int = 0  # sent to `events` and stored by the broker
    dead_letters: int = 0  # unreadable exposure / feedback messages sent to `events.dlq`
    duplicate_items: int = 0  # repeats of an item inside one exposure, dropped
    invalid_events: int = 0  # joined events the trainer would refuse, sent to `events.dlq`
    refused_exposures: int = 0  # exposures the database refused on their own, dead-lettered
    db_failures: int = 0  # failed attempts to write a batch (each retried)


@dataclass
class Closed:
    """A finished exposure: every shown item with its label."""

    exposure: dict[str, Any]
    clicks: dict[str, float]
    late: dict[str, int]
    source: Offset | None = None  # where the exposure was read
    offsets: list[Offset] = field(default_factory=list)  # to hold until written: its own, its
    # feedback's


class JoinState:
    """The matching logic, free of Kafka and the database (unit-testable, deterministic)."""

    def __init__(self, window_s: float, grace_s: float, closed_ttl_s: float | None = None):
        self.window_s = window_s
        self.grace_s = grace_s
        self.closed_ttl_s = closed_ttl_s if closed_ttl_s is not None else 10 * (window_s +
                                                                                grace_s)
        self.pending: dict[str, Pending] = {}
        self.orphans: dict[str, list[tuple[dict[str, Any], Offset | None]]] = {}
        self.orphan_seen: dict[str, float] = {}
        self.closed: dict[str, tuple[float, set[str]]] = {}  # rid -> (closed at, clicked items)
        self.late_updates: list[tuple[str, str]] = []  # (rid, item) late clicks after closing
        self.stats = JoinStats()
        self.watermark = float("-inf")

    def on_exposure(self, exp: dict[str, Any], offset: Offset | None = None) -> None:
        rid = exp["request_id"]
        self.watermark = max(self.watermark, float(exp["ts"]))
        if rid in self.pending or rid in self.closed:
            self.stats.duplicate_exposures += 1
            return
        self.stats.exposures += 1
        p = Pending(exp, offset)
        self.pending[rid] = p
        for fb, off in self.orphans.pop(rid, []):
            self.orphan_seen.pop(rid, None)
            self.stats.early += 1
            self._attach(p, fb, off)

    def on_feedback(self, fb: dict[str, Any], offset: Offset | None = None) -> None:
        rid = fb["request_id"]
        self.stats.feedback += 1
        self.watermark = max(self.watermark, float(fb["ts"]))
        if rid in self.pending:
            self._attach(self.pending[rid], fb, offset)
        elif rid in self.closed:
            clicked = self.closed[rid][1]
            if not fb["clicked"]:
                self.stats.non_clicks += 1
            elif fb["item"] in clicked:
                self.stats.duplicates += 1
            else:
                self.stats.late_arrivals += 1
                self.late_updates.append((rid, fb["item"]))
        else:
            self.orphans.setdefault(rid, []).append((fb, offset))
            self.orphan_seen.setdefault(rid, float(fb["ts"]))

    def _attach(self, p: Pending, fb: dict[str, Any], offset: Offset | None) -> None:
        item = fb["item"]
        if offset is not None:
            p.held.append(offset)
        if item not in {s["item"] for s in p.exposure["shown"]}:
            self.stats.unknown_items += 1
        elif not fb["clicked"]:
            self.stats.non_clicks += 1
        elif float(fb["ts"]) - float(p.exposure["ts"]) > self.window_s:
            self.stats.late += 1
            p.late[item] = p.late.get(item, 0) + 1
        elif item in p.clicks:
            self.stats.duplicates += 1
        else:
            self.stats.clicks += 1
            p.clicks[item] = float(fb["ts"])

    def advance(self, now: float | None = None) -> list[Closed]:
        """Close every exposure whose window and grace have passed `now` (default: the newest
        timestamp seen); drop orphans that waited as long."""
        mark = self.watermark if now is None else now
        horizon = self.window_s + self.grace_s
        done = [rid for rid, p in self.pending.items() if p.close_at + horizon <= mark]
        for rid, seen in list(self.orphan_seen.items()):
            if seen + horizon <= mark:
                self.stats.orphans += len(self.orphans.pop(rid, []))
                del self.orphan_seen[rid]
        for rid, (at, _) in list(self.closed.items()):
            if at + self.closed_ttl_s <= mark:
                del self.closed[rid]
        return self._close(done, mark)

    def close_all(self) -> list[Closed]:
        """Close everything open (shutdown, end of a test); orphans count as orphans."""
        for rid in list(self.orphans):
            self.stats.orphans += len(self.orphans.pop(rid))
        self.orphan_seen.clear()
        return self._close(list(self.pending), self.watermark)

    def _close(self, rids: list[str], mark: float) -> list[Closed]:
        out = []
        for rid in rids:
            p = self.pending.pop(rid)
            self.closed[rid] = (mark, set(p.clicks))
            out.append(Closed(p.exposure, p.clicks, p.late, p.offset,
                              [o for o in [p.offset, *p.held] if o is not None]))
        self.stats.closed += len(out)
        return out

    def held_offsets(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the lowest offset still needed after a restart."""
        held = [o for p in self.pending.values() for o in [p.offset, *p.held] if o is not None]
        held += [o for fbs in self.orphans.values() for _, o in fbs if o is not None]
        return lowest(held)


def lowest(offsets: list[Offset]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the lowest of `offsets` on it."""
    low: dict[tuple[str, int], int] = {}
    for topic, part, off in offsets:
        key = (topic, part)
        low[key] = min(low.get(key, off), off)
    return low


# ------------------------------------------------------------------------------------------
# Database rows and outgoing messages
# ------------------------------------------------------------------------------------------


def closed_to_events(closed: Closed, schema: str) -> list[dict[str, Any]]:
    """One click event per shown item (wire format), label = clicked inside the window."""
    exp = closed.exposure
    return [{"event_id": wire.joined_event_id(exp["request_id"], s["item"]),
             "ts": float(exp["ts"]), "label": int(s["item"] in closed.clicks),
             "unit_id": str(exp["unit_id"]), "features": s["features"], "schema": schema}
            for s in exp["shown"]]


def write_outcomes(session: Session, closed: list[Closed],
                   late_updates: list[tuple[str, str]]) -> list[Closed]:
    """Insert exposures and outcomes of `closed` not yet in the database; add late clicks.
    Returns the ones inserted (the others were written before a restart)."""
    rids = [c.exposure["request_id"] for c in closed]
    known = set(session.scalars(select(Exposure.request_id)
                                .where(Exposure.request_id.in_(rids)))) if rids else set()
    fresh = [c for c in closed if c.exposure["request_id"] not in known]
    for c in fresh:
        e = c.exposure
        session.add(Exposure(request_id=e["request_id"], experiment_id=int(e["experiment_id"]),
                             phase=int(e["phase"]), arm_id=int(e["arm_id"]),
                             unit_id=str(e["unit_id"]), model_version=int(e["model_version"]),
                             ts=float(e["ts"]), latency_ms=float(e["latency_ms"]),
                             n_shown=len(e["shown"])))
    session.flush()
    for c in fresh:
        e = c.exposure
        session.add_all([Outcome(request_id=e["request_id"], item=s["item"],
                                 position=int(s["position"]), score=float(s["score"]),
                                 clicked=s["item"] in c.clicks,
                                 late_feedback=c.late.get(s["item"], 0), ts=float(e["ts"]))
                         for s in e["shown"]])
    for rid, item in late_updates:
        row = session.get(Outcome, (rid, item))
        if row is not None:
            row.late_feedback += 1
    session.flush()
    return fresh


@dataclass
class Outbound:
    """The Kafka messages derived from closed exposures."""

    events: list[tuple[bytes, int]] = field(default_factory=list)  # (value, events in it)
    dead: list[bytes] = field(default_factory=list)  # dead letters of refused events


def joined_messages(closed: list[Closed], schema_for: Callable[[str], DatasetSchema],
                    exposures_topic: str, limit: int = MAX_EVENTS_MESSAGE_BYTES) -> Outbound:
    """Events of `closed`, validated as the trainer will (one wire.validate_events call per
    schema), packed into messages of at most `limit` encoded bytes; the refused ones as dead
    letters naming their exposure's offset and their index in `shown`."""
    groups: dict[tuple, tuple[DatasetSchema, list[dict[str, Any]], list[tuple[Closed, int]]]] = {}
    for c in closed:
        schema = schema_for(c.exposure["model"])
        events = closed_to_events(c, schema.name)
        _, evs, origin = groups.setdefault((schema.name, schema.fields, schema.dense),
                                           (schema, [], []))
        evs.extend(events)
        origin.extend((c, k) for k in range(len(events)))
    out = Outbound()
    encoded: list[bytes] = []
    for schema, evs, origin in groups.values():
        refused = dict(wire.validate_events(evs, schema)[1])
        for i, ev in enumerate(evs):
            enc = orjson.dumps(ev)
            reason = refused.get(i)
            if reason is None and len(enc) + 2 > limit:
                reason = f"event: {len(enc)} bytes encoded, more than a message's {limit}"
            if reason is None:
                encoded.append(enc)
                continue
            c, k = origin[i]
            topic, part, off = c.source or (exposures_topic, -1, -1)
            out.dead.append(wire.dlq_record(reason, enc, topic, part, off, k))
    out.events = pack_events(encoded, limit)
    return out


def pack_events(encoded: list[bytes], limit: int) -> list[tuple[bytes, int]]:
    """Encoded events -> [(JSON array message, count)], each message at most `limit` bytes
    and wire.MAX_EVENTS_PER_MESSAGE events (the same bytes orjson gives for the list)."""
    out: list[tuple[bytes, int]] = []
    run: list[bytes] = []
    size = 2  # the brackets
    for enc in encoded:
        if run and (size + len(enc) + 1 > limit or len(run) >= wire.MAX_EVENTS_PER_MESSAGE):
            out.append((b"[" + b",".join(run) + b"]", len(run)))
            run, size = [], 2
        run.append(enc)
        size += len(enc) + 1
    if run:
        out.append((b"[" + b",".join(run) + b"]", len(run)))
    return out


class Unavailable(RuntimeError):
    """Something the write needs, other than the database, is not available now (retry)."""


def _short(exc: BaseException) -> str:
    """`Type: message` of a (database) error, without SQLAlchemy's statement and parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).split("\n", 1)[0]
    return f"{type(exc).__name__}: {text}"[:MAX_REASON_CHARS]


def row_at_fault(exc: BaseException) -> bool:
    """Whether writing one exposure failed because of its data (dead-letter it) rather than
    the database being unavailable (retry): integrity and data errors, and anything that is
    not a database error at all, come from the rows; connections, locks, timeouts and missing
    tables do not."""
    if isinstance(exc, IntegrityError | DataError):
        return True
    return not isinstance(exc, DBAPIError | PoolTimeout | OSError | Unavailable)


# ------------------------------------------------------------------------------------------
# The service
# ------------------------------------------------------------------------------------------


class DeliveryError(RuntimeError):
    """The broker did not store a dead letter: the joiner stops before committing past it."""


class JoinerService:
    """Kafka in (exposures, feedback), Kafka out (events, events.dlq), database writes.

        svc = JoinerService(bootstrap, factory, schema_for=lambda model: SCHEMA,
                            window_s=30.0, grace_s=5.0)
        svc.run(stop=event.is_set)        # or svc.step() in a loop
        svc.drain(); svc.close()

    `schema_for(model)` gives the DatasetSchema the model's trainer validates events with.
    """

    def __init__(self, bootstrap: str, factory: sessionmaker[Session],
                 schema_for: Callable[[str], DatasetSchema], window_s: float, grace_s: float,
                 wall_clock: bool = True, group_id: str = "joiner",
                 exposures_topic: str = wire.EXPOSURES_TOPIC,
                 feedback_topic: str = wire.FEEDBACK_TOPIC,
                 events_topic: str = wire.EVENTS_TOPIC, dlq_topic: str = wire.DLQ_TOPIC,
                 max_poll_interval_ms: int = 5000, on_tick: Callable[[], None] | None = None,
                 retry_s: float = 1.0, max_retry_s: float = 30.0, isolate_after: int = 3,
                 outbox_batch: int = 200) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        from services.messaging.confirmed import ConfirmedProducer

        self.state = JoinState(window_s, grace_s)
        self.factory = factory
        self.schema_for = schema_for
        self.wall_clock = wall_clock
        self.events_topic = events_topic
        self.dlq_topic = dlq_topic
        self.on_tick = on_tick
        self.retry_s, self.max_retry_s = retry_s, max_retry_s
        self.isolate_after = isolate_after
        self.outbox_batch = outbox_batch
        self.consumer = KafkaConsumer(
            exposures_topic, feedback_topic, bootstrap_servers=bootstrap, group_id=group_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_interval_ms=max_poll_interval_ms, session_timeout_ms=6000,
            heartbeat_interval_ms=2000)
        self.producer = ConfirmedProducer(KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", retries=10, linger_ms=5))
        self.exposures_topic = exposures_topic
        self.messages = 0
        self.source_max: dict[Any, float] = {}  # TopicPartition -> newest ts read from it
        self.backlog: list[Closed] = []  # closed, not written yet (the database failed)
        self.backlog_late: list[tuple[str, str]] = []
        self.failures = 0  # failed writes of the backlog in a row
        self.retry_at = 0.0  # time.monotonic() of the next attempt
        self.outbox_pending = True  # a previous run may have left messages in the outbox
        self.failed_seen = self.producer.failed

    def step(self, timeout_ms: int = 200) -> int:
        """One poll -> match -> close -> write -> send -> commit round; returns messages read."""
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=2000)
        n = 0
        for tp, msgs in polled.items():
            for m in msgs:
                n += 1
                self._read(tp, m)
        self.messages += n
        mark = self._watermark()
        if self.wall_clock:
            mark = max(mark, time.time())
        self.finish(self.state.advance(mark))
        return n

    def _read(self, tp: Any, m: Any) -> None:
        where = (tp.topic, tp.partition, m.offset)
        try:
            if tp.topic == self.exposures_topic:
                doc, repeats = read_exposure(m.value)
                self.state.stats.duplicate_items += repeats
            else:
                doc = read_feedback(m.value)
        except BadMessage as exc:
            log.warning("joiner: dead-lettering %s:%d:%d (%s)", *where, exc)
            self.producer.send(self.dlq_topic, wire.dlq_record(str(exc), m.value or b"",
                                                                 *where, None))
            self.state.stats.dead_letters += 1
            return
        self.source_max[tp] = max(self.source_max.get(tp, float("-inf")), doc["ts"])
        if tp.topic == self.exposures_topic:
            self.state.on_exposure(doc, where)
        else:
            self.state.on_feedback(doc, where)

    def _watermark(self) -> float:
        """Event time every input has reached: the minimum, over partitions with unread
        messages, of the newest timestamp read from each (the other topic may lag, so the
        newest timestamp overall would close windows before their feedback is read);
        when every partition is caught up, the newest timestamp read."""
        assigned = self.consumer.assignment()
        if not assigned:
            return float("-inf")
        ends = self.consumer.end_offsets(list(assigned))
        lagging = [tp for tp in assigned if self.consumer.position(tp) < ends.get(tp, 0)]
        if lagging:
            return min(self.source_max.get(tp, float("-inf")) for tp in lagging)
        return max(self.source_max.values(), default=float("-inf"))

    def finish(self, closed: list[Closed], force: bool = False) -> None:
        """Write what closed (and what earlier attempts left: when their backoff is over, or
        now with `force`), send the outbox, commit the offsets that are safe."""
        self.backlog += closed
        self.backlog_late += self.state.late_updates
        self.state.late_updates = []
        if (self.backlog or self.backlog_late) and (force or time.monotonic() >= self.retry_at):
            self._write_backlog()
        self._flush_checked()
        self._send_outbox()
        self._commit()
        self._throttle()
        if self.on_tick is not None:
            self.on_tick()

    def _write_backlog(self) -> None:
        try:
            self._write(self.backlog, self.backlog_late)
        except Exception as exc:  # noqa: BLE001 - a failed batch is kept and retried
            self.failures += 1
            self.state.stats.db_failures += 1
            log.warning("joiner: writing %d exposures failed (attempt %d): %s",
                        len(self.backlog), self.failures, _short(exc))
            # an error of the rows will not go away: find them now; the database's may
            if row_at_fault(exc) or self.failures >= self.isolate_after:
                self._write_one_by_one()
            if self.backlog or self.backlog_late:
                delay = min(self.max_retry_s, self.retry_s * 2 ** (self.failures - 1))
                self.retry_at = time.monotonic() + delay
                return
        self.backlog, self.backlog_late, self.failures = [], [], 0

    def _write(self, closed: list[Closed], late: list[tuple[str, str]]) -> None:
        """One transaction: the exposures and outcomes not yet in the database, the late
        clicks, and the Kafka messages derived from them into the outbox."""
        try:
            schemas = {m: self.schema_for(m) for m in {c.exposure["model"] for c in closed}}
        except Exception as exc:  # noqa: BLE001 - e.g. Redis down: retry, blame no exposure
            raise Unavailable(f"schema_for: {_short(exc)}") from exc
        now = time.time()
        with self.factory.begin() as s:
            fresh = write_outcomes(s, closed, late)
            out = joined_messages(fresh, schemas.__getitem__, self.exposures_topic)
            s.add_all([OutboxMessage(topic=self.events_topic, payload=v, n_events=k,
                                     created_at=now) for v, k in out.events]
                      + [OutboxMessage(topic=self.dlq_topic, payload=d, n_events=0,
                                       created_at=now) for d in out.dead])
        self.state.stats.invalid_events += len(out.dead)
        if out.events or out.dead:
            self.outbox_pending = True

    def _write_one_by_one(self) -> None:
        """Each exposure of the backlog in its own transaction: one the database refuses on
        its own (integrity, data) is dead-lettered, the others go through; the first failure
        of the database itself stops the round (the rest stays for the next attempt). Any
        other error is blamed on its exposure only when another exposure of the round went
        through: a bug that fails them all must not empty the backlog into the DLQ."""
        kept: list[Closed] = []
        suspects: list[tuple[Closed, str]] = []
        written = 0
        for i, c in enumerate(self.backlog):
            try:
                self._write([c], [])
                written += 1
            except Exception as exc:  # noqa: BLE001 - sorted below
                if not row_at_fault(exc):
                    kept += self.backlog[i:]
                    break
                if isinstance(exc, IntegrityError | DataError):
                    self._refuse(c, f"database refused the exposure: {_short(exc)}")
                else:
                    suspects.append((c, f"writing the exposure failed: {_short(exc)}"))
        for c, reason in suspects:
            if written:
                self._refuse(c, reason)
            else:
                log.error("joiner: every exposure of the batch failed (%s); kept, retried",
                          reason)
                kept.append(c)
        self.backlog = kept
        late: list[tuple[str, str]] = []
        for update in self.backlog_late:
            try:
                self._write([], [update])
            except Exception as exc:  # noqa: BLE001 - sorted below
                if not row_at_fault(exc):
                    late.append(update)
                else:
                    log.warning("joiner: dropping late click %s (%s)", update, _short(exc))
        self.backlog_late = late

    def _refuse(self, c: Closed, reason: str) -> None:
        log.warning("joiner: dead-lettering exposure %s (%s)", c.exposure["request_id"], reason)
        self.producer.send(self.dlq_topic, wire.dlq_record(
            reason, orjson.dumps(c.exposure), *(c.source or (self.exposures_topic, -1, -1)),
            None))
        self.state.stats.refused_exposures += 1

    def _flush_checked(self) -> None:
        """Wait for the dead letters sent so far; one the broker did not store stops the
        joiner before its offset is committed (a restart reads the message again)."""
        self.producer.flush()
        if self.producer.failed != self.failed_seen:
            self.failed_seen = self.producer.failed
            raise DeliveryError("joiner: a dead letter was not stored by the broker: "
                                + getattr(self.producer, "last_error", ""))

    def _send_outbox(self) -> None:
        """Send what the outbox holds (this step's rows, or those a previous run left) and
        delete the rows once the broker stored every message of the send; on a failure the
        rows stay and are sent again on the next step."""
        while self.outbox_pending:
            try:
                with self.factory() as s:
                    rows = s.execute(select(OutboxMessage.id, OutboxMessage.topic,
                                            OutboxMessage.payload, OutboxMessage.n_events)
                                     .order_by(OutboxMessage.id)
                                     .limit(self.outbox_batch)).all()
            except SQLAlchemyError as exc:
                log.warning("joiner: reading the outbox failed: %s", _short(exc))
                return
            for r in rows:
                self.producer.send(r.topic, r.payload)
            self.producer.flush()
            if self.producer.failed != self.failed_seen:
                self.failed_seen = self.producer.failed
                log.error("joiner: the broker did not store every outbox message (%s); "
                          "sending them again later", getattr(self.producer, "last_error", ""))
                return
            try:
                with self.factory.begin() as s:
                    s.execute(delete(OutboxMessage).where(
                        OutboxMessage.id.in_([r.id for r in rows])))
            except SQLAlchemyError as exc:
                log.warning("joiner: deleting sent outbox rows failed (they will be sent "
                            "again): %s", _short(exc))
                return
            self.state.stats.events_emitted += sum(r.n_events for r in rows)
            self.outbox_pending = len(rows) == self.outbox_batch

    def _commit(self) -> None:
        """Commit, per partition, the position or the lowest offset still held (open
        exposures and their feedback, orphans, closed exposures not written yet)."""
        from kafka.structs import OffsetAndMetadata

        held = self.state.held_offsets()
        for key, off in lowest([o for c in self.backlog for o in c.offsets]).items():
            held[key] = min(held.get(key, off), off)
        offsets = {}
        for tp in self.consumer.assignment():
            pos = self.consumer.position(tp)
            safe = min(pos, held.get((tp.topic, tp.partition), pos))
            offsets[tp] = OffsetAndMetadata(safe, "", -1)
        if offsets:
            self.consumer.commit(offsets)

    def _throttle(self) -> None:
        """While a batch waits for the database, read no further: memory stays bounded, and
        the poll still runs, so the consumer keeps its place in the group."""
        if self.backlog or self.backlog_late:
            self.consumer.pause(*self.consumer.assignment())
        elif self.consumer.paused():
            self.consumer.resume(*self.consumer.paused())

    def drain(self) -> None:
        """Close every open exposure now and write what is held (shutdown, the end of a
        test); what the database refuses stays held: its offsets are not committed."""
        self.finish(self.state.close_all(), force=True)

    def run(self, stop: Callable[[], bool]) -> None:
        while not stop():
            self.step()

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()
