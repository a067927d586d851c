"""Is a Kafka broker (a Redis) there? Asked once, with a short deadline, before a process
builds its producers and consumers (whose own bootstrap waits 30-60 s and then raises a
traceback; a Redis client retries for as long).

    problem = broker_problem("127.0.0.1:9092", timeout_s=5)
    # None, or "Kafka broker at 127.0.0.1:9092 cannot be reached (connection refused): ..."
    problem = redis_problem("redis://127.0.0.1:6379/0")
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

BROKER_HINT = ("start one (`chunkrec infra` runs a local broker and Redis) or point "
               "CHUNKREC_KAFKA_BOOTSTRAP at it")


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """kafka-python logs every failed bootstrap attempt; the caller reports the outcome."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def broker_problem(bootstrap: str, timeout_s: float = 5.0) -> str | None:
    """None when a broker at `bootstrap` answers a metadata request within `timeout_s`, else
    one line naming the address and what to do."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    refused = _tcp_problem(bootstrap, timeout_s)
    if refused is not None:  # nothing listens: say so now, not after the bootstrap's deadline
        return f"Kafka broker at {bootstrap} cannot be reached ({refused}): {BROKER_HINT}"
    try:
        with _quiet("kafka"):
            producer = KafkaProducer(bootstrap_servers=bootstrap,
                                     bootstrap_timeout_ms=int(timeout_s * 1000),
                                     request_timeout_ms=int(timeout_s * 1000))
            producer.close(timeout=1)
    except (KafkaError, OSError, ValueError) as exc:
        reason = type(exc).__name__
        return (f"Kafka broker at {bootstrap} did not answer within {timeout_s:g} s "
                f"({reason}): {BROKER_HINT}")
    return None


def redis_problem(url: str, timeout_s: float = 3.0, **kwargs: str) -> str | None:
    """None when Redis at `url` answers PING within `timeout_s` (kwargs: redis.Redis's, e.g.
    the password), else one line naming the address (never the password) and what to do."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                      socket_connect_timeout=timeout_s, **kwargs)
        with client:
            client.ping()
        return None
    except (redis.RedisError, OSError, ValueError) as exc:
        kw = client.connection_pool.connection_kwargs if "client" in locals() else {}
        where = f"{kw.get('host', '?')}:{kw.get('port', '?')}"
        return (f"Redis at {where} does not answer ({type(exc).__name__}): start it "
                "(`chunkrec infra` runs a local broker and Redis) or set CHUNKREC_REDIS_URL")


def _tcp_problem(bootstrap: str, timeout_s: float) -> str | None:
    """None when some bootstrap address accepts a TCP connection, else why the last did not."""
    reason = "no address"
    for address in (a.strip() for a in bootstrap.split(",") if a.strip()):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)),
                                          timeout=timeout_s):
                return None
        except ValueError:
            reason = f"bad address {address!r}"
        except OSError as exc:
            reason = (exc.strerror or type(exc).__name__).lower()
    return reason
