"""Per-unit rate limits and the requests a router replica has issued, both in bounded memory.

    limiter = UnitRateLimiter(per_minute=1200, max_units=100_000)
    wait_s = limiter.take("u:196")          # None: allowed; else seconds until the next token
    issued = IssuedRequests(max_requests=100_000)
    issued.add("9f1c...", "196", ["242", "17"])
    issued.get("9f1c...")                   # -> ("196", frozenset({"242", "17"})) | None

A token bucket per key: `per_minute` tokens, refilled evenly, so a unit may burst a minute's
worth and then keeps to the rate. Both structures forget their least recently used entries
beyond their size: a forgotten bucket was nearly always full (an idle unit), so forgetting it
costs nothing; memory stays bounded however many unit ids clients invent. (The `limits`
package keeps one entry per key until it expires, with no bound on the number of keys.)
Handlers run on the event loop and in the thread pool, hence the locks.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable


class UnitRateLimiter:
    def __init__(self, per_minute: float, max_units: int) -> None:
        self.capacity = float(per_minute)
        self.rate = float(per_minute) / 60.0  # tokens per second
        self.max_units = max_units
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float | None = None) -> int | None:
        """Spend one token of `key`: None when there was one, else the whole seconds until
        there is (a Retry-After)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)  # most recent at the end
            while len(self._buckets) > self.max_units:
                self._buckets.popitem(last=False)
        return None if allowed else max(1, math.ceil((1.0 - tokens) / self.rate))


class IssuedRequests:
    """request_id -> (unit, items shown) of the requests this replica ranked recently."""

    def __init__(self, max_requests: int) -> None:
        self.max_requests = max_requests
        self._requests: OrderedDict[str, tuple[str, frozenset[str]]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._requests)

    def add(self, request_id: str, unit: str, items: Iterable[str]) -> None:
        with self._lock:
            self._requests[request_id] = (unit, frozenset(items))
            while len(self._requests) > self.max_requests:
                self._requests.popitem(last=False)

    def get(self, request_id: str) -> tuple[str, frozenset[str]] | None:
        with self._lock:
            return self._requests.get(request_id)
