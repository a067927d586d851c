"""What the learned-mask policies (`dml`, `amtl`) share: a ChunkStore whose entries hold exactly
the chunk prefix their mask keeps, a straight-through mask, and a sparsity penalty that rides
the embeddings' backward pass.

Masks are chunk-aligned: a mask keeping n chunks keeps dims [0, offsets[n]) (widths 4-4-8-16-32
give 4, 8, 16, 32 or 64 dims), so "the mask" and "the stored chunks" are the same thing and the
serving tier, which zero-pads a record by its chunk mask, reproduces the policy's lookup.

Per train step (`lookup(train=True)`):
    1. the store looks up / admits the batch's entries (they count the access);
    2. the subclass gives each unique entry its hard chunk count n (int64[U]) and a
       straight-through mask float32[U, D] (forward: the hard prefix of n chunks; backward:
       the subclass's soft mask);
    3. the entries are re-laid out to n chunks (tail chunks freed, missing ones allocated with
       the ID's deterministic initial values), then gathered: the values are zero beyond n;
    4. the returned embedding is values * mask, the mask hard in forward and soft in backward
       (`straight_through`), so the network sees the hard prefix exactly while the mask
       parameters get the soft mask's gradient; the subclass's penalty is added to the loss's
       gradient through `add_loss`.
Every `relayout` steps all live entries are re-laid out to the current hard mask, so entries not
seen lately follow the learned mask too. An eval lookup reads the store as it is: the hard mask
as of the entry's last layout, the very records an export publishes.
"""

from __future__ import annotations

import json
import os
from abc import abstractmethod
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.policies.chunked import ChunkedPolicy, PolicyParams, _store_config
from models.policy import MemoryReport
from storage.vhpi.store import ChunkStore, StoreConfig

_MASK_PREFIX = "mask."  # keys of the mask state inside the policy's .npz save
ADAM_SLOTS = 2  # the dense optimizer's state per mask parameter (Adam: exp_avg, exp_avg_sq)


