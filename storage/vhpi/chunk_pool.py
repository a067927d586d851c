"""A pool of fixed-size embedding chunks with their optimizer state and a free-address stack.

Chunk addresses are 0-based; address -1 means "no chunk" (pruned). Physical row = address + 1:
row 0 is a null chunk that is always zero, so a gather of address -1 reads zeros without a mask.
Every chunk has the same size, so freeing and reallocating never fragments: a freed address is
pushed on the stack and the next allocation pops it.

    pool = ChunkPool(chunk_dim=8)
    addr = pool.alloc(3)                 # int32[3]
    pool.gather(np.array([[0, -1]]))     # float32[1, 2, 8]; the -1 reads zeros
    pool.release(addr)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

OPTIMIZERS = ("adagrad", "rowwise_adagrad")


class ChunkPool:
    def __init__(
        self,
        chunk_dim: int,
        optimizer: str = "rowwise_adagrad",
        initial_capacity: int = 1024,
        growth: float = 1.25,
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.chunk_dim = chunk_dim
        self.optimizer = optimizer
        self.growth = growth
        self.state_width = chunk_dim if optimizer == "adagrad" else 1
        cap = max(1, initial_capacity)
        self.values = torch.zeros(cap + 1, chunk_dim)
        self.state = torch.zeros(cap + 1, self.state_width)
        # The free stack: the top is the end. Filled so low addresses are popped first.
        self.free = np.arange(cap - 1, -1, -1, dtype=np.int32)
        self.num_live = 0

    @property
    def capacity(self) -> int:
        return int(self.values.shape[0] - 1)

    @property
    def chunk_bytes(self) -> int:
        """Bytes one live chunk costs: its values plus its optimizer state."""
        return 4 * (self.chunk_dim + self.state_width)

    def alloc(self, n: int) -> np.ndarray:
        """Pop n free addresses (growing the pool if the stack runs out): int32[n].
        The chunks' values and state are whatever they were; callers set them."""
        if n <= 0:
            return np.zeros(0, dtype=np.int32)
        if n > self.free.size:
            self._grow(self.capacity + (n - self.free.size))
        out = self.free[self.free.size - n :][::-1].copy()
        self.free = self.free[: self.free.size - n]
        self.num_live += n
        return out

    def release(self, addrs: np.ndarray) -> None:
        """Push addresses back on the free stack (int32[n], distinct, live)."""
        addrs = np.asarray(addrs, dtype=np.int32).ravel()
        if addrs.size == 0:
            return
        rows = torch.from_numpy(addrs.astype(np.int64) + 1)
        self.values[rows] = 0.0  # a freed chunk holds nothing: the null-row trick stays exact
        self.state[rows] = 0.0
        self.free = np.concatenate([self.free, addrs[::-1]])
        self.num_live -= addrs.size

    def _grow(self, need: int) -> None:
        cap = self.capacity
        new_cap = max(need, int(cap * self.growth) + 1)
        # New rows are never read before `write` sets them, so they need no zeroing.
        values = torch.empty(new_cap + 1, self.chunk_dim)
        state = torch.empty(new_cap + 1, self.state_width)
        values[: cap + 1] = self.values
        state[: cap + 1] = self.state
        self.values, self.state = values, state
        fresh = np.arange(new_cap - 1, cap - 1, -1, dtype=np.int32)
        self.free = np.concatenate([fresh, self.free])

    def gather(self, addrs: np.ndarray) -> torch.Tensor:
        """int32[...] addresses -> float32[..., chunk_dim]; -1 reads zeros."""
        rows = torch.from_numpy(addrs.astype(np.int64).ravel() + 1)
        # F.embedding is torch's fastest row gather on CPU (about 3x plain fancy indexing).
        return F.embedding(rows, self.values).reshape(*addrs.shape, self.chunk_dim)

    def write(self, addrs: np.ndarray, values: torch.Tensor) -> None:
        """Set the values of live chunks and give them fresh optimizer state."""
        rows = torch.from_numpy(np.asarray(addrs, dtype=np.int64).ravel() + 1)
        self.values[rows] = values.reshape(-1, self.chunk_dim)
        self.state[rows] = 0.0

    def adagrad_step(self, addrs: np.ndarray, grads: torch.Tensor, lr: float, eps: float) -> None:
        """Adagrad (full or row-wise) on live chunks: int32[n] distinct, float32[n, chunk_dim]."""
        if addrs.size == 0:
            return
        rows = torch.from_numpy(addrs.astype(np.int64) + 1)
        g2 = grads * grads
        if self.state_width == 1:
            g2 = g2.mean(dim=1, keepdim=True)
        self.state.index_add_(0, rows, g2)  # rows are distinct: an add is an update
        denom = F.embedding(rows, self.state).sqrt_().add_(eps)
        # (index_add_'s alpha argument takes a path about 10x slower on CPU: scale first)
        self.values.index_add_(0, rows, grads.mul(-lr).div_(denom))

    # ---- accounting and persistence ----------------------------------------------------
    def live_bytes(self) -> tuple[int, int]:
        """(value bytes, optimizer bytes) of live chunks."""
        return self.num_live * self.chunk_dim * 4, self.num_live * self.state_width * 4

    def allocated_bytes(self) -> int:
        return int(self.values.numel() * 4 + self.state.numel() * 4 + self.free.nbytes)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            "values": self.values.numpy(),
            "state": self.state.numpy(),
            "free": self.free,
            "num_live": np.array([self.num_live], dtype=np.int64),
        }

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        self.values = torch.from_numpy(np.array(d["values"]))
        self.state = torch.from_numpy(np.array(d["state"]))
        self.free = np.array(d["free"])
        self.num_live = int(d["num_live"][0])
