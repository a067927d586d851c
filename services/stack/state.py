"""The local stack's state file: what `chunkrec up` started, so that `chunkrec down` from
another shell stops that and nothing else.

    {data_dir}/stack/stack.json = {"owner": {"pid": 4242, "start": "123456"},
                                   "run_dir": "...", "serving_url": "http://127.0.0.1:PORT",
                                   "procs": {"train-fiited": {"pid": 4250, "start": "123470"},
                                             ...}}
    down(settings)   # SIGTERM to `up`; then what it left, each only if its pid still names
                     # the process that was started (start time checked)

A pid with the kernel's start time of that pid names one process for good: a recycled pid has
another start time, and is left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import orjson

from services.stack.infra import InfraError, wait_until
from storage.settings import Settings


def state_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / "stack" / "stack.json"


def start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), or None if it is gone
    or a zombie. With the pid it names one process for good: a recycled pid has another start
    time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields from the 3rd on: state, ppid, ...
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has exited


def alive(pid: int, start: str | None) -> bool:
    if not Path("/proc").is_dir():  # no procfs: fall back to "the pid exists"
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return start is not None and start_time(pid) == start


def down(settings: Settings, timeout_s: float = 90.0,
         echo: Callable[[str], None] = print) -> int:
    """Stop the stack recorded in the state file: SIGTERM to `up` (which stops its children),
    then whatever it left, only processes whose pid and start time match the record. Returns
    the number of processes signalled."""
    path = state_path(settings)
    if not path.is_file():
        echo(f"no stack is running (no state file at {path})")
        return 0
    state = orjson.loads(path.read_bytes())
    owner = state.get("owner", {})
    signalled = 0
    pid, start = int(owner.get("pid", 0)), owner.get("start")
    if pid and alive(pid, start):
        echo(f"stopping chunkrec up (pid {pid})")
        os.kill(pid, signal.SIGTERM)
        signalled += 1
        with contextlib.suppress(InfraError):
            wait_until(lambda: not alive(pid, start), timeout_s, f"chunkrec up (pid {pid})")
    for name, info in state.get("procs", {}).items():
        cpid, cstart = int(info["pid"]), info.get("start")
        if alive(cpid, cstart):
            echo(f"stopping {name} (pid {cpid})")
            os.kill(cpid, signal.SIGTERM)
            signalled += 1
            with contextlib.suppress(InfraError):
                wait_until(lambda p=cpid, s=cstart: not alive(p, s), 30, name)
            if alive(cpid, cstart):
                os.kill(cpid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return signalled
