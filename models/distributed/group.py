"""The collectives a sharded step needs, over one torch.distributed process group.

    group = ShardGroup.current()                  # after dist.init_process_group(...)
    got, recv_counts = group.exchange(rows, send_counts)   # all-to-all of variable-size rows
    total = group.sum(torch.tensor([3.0]))        # all-reduce (sum) -> on every rank

`exchange` sends rows[sum(send_counts[:r]) : ...+send_counts[r]] to rank r and returns what
every rank sent here, in rank order: rows float/int[N, ...] -> [sum(recv_counts), ...]. The
embedding traffic runs on its own group so it never interleaves with DDP's all-reduces.
Tensors travel on the backend's device: the CPU for gloo, the current CUDA device for NCCL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class ShardGroup:
    rank: int
    world: int
    group: object  # the torch.distributed ProcessGroup of the embedding traffic
    device: torch.device  # where the backend takes its tensors
    comm_seconds: float = 0.0  # wall time spent in collectives (the scaling benchmark's split)
    comm_bytes: int = 0  # bytes this rank sent through `exchange`
    _t0: float = field(default=0.0, repr=False)

    @classmethod
    def current(cls) -> ShardGroup:
        """The group of every rank of the default process group (it must be initialised)."""
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: init_process_group first")
        backend = dist.get_backend()
        device = (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
                  else torch.device("cpu"))
        return cls(dist.get_rank(), dist.get_world_size(), dist.new_group(backend=backend),
                   device)

    def _start(self) -> None:
        self._t0 = time.perf_counter()

    def _stop(self) -> None:
        self.comm_seconds += time.perf_counter() - self._t0

    def exchange(self, rows: torch.Tensor, send_counts: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """All-to-all of variable-size row blocks (see module docstring). send_counts int64[W]
        -> (received rows, recv_counts int64[W])."""
        home = rows.device
        self._start()
        counts = send_counts.to(self.device, torch.int64)
        recv_counts = torch.empty_like(counts)
        dist.all_to_all_single(recv_counts, counts, group=self.group)
        send = counts.tolist()
        recv = recv_counts.tolist()
        rows = rows.to(self.device).contiguous()
        out = torch.empty((sum(recv), *rows.shape[1:]), dtype=rows.dtype, device=self.device)
        dist.all_to_all_single(out, rows, output_split_sizes=recv, input_split_sizes=send,
                               group=self.group)
        self.comm_bytes += rows.numel() * rows.element_size()
        self._stop()
        return out.to(home), recv_counts.cpu()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) of a small tensor; returns the sum on every rank."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: torch.Tensor) -> torch.Tensor:
        return self._reduce(values, dist.ReduceOp.MAX)

    def _reduce(self, values: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
        home = values.device
        self._start()
        out = values.detach().to(self.device).clone()
        dist.all_reduce(out, op=op, group=self.group)
        self._stop()
        return out.to(home)

    def cat(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's 1-D `values` (sizes may differ), concatenated in rank order."""
        home = values.device
        self._start()
        n = torch.tensor([values.numel()], device=self.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n, group=self.group)
        longest = int(max(int(s) for s in sizes))
        padded = torch.zeros(longest, dtype=values.dtype, device=self.device)
        padded[: values.numel()] = values.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.group)
        self._stop()
        return torch.cat([p[: int(s)] for p, s in zip(parts, sizes, strict=True)]).to(home)
