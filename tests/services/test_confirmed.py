"""ConfirmedProducer's rule, unit-tested with a stand-in for kafka-python's producer (the broker
behaviour it guards against is exercised for real in test_broker_restart.py): an
acknowledgement without an offset means "not stored", so the message goes again."""

from __future__ import annotations

from kafka.future import Future

from services.messaging.confirmed import ConfirmedProducer


class _Meta:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _Producer:
    """Answers each send at flush: offset -1 for the values in `drop` (once each, or always
    for those in `never`), a growing offset otherwise; an exception for those in `fail`."""

    def __init__(self, drop: set[bytes], never: set[bytes] = frozenset(),
                 fail: set[bytes] = frozenset()) -> None:
        self.drop, self.never, self.fail = set(drop), never, fail
        self.pending: list[tuple[bytes, Future]] = []
        self.log: list[bytes] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> Future:
        fut = Future()
        self.pending.append((value, fut))
        return fut

    def flush(self, timeout: float | None = None) -> None:
        pending, self.pending = self.pending, []
        for value, fut in pending:
            if value in self.fail:
                fut.failure(RuntimeError("retries exhausted"))
            elif value in self.never or value in self.drop:
                self.drop.discard(value)
                fut.success(_Meta(-1))
            else:
                self.log.append(value)
                fut.success(_Meta(len(self.log) - 1))

    def close(self) -> None:
        pass


def test_an_acknowledgement_without_offset_is_sent_again() -> None:
    values = [f"m{i}".encode() for i in range(10)]
    inner = _Producer(drop={b"m3", b"m7"})
    out = ConfirmedProducer(inner)  # type: ignore[arg-type]
    for v in values:
        out.send("t", v)
    out.flush()
    assert sorted(inner.log) == sorted(values)
    assert out.resent == 2 and out.failed == 0


def test_resends_are_bounded_and_failures_counted() -> None:
    inner = _Producer(drop=set(), never={b"lost"}, fail={b"bad"})
    out = ConfirmedProducer(inner, max_resends=3)  # type: ignore[arg-type]
    for v in (b"a", b"lost", b"bad", b"b"):
        out.send("t", v)
    out.flush()
    assert inner.log == [b"a", b"b"]
    assert out.resent == 3 and out.failed == 2
