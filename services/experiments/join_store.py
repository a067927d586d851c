"""What a closed exposure becomes: database rows (exposures, outcomes) and the Kafka messages
derived from them (labelled click events, the dead letters of events the trainer would
refuse), ready for the joiner's outbox; and how a failed write is classified.

    with factory.begin() as s:
        fresh = write_outcomes(s, closed, late)         # the ones not written before
        out = joined_messages(fresh, schema_for, "exposures")
        # out.events: [(JSON array value, n events)], each <= MAX_EVENTS_MESSAGE_BYTES
        # out.dead:   [dead letter value]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from sqlalchemy import select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from services import wire
from services.experiments.join_state import Closed
from storage.batch import DatasetSchema
from storage.db.models import Exposure, Outcome

MAX_EVENTS_MESSAGE_BYTES = 512 << 10  # one events message value, far below the broker's 1 MB
MAX_REASON_CHARS = 500  # of an error's text in a dead letter or a log line


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
        clicked = [s["item"] in c.clicks for s in e["shown"]]
        session.add(Exposure(request_id=e["request_id"], experiment_id=int(e["experiment_id"]),
                             phase=int(e["phase"]), arm_id=int(e["arm_id"]),
                             unit_id=str(e["unit_id"]), model_version=int(e["model_version"]),
                             ts=float(e["ts"]), latency_ms=float(e["latency_ms"]),
                             n_shown=len(e["shown"]), clicks=sum(clicked),
                             log_loss=served_log_loss([float(s["score"]) for s in e["shown"]],
                                                      clicked)))
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


def served_log_loss(scores: list[float], clicked: list[bool]) -> float:
    """Sum of the log losses of served scores (clipped to [1e-7, 1 - 1e-7], as scikit-learn's
    log_loss does) against the clicks: what the report divides by the items shown."""
    p = np.clip(np.asarray(scores, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(clicked, bool)
    return float(-(np.log(p[y]).sum() + np.log1p(-p[~y]).sum()))


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


def short_error(exc: BaseException) -> str:
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
