"""Start N local ranks of one job, or join one that torchrun started: the same environment
variables either way (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK).

    results = launch(work, world=2, args=(spec,))   # work(rank, world, *args) in each rank;
                                                    # -> [rank 0's return, rank 1's, ...]
    init_from_env()                                 # in a torchrun-started process

`launch` spawns fresh interpreters (torch.multiprocessing's spawn start method), so `work` must
be a module-level function; each child calls `init_from_env` before it: gloo on the CPU, NCCL
when the job runs on CUDA. If a rank fails, the others are stopped (they would wait in a
collective forever) and the failure is raised here with the rank's traceback.
"""

from __future__ import annotations

import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT = timedelta(minutes=5)  # a collective waiting longer than this fails the rank


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_from_env(device: str = "cpu") -> None:
    """init_process_group from torchrun's variables; gloo on the CPU, NCCL on CUDA (each local
    rank on GPU LOCAL_RANK)."""
    if dist.is_initialized():
        return
    backend = "gloo"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    dist.init_process_group(backend, timeout=TIMEOUT)


def _child(rank: int, world: int, port: int, results: Any, work: Callable[..., Any],
           args: tuple, threads: int | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    if threads:
        torch.set_num_threads(threads)
    try:
        out = work(rank, world, *args)
        results.put((rank, True, out))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        results.put((rank, False, traceback.format_exc()))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(work: Callable[..., Any], world: int, args: tuple = (),
           threads: int | None = None, timeout_s: float = 600.0) -> list[Any]:
    """Run work(rank, world, *args) in `world` new processes; their return values by rank.
    `threads`: torch threads per rank (default: the CPUs divided among the ranks)."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    threads = threads or max(1, (os.cpu_count() or 1) // world)
    procs = [ctx.Process(target=_child, args=(r, world, port, results, work, args, threads),
                         daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    got: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < world:
            try:
                rank, ok, value = results.get(timeout=0.5)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)
                        and r not in got]
                if dead:
                    raise RuntimeError(
                        f"rank {dead[0]} exited with {procs[dead[0]].exitcode}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"ranks did not finish within {timeout_s:.0f} s") from None
                continue
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            got[rank] = value
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
    return [got[r] for r in range(world)]
