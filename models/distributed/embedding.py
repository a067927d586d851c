"""A chunked policy (fixed, fiited, adaembed) whose IDs are row-sharded over the ranks of a
process group: each rank owns the ChunkStore of the IDs that hash to it (`owner_of`).

    group = ShardGroup.current()
    policy = ShardedPolicy(parse_policy("fiited:budget=0.25", F, seed=0), group)
    emb = policy.lookup(ids, train=True)      # int64[B, F] -> float32[B, F, D]; collective
    ... loss.backward() ...
    policy.apply_gradients()                  # collective

A step, on every rank at once (a rank without rows calls it with B = 0):
    1. each (row, field) pair goes to its owner (all-to-all of int64[N, 2] (field, key));
    2. the owner looks the pairs up in its store (`ChunkStore.lookup_keys`), counting every
       access as the single-process store would, and sends the embeddings back (all-to-all);
    3. after backward, each rank sends the gradients of its pairs to their owners (all-to-all),
       which apply them (utilities, Adagrad, the prune / regrow schedule) in one call.
The loss convention is DistributedDataParallel's: each rank's loss is `world` x its share of the
global loss (DDP averages the dense gradients over ranks), so embedding gradients are divided by
`world` before they are sent: the owners then apply exactly the gradient a single process
training on the union of the ranks' batches would.

Every method that moves data (`lookup`, `apply_gradients`, `memory`) is a collective: every
rank calls it, in the same order. `export`, `save`, `stats` are the local shard's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.distributed.group import ShardGroup
from models.distributed.sharding import owner_of
from models.policies.chunked import ChunkedPolicy
from models.policy import EmbeddingExport, EmbeddingPolicy, MemoryReport
from storage.vhpi.store import LookupContext


@dataclass
class _Pending:
    """What a train lookup leaves for apply_gradients."""

    ctx: LookupContext
    emb: torch.Tensor  # float32[B, F, D] leaf whose .grad backward fills
    order: torch.Tensor  # int64[B*F]: the pairs sorted by owner
    send_counts: torch.Tensor  # int64[W] pairs sent to each owner


class ShardedPolicy(EmbeddingPolicy):
    """See module docstring. `local` is this rank's shard (a ChunkedPolicy built with the same
    spec and seed on every rank: initial values are a function of (seed, field, ID), so an ID
    starts the same wherever it lives)."""

    def __init__(self, local: ChunkedPolicy, group: ShardGroup) -> None:
        if not isinstance(local, ChunkedPolicy) or type(local).dense_parameters is not \
                EmbeddingPolicy.dense_parameters:
            raise ValueError(f"{local.spec}: only fixed, fiited and adaembed shard "
                             "(a policy with learned mask parameters does not yet)")
        self.local = local
        self.group = group
        self.spec = local.spec
        self.dim = local.dim
        self.num_fields = local.num_fields
        self._pending: _Pending | None = None
        self.lookup_seconds = 0.0  # the owner's store work (lookup + apply), for the bench

    @property
    def device(self) -> torch.device:
        return self.local.device

    @property
    def store(self):  # noqa: ANN201 - the local shard's ChunkStore
        return self.local.store

    def lookup(self, ids: np.ndarray, train: bool = False) -> torch.Tensor:
        store = self.local.store
        ids_t = torch.as_tensor(ids, device=store.device).long()
        B, F = ids_t.shape if ids_t.ndim == 2 else (0, self.num_fields)
        ids_t = ids_t.reshape(B, F)
        fields = torch.arange(F, device=store.device).expand(B, F).reshape(-1)
        keys = ids_t.reshape(-1)
        owner = owner_of(fields, keys, self.group.world)
        order = torch.argsort(owner, stable=True)
        send_counts = torch.bincount(owner, minlength=self.group.world).cpu()
        pairs = torch.stack([fields.index_select(0, order), keys.index_select(0, order)], 1)
        got, recv_counts = self.group.exchange(pairs, send_counts)
        t0 = time.perf_counter()
        owned, ctx = store.lookup_keys(got[:, 0], got[:, 1], train=train)
        self.lookup_seconds += time.perf_counter() - t0
        back, _ = self.group.exchange(owned.detach(), recv_counts)
        emb = torch.empty(B * F, store.config.dim, device=store.device)
        emb[order] = back
        emb = emb.reshape(B, F, store.config.dim)
        if train:
            assert ctx is not None
            emb.requires_grad_(True)
            self._pending = _Pending(ctx, emb, order, send_counts)
        if self.dim > emb.shape[-1]:
            return torch.nn.functional.pad(emb, (0, self.dim - emb.shape[-1]))
        return emb

    def apply_gradients(self) -> None:
        if self._pending is None:
            raise RuntimeError("apply_gradients() without a preceding lookup(train=True)")
        p, self._pending = self._pending, None
        D = p.emb.shape[-1]
        grad = p.emb.grad if p.emb.grad is not None else torch.zeros_like(p.emb)
        grad = grad.reshape(-1, D).index_select(0, p.order) / self.group.world
        owned, _ = self.group.exchange(grad, p.send_counts)
        t0 = time.perf_counter()
        self.local.store.apply_gradients(p.ctx, owned)
        self.lookup_seconds += time.perf_counter() - t0

    def memory(self) -> MemoryReport:
        """The sum over every shard (a collective)."""
        m = self.local.memory()
        keys = ("value_bytes", "optimizer_bytes", "metadata_bytes", "index_bytes",
                "live_ids", "live_chunks")
        mine = torch.tensor([getattr(m, k) for k in keys], dtype=torch.float64)
        total = self.group.sum(mine).long().tolist()
        return MemoryReport(**dict(zip(keys, total, strict=True)))

    def shard_memory(self) -> MemoryReport:
        """This rank's shard alone."""
        return self.local.memory()

    def stats(self) -> dict[str, float]:
        return self.local.stats()

    def export(self, dirty_only: bool = True) -> EmbeddingExport:
        return self.local.export(dirty_only)

    def save(self, path: Path) -> None:
        self.local.save(path)

    def load(self, path: Path) -> None:
        reducer = self.local.store.reducer  # a global budget stays global
        self.local.load(path)
        if reducer.is_global:
            reducer.attach(self.local.store)  # type: ignore[attr-defined]
        else:
            self.local.store.reducer = reducer
