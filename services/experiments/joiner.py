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

Hostile input. Every message is parsed into a typed record on read (wire.read_exposure,
wire.read_feedback: types, int ranges that fit the database's columns, finite numbers, bounded
strings, at most MAX_SHOWN items); one that fails goes ALONE to `events.dlq` (wire.dlq_record,
with the reason) and the rest of the poll proceeds. An item shown twice in one exposure is
de-duplicated, not rejected: its first showing is kept (`duplicate_items` counts the rest), so
the request still counts in its experiment. The joined events are checked with the trainer's
own validator (wire.validate_events, the model's DatasetSchema) before they are sent: an event
it would refuse goes to `events.dlq` (`event_index` = the item's place in `shown`) instead of
`events`, while its exposure and outcomes are still written (the A/B record of what users saw
and clicked does not depend on the trainer's schema). An events message stays under
MAX_EVENTS_MESSAGE_BYTES (checked on the encoded bytes).

The parts: the typed records in services/wire/ (exposures.py, feedback.py), the matching in
join_state.py (JoinState), the rows and messages a closed exposure becomes in join_store.py,
the delivery below (JoinerService).

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
from typing import Any

import orjson
from sqlalchemy import delete, select
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from services import wire
from services.experiments.join_state import Closed, JoinState, lowest
from services.experiments.join_store import (
    Unavailable,
    joined_messages,
    row_at_fault,
    short_error,
    write_outcomes,
)
from storage.batch import DatasetSchema
from storage.db.models import OutboxMessage

log = logging.getLogger(__name__)


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
                doc, repeats = wire.read_exposure(m.value)
                self.state.stats.duplicate_items += repeats
            else:
                doc = wire.read_feedback(m.value)
        except wire.BadMessage as exc:
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
                        len(self.backlog), self.failures, short_error(exc))
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
            raise Unavailable(f"schema_for: {short_error(exc)}") from exc
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
                    self._refuse(c, f"database refused the exposure: {short_error(exc)}")
                else:
                    suspects.append((c, f"writing the exposure failed: {short_error(exc)}"))
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
                    log.warning("joiner: dropping late click %s (%s)", update, short_error(exc))
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
                log.warning("joiner: reading the outbox failed: %s", short_error(exc))
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
                            "again): %s", short_error(exc))
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
