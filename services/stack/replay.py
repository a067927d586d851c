"""Replay a data set into Kafka as click events (services.wire), in the readers' order, which is
event-time order.

    stats = replay_dataset(settings, "movielens-100k", topic="events", rate=5000)

Several events go in one Kafka message, `batch_events` of them: kafka-python costs ~100 us per
send(), so one event per message would cap a replay near 10k events/s. The message is Arrow IPC
columns (wire/arrow_events.py: built from the reader's arrays, no Python per event, and read
that way by the trainer) unless `fmt="json"` (a JSON array, what external producers send).
Event ids are `{id_prefix}:{row_no}` (row_no from 0 in stream order, id_prefix defaulting to
the spec), so a replay of the same data gives the same ids. `rate` is events per second
through a token bucket (None: as fast as the broker takes them). A message counts as sent once
the broker gave it an offset (services/messaging/confirmed.py: one acknowledged without is
sent again).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from kafka import KafkaProducer

from services import wire
from services.messaging.confirmed import ConfirmedProducer
from storage.batch import SparseBatch
from storage.datasets.spec import open_dataset
from storage.settings import Settings


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up. take(n) blocks (sleeping, never
    spinning) until n tokens are there."""

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = float(rate)
        self.burst = max(float(burst), 1.0)
        self.tokens = self.burst
        self.t = time.monotonic()

    def take(self, n: float) -> float:
        """Wait until n tokens are available and spend them; returns seconds waited."""
        waited = 0.0
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now
            if self.tokens >= n or (n > self.burst and self.tokens >= self.burst):
                self.tokens -= n  # a request above the burst size may go negative: it waits
                return waited  # its debt off before the next one
            need = (min(n, self.burst) - self.tokens) / self.rate
            time.sleep(need)  # rate limiting: the wait is the point
            waited += need


def unit_head(units: np.ndarray, share: float) -> np.ndarray:
    """bool[N]: whether each row is among the first floor(share x n_u) rows of its unit u, in
    the given order (n_u: the unit's rows). The replay's per-unit warm-up and the simulated
    users' sessions (the rest) split a data set with it:

        unit_head(np.array([7, 7, 3, 7, 3]), 0.5)   # -> [True, False, True, False, False]
    """
    units = np.asarray(units)
    order = np.argsort(units, kind="stable")
    _, start, counts = np.unique(units[order], return_index=True, return_counts=True)
    rank, total = np.empty(len(units), np.int64), np.empty(len(units), np.int64)
    rank[order] = np.arange(len(units)) - np.repeat(start, counts)
    total[order] = np.repeat(counts, counts)
    return rank < np.floor(share * total)


@dataclass
class ReplayStats:
    events: int
    messages: int
    seconds: float
    failed_messages: int
    checksum: int  # wire.event_id_checksum of every event id sent
    resent_messages: int = 0  # acknowledged without an offset, sent again (services/confirmed)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


def parse_rate(text: str) -> float | None:
    """"max" -> None (unthrottled), else a positive number per second (events for the replay,
    sessions for the simulated users): the one reading of every --rate option."""
    if text.strip().lower() in ("max", "inf", "0", ""):
        return None
    try:
        rate = float(text)
    except ValueError:
        raise ValueError(f"expected a number or 'max', got {text!r}") from None
    if not rate > 0:
        raise ValueError(f"rate must be positive or 'max', got {text!r}")
    return rate


def make_producer(bootstrap: str) -> KafkaProducer:
    """acks=all with retries: a replayed event is in the log before replay counts it sent."""
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=10, linger_ms=5,
                         batch_size=1 << 20, max_request_size=wire.MAX_MESSAGE_BYTES + 4096,
                         max_in_flight_requests_per_connection=1)


def _messages(batch: SparseBatch, ids: list[str], per_msg: int,
              fmt: str) -> Iterator[tuple[bytes, int]]:
    """(message value, events in it) for the rows of `batch`, `per_msg` events a message."""
    if fmt == "arrow":
        for a in range(0, len(batch), per_msg):
            part = batch.take(slice(a, a + per_msg))
            yield wire.encode_arrow(part, ids[a : a + per_msg]), len(part)
        return
    events = wire.batch_to_events(batch, ids)
    for a in range(0, len(events), per_msg):
        chunk = events[a : a + per_msg]
        yield wire.encode_events(chunk), len(chunk)


def replay_dataset(settings: Settings, spec: str, topic: str = wire.EVENTS_TOPIC,
                   rate: float | None = None, batch_events: int | None = None,
                   limit: int | None = None, id_prefix: str | None = None,
                   progress: Callable[[int], None] | None = None,
                   producer: KafkaProducer | None = None,
                   fmt: Literal["arrow", "json"] = "arrow",
                   unit_share: float | None = None) -> ReplayStats:
    """Stream `spec` into `topic`; `progress(n_events)` after each message. See module doc.
    `unit_share`: only each unit's first share of its events (`unit_head`; the data set must
    have unit ids), e.g. a warm-up that leaves every user's later events to the simulated
    users."""
    ds = open_dataset(spec, settings.data_dir)
    head = None
    if unit_share is not None:
        units = [b.unit_ids for b in ds.batches(1 << 16)]
        if any(u is None for u in units):
            raise ValueError(f"{spec}: no unit ids, so no per-unit share")
        head = unit_head(np.concatenate(units) if units else np.zeros(0, np.int64), unit_share)
    read = 0
    default = settings.replay.arrow_batch_events if fmt == "arrow" else settings.replay.batch_events
    per_msg = max(1, batch_events or default)
    prefix = id_prefix if id_prefix is not None else ds.spec
    bucket = TokenBucket(rate, burst=max(per_msg, rate * 0.1)) if rate else None
    own = producer is None
    prod = ConfirmedProducer(producer or make_producer(settings.kafka.bootstrap))
    sent = messages = 0
    checksum = 0
    t0 = time.perf_counter()
    try:
        for batch in ds.batches(per_msg * 32):
            if head is not None:
                read += len(batch)
                batch = batch.take(np.flatnonzero(head[read - len(batch):read]))
                if not len(batch):
                    continue
            if limit is not None:
                if sent >= limit:
                    break
                if sent + len(batch) > limit:
                    batch = batch.take(slice(0, limit - sent))
            ids = [f"{prefix}:{row}" for row in range(sent, sent + len(batch))]
            checksum = wire.add_checksums(checksum, wire.event_id_checksum(ids))
            for value, n in _messages(batch, ids, per_msg, fmt):
                if bucket is not None:
                    bucket.take(n)
                prod.send(topic, value)
                messages += 1
                sent += n
                if progress is not None:
                    progress(n)
        prod.flush()
    finally:
        if own:
            prod.close()
    return ReplayStats(sent, messages, time.perf_counter() - t0, prod.failed, checksum,
                       prod.resent)
