"""The joiner's matching, free of Kafka and the database (unit-testable, deterministic).

Exposures and feedback come in as the dicts wire.read_exposure / wire.read_feedback give,
each with the Kafka offset it was read at; what closes comes out as `Closed` (every shown
item, the in-window clicks, the late ones, the offsets to hold until it is written). The
attribution rules and the counters are the joiner's (services/experiments/joiner.py).

    state = JoinState(window_s=30.0, grace_s=5.0)
    state.on_exposure(exp, ("exposures", 0, 17)); state.on_feedback(fb, ("feedback", 0, 4))
    closed = state.advance(now)          # -> [Closed] whose window + grace passed `now`
    state.held_offsets()                 # -> {(topic, partition): lowest offset still needed}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
