"""Kafka sends that count a message as sent only when the broker gave it an offset.

    out = ConfirmedProducer(make_producer(bootstrap))
    out.send("events", value)        # buffered, like KafkaProducer.send; False if refused
    out.flush()                      # every message has an offset (or counts as failed)
    out.resent, out.failed

Why: tansu 0.6.0 with its s3:// engine, SIGKILLed while a produce request is in flight,
answers the client's retry of that request after its restart with success and offset -1
without storing the message (seen in about 1 restart in 3 on a 2-partition topic). kafka-python
takes such an answer as a success. An acknowledgement without an offset is therefore treated
as "not stored": the message is sent again (at most `max_resends` times per message, then it
counts as failed). A re-sent message lands after the ones sent meanwhile.

Callbacks run on kafka-python's I/O thread, which must not block: they only queue the message;
`send` and `flush`, on the caller's thread, send what was queued.
"""

from __future__ import annotations

import queue
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError


class ConfirmedProducer:
    def __init__(self, producer: KafkaProducer, max_resends: int = 5) -> None:
        self.producer = producer
        self.max_resends = max_resends
        self.resent = 0  # messages sent again after an acknowledgement without an offset
        self.failed = 0  # messages whose send failed (refused, retries exhausted, or too many
        # resends)
        self.last_error = ""
        self._redo: queue.SimpleQueue[tuple[str, bytes | None, bytes, int]] = queue.SimpleQueue()

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> bool:
        """Queue `value` for `topic`; False (and counted in `failed`) when the producer refused
        it at once (too large, buffer full, no metadata): a send never raises."""
        try:
            self._send(topic, key, value, 0)
        except KafkaError as exc:
            self.failed += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            return False
        finally:
            self._drain()
        return True

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent so far is stored (re-sending as needed) or failed."""
        while True:
            self.producer.flush(timeout=timeout)
            if self._redo.empty():
                return
            self._drain()

    def close(self) -> None:
        self.producer.close()

    def _send(self, topic: str, key: bytes | None, value: bytes, attempt: int) -> None:
        fut = self.producer.send(topic, value=value, key=key)

        def stored(meta: Any) -> None:
            if meta.offset is None or meta.offset < 0:
                self._redo.put((topic, key, value, attempt + 1))

        fut.add_callback(stored)
        fut.add_errback(self._error)

    def _error(self, exc: BaseException) -> None:
        self.failed += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]

    def _drain(self) -> None:
        while not self._redo.empty():
            topic, key, value, attempt = self._redo.get()
            if attempt > self.max_resends:
                self.failed += 1
                continue
            self.resent += 1
            try:
                self._send(topic, key, value, attempt)
            except KafkaError as exc:
                self._error(exc)
