"""What a failure tells an HTTP client, and what it tells the log.

A response body never carries a Redis exception's text: redis-py's messages name the server's
host and port ("Error 111 connecting to 10.0.0.5:6379", "Timeout reading from ..."), which
are the deployment's business, not the client's. The client gets a fixed phrase; the log gets
the whole error, at most once per `every_s` per kind (during an outage every request fails the
same way, and one line per request would bury everything else).

    kind, phrase = redis_failure(exc)       # ("timeout", "redis timed out")
    describe(exc)                           # safe text for /readyz: the phrase for Redis and
                                            # socket errors, else "JSONDecodeError: ..."
    throttle = LogThrottle(every_s=10.0)
    throttle.log(log, "timeout", "score: %r", exc)   # now; then once per 10 s with a count
"""

from __future__ import annotations

import logging
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

MAX_DETAIL_CHARS = 200


def redis_failure(exc: BaseException) -> tuple[str, str]:
    """(kind, phrase for the client) of a Redis or socket error."""
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return "timeout", "redis timed out"
    if isinstance(exc, RedisConnectionError | OSError):
        return "unreachable", "redis unreachable or out of connections"
    return "error", "redis error"


def describe(exc: BaseException) -> str:
    """A failure in words safe to show a client: Redis and socket errors by their phrase,
    others (a record that does not parse, a network that does not load) by type and message."""
    if isinstance(exc, RedisError | OSError):
        return redis_failure(exc)[1]
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 3] + "..."


class LogThrottle:
    """Log a kind of failure at most once per `every_s`, saying how many went unlogged."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def log(self, logger: logging.Logger, kind: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.every_s:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        skipped = self._skipped.pop(kind, 0)
        self._last[kind] = now
        suffix = f" (and {skipped} more like it in {now - last:.0f} s)" if skipped and last else ""
        logger.warning(msg + suffix, *args)
