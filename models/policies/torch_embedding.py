"""`torch:d[,rows=N]`: torch's own sparse `nn.Embedding`, hashed rows, torch's Adagrad.

The reference for the training-speed comparison and a sanity baseline for quality: one table
of `rows` x D for all fields, row = hash(field, id) mod rows (collisions are shared rows, as in
any hashed table), updated by `torch.optim.Adagrad` on sparse gradients.

The optimizer constants below are the ones every embedding policy uses by default, so that a
comparison against this reference compares storage, not optimizers.

Example:
    >>> p = TorchEmbeddingPolicy(16, num_fields=2, rows=1024)
    >>> emb = p.lookup(np.array([[3, 4]]), train=True)   # float32[1, 2, 16], leaf
    >>> emb.sum().backward(); p.apply_gradients()
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import nn

from models.policies.params import PolicyParams, no_store_params
from models.policy import EmbeddingExport, EmbeddingPolicy, MemoryReport
from storage.splitmix import GOLDEN, splitmix64

EMBEDDING_LR = 0.05  # Adagrad learning rate of the embedding values
ADAGRAD_EPS = 1e-10  # torch.optim.Adagrad's default
ADAGRAD_INITIAL_ACCUMULATOR = 0.0  # torch.optim.Adagrad's default
EMBEDDING_INIT_STD = 0.01  # new embedding values ~ N(0, std^2)

def hash_rows(ids: np.ndarray, rows: int) -> np.ndarray:
    """Row of each (field, id) in a shared table: splitmix64(id + (field+1) * golden) mod rows.

    hash_rows(int64[B, F], rows) -> int64[B, F], values in [0, rows).
    """
    ids = np.asarray(ids, dtype=np.int64)
    salt = (np.arange(1, ids.shape[-1] + 1, dtype=np.uint64) * GOLDEN).astype(np.uint64)
    x = splitmix64(ids.astype(np.uint64) + salt)
    return (x % np.uint64(rows)).astype(np.int64)


class TorchParams(PolicyParams):
    """`torch:d[,rows=N]`'s parameters. Its memory is rows x D whatever the IDs: bounded by
    construction (more IDs only share rows), so it needs no entry limit."""

    dim: PositiveInt = 64
    rows: PositiveInt = 1 << 20


class TorchEmbeddingPolicy(EmbeddingPolicy):
    """nn.Embedding(rows, dim, sparse=True) shared by all fields, trained by sparse Adagrad.

    lookup(int64[B, F], train) -> float32[B, F, D]; with train=True a leaf tensor whose .grad
    `apply_gradients` turns into the same sparse COO gradient that nn.Embedding's backward
    makes (indices [1, B*F], values [B*F, D]) before stepping Adagrad.
    """

    Params = TorchParams

    @classmethod
    def from_params(cls, params: TorchParams, rest: dict[str, str], num_fields: int,
                    seed: int, spec: str) -> TorchEmbeddingPolicy:
        rest = dict(rest)
        device = rest.pop("device", "cpu")
        no_store_params(rest, TorchParams)
        return cls(params.dim, num_fields=num_fields, seed=seed, spec=spec, rows=params.rows,
                   device=device)

    def __init__(
        self,
        dim: int,
        num_fields: int,
        seed: int = 0,
        spec: str | None = None,
        rows: int = 1 << 20,
        lr: float = EMBEDDING_LR,
        init_std: float = EMBEDDING_INIT_STD,
        device: str = "cpu",
    ) -> None:
        if dim < 1 or rows < 1 or num_fields < 1:
            raise ValueError(f"need dim, rows, num_fields >= 1, got {dim}, {rows}, {num_fields}")
        self.dim, self.num_fields, self.rows = dim, num_fields, rows
        self.spec = spec or f"torch:{dim},rows={rows}"
        self.table = nn.Embedding(rows, dim, sparse=True)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # drawn on the CPU: the same table on every device
            self.table.weight.normal_(0.0, init_std, generator=gen)
        self.device = torch.device(device)
        self.table.to(self.device)
        self.optimizer = torch.optim.Adagrad(
            self.table.parameters(),
            lr=lr,
            eps=ADAGRAD_EPS,
            initial_accumulator_value=ADAGRAD_INITIAL_ACCUMULATOR,
        )
        self._touched = torch.zeros(rows, dtype=torch.bool, device=self.device)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def lookup(self, ids: np.ndarray, train: bool = False) -> torch.Tensor:
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.shape[1] != self.num_fields:
            raise ValueError(f"ids has shape {ids.shape}, expected (B, {self.num_fields})")
        rows = torch.from_numpy(hash_rows(ids, self.rows)).to(self.device)
        with torch.no_grad():
            emb = F.embedding(rows, self.table.weight)  # [B, F, D]
        if train:
            emb.requires_grad_(True)
            self._last = (rows, emb)
        return emb

    def apply_gradients(self) -> None:
        if self._last is None:
            return
        rows, emb = self._last
        self._last = None
        if emb.grad is None:
            return
        weight = self.table.weight
        weight.grad = torch.sparse_coo_tensor(
            rows.reshape(1, -1),
            emb.grad.reshape(-1, self.dim),
            size=weight.shape,
            check_invariants=False,  # indices come from hash_rows: in range by construction
        )
        # torch's Adagrad builds sparse tensors of its own; say (as its default does) that
        # their invariants need no check, which also keeps it from warning.
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            self.optimizer.step()
        weight.grad = None
        self._touched[rows.reshape(-1)] = True

    def memory(self) -> MemoryReport:
        state = self.optimizer.state[self.table.weight]
        opt_bytes = sum(t.nbytes for t in state.values() if isinstance(t, torch.Tensor))
        touched = int(self._touched.sum())
        return MemoryReport(
            value_bytes=self.table.weight.nbytes,
            optimizer_bytes=opt_bytes,
            metadata_bytes=self._touched.nbytes,  # only for stats, but allocated all the same
            index_bytes=0,  # hashing needs no index
            live_ids=touched,
            live_chunks=touched,
        )

    def stats(self) -> dict[str, float]:
        touched = int(self._touched.sum())
        return {"rows": float(self.rows), "rows_touched": float(touched),
                "rows_touched_frac": touched / self.rows}

    def export(self, dirty_only: bool = True) -> EmbeddingExport:
        raise NotImplementedError(
            "torch:d hashes IDs into shared rows: a speed reference that cannot be published"
        )

    def save(self, path: Path) -> None:
        torch.save(
            {
                "spec": self.spec,
                "dim": self.dim,
                "rows": self.rows,
                "weight": self.table.weight.detach().cpu(),
                "optimizer": self.optimizer.state_dict(),
                "touched": self._touched.cpu(),
            },
            Path(path),
        )

    def load(self, path: Path) -> None:
        state = torch.load(Path(path), weights_only=True, map_location=self.device)
        if state["dim"] != self.dim or state["rows"] != self.rows:
            raise ValueError(
                f"{path}: table is {state['rows']}x{state['dim']}, this policy "
                f"{self.rows}x{self.dim}"
            )
        with torch.no_grad():
            self.table.weight.copy_(state["weight"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._touched.copy_(state["touched"])
        self._last = None
