"""One trainer per model: a lease in Redis with a fencing token, checked inside every write.

    lease = ModelLease(redis_client, "fiited", ttl_s=10)
    lease.acquire()           # or LeaseHeld: another live trainer owns the model
    lease.renew()             # in the loop, every ttl/3; Fenced once another one took over
    script = lease.fenced_script(BODY)   # a Lua write that runs only while we own the model
    script(keys=[...], args=[...])       # raises Fenced instead of writing
    lease.release()           # on a clean stop

Keys (layout in services/wire/): `chunkrec:{M}:owner` holds "TOKEN HOST PID" of the owner
with a time to live of `ttl_s`; `chunkrec:{M}:fence` the highest token ever issued (INCR). The
token is the fencing token: every write of the publisher runs as a Lua script that first
checks, inside Redis and atomically with the write, that the owner value is still ours. A
second `chunkrec train` of the model is refused at start; a zombie (a trainer paused past its
lease, e.g. SIGSTOP or a long GC, while another one took over) writes nothing: its first
write raises Fenced and it stops without a checkpoint.

A lost lease (expired while we were busy, or gone with a Redis restart) is taken back inside
the same script when no newer token was issued since (`fence` <= ours, or unset after a
restart). A restarted trainer whose predecessor on the same host is dead (its PID is gone)
takes over at once instead of waiting out the lease. Without Redis persistence a restart
forgets the fence; the first trainer to write after it owns the model.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import redis

from services import wire

# Runs first in every fenced script. KEYS[1] owner, KEYS[2] fence; ARGV[1] our owner value,
# ARGV[2] our token, ARGV[3] ttl ms. The script's own keys and args follow (KEYS[3..],
# ARGV[4..]): `K0` and `A0` are the offsets to add.
_CHECK = """
local K0, A0 = 2, 3
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then
  local top = tonumber(redis.call('GET', KEYS[2]) or '0')
  if cur or top > tonumber(ARGV[2]) then
    return redis.error_reply('FENCED owner is ' .. (cur or ('token ' .. top)))
  end
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
"""
# Take the lease when free (or when `ARGV[2]`, the value of a dead owner, still holds it; or
# whoever holds it when ARGV[2] is '*'): {1, token} or {0, current owner, its ms left}.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[2] and ARGV[2] ~= '*' then
  return {0, cur, redis.call('PTTL', KEYS[1])}
end
local token = redis.call('INCR', KEYS[2])
local me = token .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], me, 'PX', ARGV[3])
return {1, me}
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseHeld(RuntimeError):
    """Another live trainer owns the model."""


class Fenced(RuntimeError):
    """This trainer no longer owns the model: another one took over; it must not write."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ModelLease:
    """See module docstring."""

    def __init__(self, client: redis.Redis, model: str, ttl_s: float = 10.0,
                 take_over: bool = False) -> None:
        self.r = client
        self.model = wire.check_model_name(model)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.keys = [wire.owner_key(model), wire.fence_key(model)]
        self.take_over = take_over  # what a write without the lease does (see acquire)
        self.me: str | None = None  # "TOKEN HOST PID" once acquired
        self.renewed_at = float("-inf")  # monotonic time of the last successful check
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._renew = self.fenced_script("return 1")

    @property
    def token(self) -> int | None:
        return None if self.me is None else int(self.me.split(" ", 1)[0])

    def acquire(self, wait_s: float = 0.0, take_over: bool = False) -> int:
        """Take the lease; returns the fencing token. Waits up to `wait_s` for a held lease to
        expire, then raises LeaseHeld naming the owner; with `take_over`, takes it from the
        owner at once (who is fenced from then on). Raises redis.RedisError when Redis is
        unreachable."""
        ident = f"{socket.gethostname()} {os.getpid()}"
        deadline = time.monotonic() + wait_s
        while True:
            got = self._acquire(keys=self.keys,
                                args=[ident, "*" if take_over else "", self.ttl_ms])
            if int(got[0]) == 1:
                self.me = _text(got[1])
                self.renewed_at = time.monotonic()
                return int(self.me.split(" ", 1)[0])
            owner, left_ms = _text(got[1]), int(got[2])
            if self._dead_here(owner):
                got = self._acquire(keys=self.keys, args=[ident, owner, self.ttl_ms])
                if int(got[0]) == 1:
                    self.me = _text(got[1])
                    self.renewed_at = time.monotonic()
                    return int(self.me.split(" ", 1)[0])
                continue
            if time.monotonic() >= deadline:
                raise LeaseHeld(
                    f"model {self.model!r} is trained by another process (token, host, pid: "
                    f"{owner}; its lease ends in {max(left_ms, 0) / 1000:.1f} s unless it "
                    "renews): stop it first, or train under another --model name")
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    @staticmethod
    def _dead_here(owner: str) -> bool:
        """True when `owner` ran on this host and its process is gone (a crash)."""
        parts = owner.split(" ")
        if len(parts) != 3 or parts[1] != socket.gethostname() or not parts[2].isdigit():
            return False
        pid = int(parts[2])
        return pid != os.getpid() and not _pid_alive(pid)

    def fenced_script(self, body: str) -> Callable[..., Any]:
        """A Lua script that runs `body` only while this lease is ours (see _CHECK): call it
        with its own keys and args (in the body, KEYS[K0 + i] and ARGV[A0 + i]); raises
        Fenced when another trainer owns the model."""
        script = self.r.register_script(_CHECK + body)

        def run(keys: list[Any] | None = None, args: list[Any] | None = None) -> Any:
            if self.me is None:
                self.acquire(take_over=self.take_over)
            assert self.me is not None
            try:
                out = script(keys=[*self.keys, *(keys or [])],
                             args=[self.me, self.token, self.ttl_ms, *(args or [])])
            except redis.ResponseError as exc:
                if str(exc).startswith("FENCED"):
                    raise Fenced(f"model {self.model!r}: this trainer (token {self.token}) was "
                                 f"fenced out; {str(exc)[7:]}") from None
                raise
            self.renewed_at = time.monotonic()
            return out

        return run

    def renew(self) -> None:
        """Extend the lease; raises Fenced when it is no longer ours."""
        self._renew()

    def due(self) -> bool:
        """True when a third of the lease passed since the last successful check."""
        return time.monotonic() - self.renewed_at >= self.ttl_ms / 3000

    def release(self) -> None:
        """Give the lease up (a clean stop), when it is still ours."""
        if self.me is not None:
            self._release(keys=self.keys[:1], args=[self.me])
            self.me = None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
