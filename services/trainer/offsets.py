"""The trainer's per-partition offsets and its queue of events polled but not yet trained on:
the bookkeeping of the exactly-once protocol that services/trainer/loop.py's docstring states.

    book = OffsetBook(start="earliest")
    consumer.subscribe([topic], listener=book.listener(consumer))
    for m in book.unseen(tp, msgs): ... book.add(tp, m.offset, batch)   # batch may be empty
    batches = book.take()         # train on them, in order; then
    book.commit()                 # applied := consumed
    book.named()                  # {"events:0": 1234, ...}: what a checkpoint records

`applied[tp]` is the next offset after the last applied event, `consumed[tp]` the next after
the last queued one; a revocation drops the queued events of the revoked partitions and
rewinds `consumed` to `applied`, and an assignment seeks to `applied`, so they are read again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition

from services import wire

log = logging.getLogger("chunkrec.trainer")


def tp_name(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


class OffsetBook:
    """See module docstring. `start` ("earliest" or "latest") places a partition that has no
    offset yet."""

    def __init__(self, start: str) -> None:
        self.start = start
        self.applied: dict[TopicPartition, int] = {}  # next offset after the last applied event
        self.consumed: dict[TopicPartition, int] = {}  # next offset after the last queued one
        self.queue: list[tuple[TopicPartition, wire.EventBatch]] = []
        self.fresh: set[TopicPartition] = set()  # assigned, no offset known yet
        self.assigned_at: float | None = None  # monotonic time of the latest assignment
        self.consumer: KafkaConsumer | None = None

    def listener(self, consumer: KafkaConsumer) -> ConsumerRebalanceListener:
        self.consumer = consumer
        return _Rebalance(self)

    def resume_at(self, offsets: dict[str, int]) -> None:
        """Seek every partition of a checkpoint's offsets ("topic:partition" -> next offset)
        when it is assigned."""
        for name, off in offsets.items():
            topic, _, part = name.rpartition(":")
            tp = TopicPartition(topic, int(part))
            self.applied[tp] = self.consumed[tp] = int(off)

    def named(self) -> dict[str, int]:
        """The applied offsets as a checkpoint and a version record write them."""
        return {tp_name(tp): off for tp, off in self.applied.items()}

    # ---------------------------------------------------------------- rebalances
    def on_revoked(self, revoked: set[TopicPartition]) -> None:
        # queued events of a revoked partition are re-read after the next assignment's seek
        self.queue = [(tp, b) for tp, b in self.queue if tp not in revoked]
        for tp in revoked:
            if tp in self.applied:
                self.consumed[tp] = self.applied[tp]

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        assert self.consumer is not None
        for tp in assigned:
            if tp in self.applied:
                self.consumer.seek(tp, self.applied[tp])
                self.consumed[tp] = self.applied[tp]
        fresh = [tp for tp in assigned if tp not in self.applied]
        if fresh:
            # seeks only mark the reset; position() would block the IO thread this runs on,
            # so fresh partitions get their offsets in `resolve_fresh` after the poll
            if self.start == "latest":
                self.consumer.seek_to_end(*fresh)
            else:
                self.consumer.seek_to_beginning(*fresh)
            self.fresh.update(fresh)
        self.assigned_at = time.monotonic()
        log.info("assigned %s", sorted(tp_name(tp) for tp in assigned))

    def resolve_fresh(self) -> None:
        """Offsets of assigned partitions that had none (no checkpoint): the first message
        polled from one gives it (`add`), else its position, asked here, outside the
        rebalance callback."""
        assert self.consumer is not None
        assignment = self.consumer.assignment()
        for tp in list(self.fresh):
            if tp not in assignment:
                self.fresh.discard(tp)
            elif tp in self.applied:
                self.fresh.discard(tp)
            else:
                self.applied[tp] = self.consumed[tp] = self.consumer.position(tp)
                self.fresh.discard(tp)

    # ---------------------------------------------------------------- polled messages
    def unseen(self, tp: TopicPartition, msgs: list[Any]) -> list[Any]:
        """`msgs` without the ones already queued."""
        if tp in self.applied and msgs and msgs[0].offset < self.consumed.get(tp, 0):
            return [m for m in msgs if m.offset >= self.consumed[tp]]
        return msgs

    def add(self, tp: TopicPartition, offset: int, batch: wire.EventBatch) -> None:
        """The valid events of the message at `offset` (maybe none) are queued."""
        if len(batch):
            self.queue.append((tp, batch))
        self.consumed[tp] = offset + 1

    def first_seen(self, tp: TopicPartition, offset: int) -> None:
        """A partition without an offset starts at the first message polled from it."""
        if tp not in self.applied:
            self.applied[tp] = offset

    def queued_events(self) -> int:
        return sum(len(b) for _, b in self.queue)

    def take(self) -> list[wire.EventBatch]:
        """The queued batches, in order; the queue is empty after."""
        batches = [b for _, b in self.queue]
        self.queue = []
        return batches

    def commit(self) -> None:
        """Every queued event is applied: the applied offsets are the consumed ones."""
        self.applied.update(self.consumed)

    def lag(self) -> int | None:
        """Events (messages) behind the broker's high-water marks of the assigned partitions.
        From consumer.highwater() (fetch responses): tansu's ListOffsets(latest) is wrong."""
        if self.consumer is None:
            return None
        total = 0
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            if hw is None:
                return None
            total += max(0, hw - self.consumed.get(tp, 0))
        return total


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, book: OffsetBook) -> None:
        self.book = book

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.book.on_revoked(revoked)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.book.on_assigned(assigned)
