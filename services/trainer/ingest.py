"""The trainer's intake: polled Kafka messages validated (services.wire) into queued event
batches, the invalid events and malformed messages sent to `events.dlq` with their reason and
original bytes, counted. No message may stop the trainer.

    n = ingest(consumer.poll(), book=offsets, schema=schema, producer=producer, stats=stats)
    # n valid events queued in `offsets` (OffsetBook); stats.events_invalid, .messages, ...
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import redis
from kafka import TopicPartition

from services import wire
from services.messaging.confirmed import ConfirmedProducer
from services.trainer.offsets import OffsetBook
from storage.batch import DatasetSchema

if TYPE_CHECKING:
    from services.trainer.config import TrainerStats

log = logging.getLogger("chunkrec.trainer")


def ingest(records: dict[TopicPartition, list[Any]], *, book: OffsetBook,
           schema: DatasetSchema, producer: ConfirmedProducer, stats: TrainerStats) -> int:
    """Validate polled records, dead-letter the invalid ones, queue the valid ones in `book`.
    Returns the number of valid events queued."""
    t0 = time.perf_counter()
    n = 0
    for tp, polled in records.items():
        msgs = book.unseen(tp, polled)
        for m in msgs:
            try:
                batch, dlq = wire.dead_letters(m.value, schema, tp.topic, tp.partition, m.offset)
            except Exception as exc:  # noqa: BLE001 - no message may stop the trainer
                log.exception("validating %s:%d:%d failed", tp.topic, tp.partition, m.offset)
                batch = wire.EventBatch.empty(schema)
                dlq = [wire.dlq_record(f"trainer: cannot validate ({type(exc).__name__}: "
                                       f"{exc})", m.value or b"", tp.topic, tp.partition,
                                       m.offset)]
            for rec in dlq:
                if not send_dead_letter(producer, rec):
                    stats.dead_letters_lost += 1
            stats.events_invalid += len(dlq)
            book.add(tp, m.offset, batch)
            n += len(batch)
            stats.messages += 1
        if msgs:
            book.first_seen(tp, msgs[0].offset)
    stats.decode_seconds += time.perf_counter() - t0
    stats.add_time("decode", time.perf_counter() - t0)
    if n and stats.first_event_at is None:
        stats.first_event_at = t0
    return n


def send_dead_letter(producer: ConfirmedProducer, record: bytes) -> bool:
    """Send a dead letter; if the producer refuses it, a stub without the original (its
    length and hash stay); False when that is refused too (the letter is lost). Never raises:
    the original message stays in its topic at the offset the letter names either way."""
    if producer.send(wire.DLQ_TOPIC, record):
        return True
    log.error("dead letter refused (%s); sending a stub", producer.last_error)
    if not producer.send(wire.DLQ_TOPIC, wire.dlq_stub(record)):
        log.error("dead-letter stub refused too (%s)", producer.last_error)
        return False
    return True


def close_trainer_io(lease: Any, release_lease: bool, consumer: Any, producer: Any,
                     publisher: Any) -> None:
    """A trainer's shutdown, single-process or a rank: the lease given back where this
    process holds it (`release_lease`; a Redis error there is no reason not to close the
    rest), the consumer closed without committing (checkpoints hold the offsets), the
    dead-letter producer flushed and closed, the publisher's Redis connection closed. None
    stands for a part never opened."""
    if lease is not None and release_lease:
        with contextlib.suppress(redis.RedisError):
            lease.release()
    if consumer is not None:
        consumer.close(autocommit=False)
    if producer is not None:
        producer.flush()
        producer.close()
    if publisher is not None:
        publisher.r.close()