class _AddLoss(torch.autograd.Function):
    """y = x in forward; in backward x gets y's gradient and `penalty` gets 1, so the total
    loss is effectively loss(y) + penalty without the caller knowing of the penalty."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        return grad, torch.ones((), dtype=grad.dtype)


def add_loss(x: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """x unchanged; backward through it also back-propagates d(penalty)/d(params) once."""
    return _AddLoss.apply(x, penalty)


def straight_through(values: torch.Tensor, hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """values * mask with the mask `hard` in forward and `soft` in backward (all [U, D]).

    Forward is exactly values * hard (soft - soft.detach() is exactly 0, where
    hard + soft - soft.detach() would round); backward: d/dvalues = hard, d/dsoft = values."""
    return values * hard + values.detach() * (soft - soft.detach())


class MaskedChunkPolicy(ChunkedPolicy):
    """Base of `dml` and `amtl`: see module docstring. Subclasses set `self.mask_module` (the
    mask's learnable parameters, trained by the Learner's dense optimizer) and implement
    `masks`."""

    mask_module: nn.Module

    def __init__(
        self,
        config: StoreConfig,
        num_fields: int,
        spec: str,
        relayout: int,
        penalty: float,
        warmup: int = 0,
    ) -> None:
        if config.budget is not None:
            raise ValueError("masked policies have no budget: the learned mask sets the memory")
        super().__init__(config, num_fields, spec)
        self.relayout_every = relayout
        self.penalty_weight = penalty
        self.warmup = warmup  # the penalty ramps up linearly over this many steps
        self.steps = 0
        offsets = torch.from_numpy(self.store.offsets).float()
        # prefix[n - 1, d] = 1 where dim d is kept by a mask of n chunks: float32[K, D]
        self._prefix = (torch.arange(config.dim)[None, :] < offsets[1:, None]).float()
        self.last_penalty = 0.0

    @staticmethod
    def store_config(params: dict[str, str], seed: int, widths: str,
                     own: type[PolicyParams] = PolicyParams) -> StoreConfig:
        """StoreConfig of the spec's remaining parameters (`own`: the policy's parameter
        model, named in the message about an unknown parameter)."""
        params = dict(params)
        params.setdefault("widths", widths)
        params.setdefault("budget", "none")
        return _store_config(params, seed, also_known=own.model_fields)

    # ---- the subclass's mask --------------------------------------------------------------
    @abstractmethod
    def masks(
        self, slots: np.ndarray, train: bool
    ) -> tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        """Entries int32[U] -> (hard chunk counts int64[U] in 1..K, (hard mask, soft mask)
        float32[U, D] each (train only, else None), penalty scalar tensor (train only))."""

    def after_step(self) -> None:
        """Hook after the dense optimizer's step and the embedding update."""

    # ---- layout ---------------------------------------------------------------------------
    def resize(self, slots: np.ndarray, n_chunks: np.ndarray) -> int:
        """Give entries exactly their first n chunks: chunks past n are freed (their memory goes
        back to the pool), missing ones are allocated with the ID's initial values (the same
        values a new ID starts with). int32[N], int64[N] -> number of entries changed."""
        s = self.store
        if slots.size == 0:
            return 0
        n = np.where(s.count[slots] >= s.config.min_count, n_chunks, 0)
        addr = s.addresses(slots)
        want = np.arange(s.K)[None, :] < n[:, None]
        have = addr >= 0
        free, grow = have & ~want, want & ~have
        changed = (free | grow).any(axis=1)
        if not changed.any():
            return 0
        rows = np.flatnonzero(grow.any(axis=1))
        init = s._initial_values(slots[rows], s.config.dim) if rows.size else None
        row_of = np.full(slots.size, -1, dtype=np.int64)
        row_of[rows] = np.arange(rows.size)
        for j, pool in enumerate(s.pools):
            pool.release(addr[free[:, j], j])
            addr[free[:, j], j] = -1
            g = grow[:, j]
            k = int(g.sum())
            if k:
                new = pool.alloc(k)
                vals = init[torch.from_numpy(row_of[g])][:, s.offsets[j] : s.offsets[j + 1]]
                pool.write(new, vals)
                addr[g, j] = new
        s._set_addresses(slots[changed], addr[changed])
        s.dirty[slots[changed]] = True
        return int(changed.sum())

    def relayout(self) -> int:
        """Re-lay out every live entry to the current hard mask; returns entries changed."""
        slots = self.store.live_slots()
        if slots.size == 0:
            return 0
        with torch.no_grad():
            n, _, _ = self.masks(slots, train=False)
        return self.resize(slots, n)

    def chunk_counts(self) -> np.ndarray:
        """int64[E] stored chunks of every live entry (the hard mask as laid out)."""
        slots = self.store.live_slots()
        return (self.store.addresses(slots) >= 0).sum(axis=1)

    # ---- the policy interface -------------------------------------------------------------
    def lookup(self, ids: np.ndarray, train: bool = False) -> torch.Tensor:
        """int64[B, F] -> float32[B, F, D]: the stored prefix of each entry; in training times a
        straight-through mask (same values forward, mask gradients backward)."""
        if not train:
            return super().lookup(ids, train=False)
        B, F = ids.shape
        emb, ctx = self.store.lookup(ids, train=True)
        del emb  # re-gathered below, after the layout follows the mask
        n, mask, penalty = self.masks(ctx.unique, train=True)
        self.resize(ctx.unique, n)
        addr = self.store.addresses(ctx.unique)
        values = self.store._gather(ctx.unique, addr).requires_grad_(True)  # [U, D] leaf
        U = ctx.unique.size
        # The leaf is per unique entry, so the store sees one "access" row per entry.
        own = replace(ctx, inverse=np.arange(U), addresses=addr)
        self._pending = (own, values)
        masked = straight_through(values, *mask)
        out = masked[torch.from_numpy(ctx.inverse)].reshape(B, F, -1)
        if penalty is not None and self.penalty_weight > 0:
            self.last_penalty = float(penalty.detach())
            ramp = min(1.0, (self.steps + 1) / self.warmup) if self.warmup > 0 else 1.0
            out = add_loss(out, (self.penalty_weight * ramp) * penalty)
        return out

    def apply_gradients(self) -> None:
        super().apply_gradients()
        self.steps += 1
        self.after_step()
        if self.relayout_every and self.steps % self.relayout_every == 0:
            self.relayout()

    def dense_parameters(self) -> list[nn.Parameter]:
        return list(self.mask_module.parameters())

    def mask_bytes(self) -> int:
        """The mask's parameters and their dense-optimizer (Adam) state, in bytes."""
        n = sum(p.numel() for p in self.mask_module.parameters())
        return 4 * n * (1 + ADAM_SLOTS)

    def memory(self) -> MemoryReport:
        """The store's measured bytes (only stored chunks count), the mask's parameters and
        their optimizer state added to metadata."""
        m = super().memory()
        m.metadata_bytes += self.mask_bytes()
        return m

    def stats(self) -> dict[str, float]:
        out = super().stats()
        n = self.chunk_counts()
        dims = np.concatenate([[0], self.store.offsets[1:]])[n] if n.size else n
        out["mean_stored_dims"] = float(dims.mean()) if n.size else 0.0
        out["penalty"] = self.last_penalty
        return out

    # ---- persistence: the store's .npz plus the mask's state ------------------------------
    def extra_state(self) -> dict[str, object]:
        """JSON-able state beyond the mask module's tensors (subclasses add theirs)."""
        return {"steps": self.steps}

    def load_extra_state(self, state: dict[str, object]) -> None:
        self.steps = int(state.get("steps", 0))  # type: ignore[arg-type]

    def save(self, path: Path) -> None:
        """ChunkStore.save, with the mask's tensors added as `mask.*` arrays (ChunkStore.load
        ignores them, so a hot start reads this file like any store save)."""
        path = Path(path)
        self.store.save(path)
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        for name, t in self.mask_module.state_dict().items():
            arrays[_MASK_PREFIX + name] = t.detach().numpy()
        meta = json.dumps(self.extra_state()).encode()
        arrays[_MASK_PREFIX + "meta"] = np.frombuffer(meta, dtype=np.uint8)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def load(self, path: Path) -> None:
        """Load in place: the mask parameters keep their identity (the optimizer holds them)."""
        self.store = ChunkStore.load(path)
        with np.load(Path(path)) as z:
            state = {
                k[len(_MASK_PREFIX) :]: torch.from_numpy(np.array(z[k]))
                for k in z.files
                if k.startswith(_MASK_PREFIX)
            }
        meta = state.pop("meta", None)
        if state:
            self.mask_module.load_state_dict(state)
        if meta is not None:
            self.load_extra_state(json.loads(meta.numpy().tobytes().decode()))
