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

Restarts: offsets are committed only below the oldest message still held (open exposures and
the feedback attached to them), so a crash re-reads what was not finished; exposures already
in the database are skipped on re-read (their events are not emitted twice, except those of
the one batch in flight when the process died: at-least-once for `events`, exactly once for
the database).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services import wire
from storage.db.models import Exposure, Outcome

log = logging.getLogger(__name__)
Offset = tuple[str, int, int]  # topic, partition, offset


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
    events_emitted: int = 0


@dataclass
class Closed:
    """A finished exposure: every shown item with its label."""

    exposure: dict[str, Any]
    clicks: dict[str, float]
    late: dict[str, int]


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
            out.append(Closed(p.exposure, p.clicks, p.late))
        self.stats.closed += len(out)
        return out

    def held_offsets(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the lowest offset still needed after a restart."""
        low: dict[tuple[str, int], int] = {}
        held = [o for p in self.pending.values() for o in [p.offset, *p.held] if o is not None]
        held += [o for fbs in self.orphans.values() for _, o in fbs if o is not None]
        for topic, part, off in held:
            key = (topic, part)
            low[key] = min(low.get(key, off), off)
        return low


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
    return fresh


class JoinerService:
    """Kafka in (exposures, feedback), Kafka out (events), database writes.

        svc = JoinerService(settings_like..., factory, schema_for=lambda model: "movielens")
        svc.run(stop=event.is_set)        # or svc.step() in a loop
    """

    def __init__(self, bootstrap: str, factory: sessionmaker[Session],
                 schema_for: Callable[[str], str], window_s: float, grace_s: float,
                 wall_clock: bool = True, group_id: str = "joiner",
                 exposures_topic: str = wire.EXPOSURES_TOPIC,
                 feedback_topic: str = wire.FEEDBACK_TOPIC,
                 events_topic: str = wire.EVENTS_TOPIC, max_poll_interval_ms: int = 5000,
                 on_tick: Callable[[], None] | None = None) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        from services.confirmed import ConfirmedProducer

        self.state = JoinState(window_s, grace_s)
        self.factory = factory
        self.schema_for = schema_for
        self.wall_clock = wall_clock
        self.events_topic = events_topic
        self.on_tick = on_tick
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

    def step(self, timeout_ms: int = 200) -> int:
        """One poll -> match -> close -> write -> commit round; returns messages read."""
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=2000)
        n = 0
        for tp, msgs in polled.items():
            for m in msgs:
                n += 1
                try:
                    doc = orjson.loads(m.value)
                    self.source_max[tp] = max(self.source_max.get(tp, float("-inf")),
                                              float(doc["ts"]))
                    if tp.topic == self.exposures_topic:
                        self.state.on_exposure(doc, (tp.topic, tp.partition, m.offset))
                    else:
                        self.state.on_feedback(doc, (tp.topic, tp.partition, m.offset))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    log.warning("joiner: skipping unreadable message %s:%d:%d (%s)", tp.topic,
                                tp.partition, m.offset, exc)
        self.messages += n
        mark = self._watermark()
        if self.wall_clock:
            mark = max(mark, time.time())
        self.finish(self.state.advance(mark), polled)
        return n

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

    def finish(self, closed: list[Closed], polled: dict | None = None) -> None:
        """Write what closed, emit its events, commit the offsets that are safe."""
        late = self.state.late_updates
        self.state.late_updates = []
        if closed or late:
            with self.factory.begin() as s:
                fresh = write_outcomes(s, closed, late)
                events = [ev for c in fresh
                          for ev in closed_to_events(c, self.schema_for(c.exposure["model"]))]
                for a in range(0, len(events), 500):
                    self.producer.send(self.events_topic, wire.encode_events(events[a:a + 500]))
                self.producer.flush()
                self.state.stats.events_emitted += len(events)
        self._commit(polled)
        if self.on_tick is not None:
            self.on_tick()

    def _commit(self, polled: dict | None) -> None:
        from kafka.structs import OffsetAndMetadata

        held = self.state.held_offsets()
        offsets = {}
        for tp in self.consumer.assignment():
            pos = self.consumer.position(tp)
            safe = min(pos, held.get((tp.topic, tp.partition), pos))
            offsets[tp] = OffsetAndMetadata(safe, "", -1)
        if offsets:
            self.consumer.commit(offsets)

    def drain(self) -> None:
        """Close every open exposure now (shutdown or end of a test)."""
        self.finish(self.state.close_all())

    def run(self, stop: Callable[[], bool]) -> None:
        while not stop():
            self.step()

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()
