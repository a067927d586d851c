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

A memory target (`memory=0.25`: 25% of the total bytes a fixed-D store would take for the same
IDs) adds a second, controlled penalty: a multiplier `lam` on the kept fraction, applied where
it acts at once, in the masks themselves (the subclass lowers each option's logit, or each
field's threshold, by lam times what it keeps), and moved by a controller: every `control`
steps the policy measures what its current hard mask costs over every live entry
(`memory_fraction`, what a relayout would leave) and, with e = (fraction - target) / target
clipped to [-1, 1], sets I <- I + rate * e and lam = I + P * rate * e (P: 10, DML's 2; a PI
controller; the integral is dual ascent on the memory constraint: lam rises while the memory
is above the target and falls below it, the proportional part answers at once to the masks'
own drift). lam may go below 0, a reward for memory, where the loss penalty alone takes the
masks below the target. A penalty through the loss cannot do this: Adam's momentum carries a
mask past the target, and dims a mask has dropped read zeros and get no gradient, so nothing
grows it back (measured: a controller on the loss penalty wound up and left every ID at one
chunk on MovieLens-1M with a target of 50%). The loss penalty (`penalty`) still trains the masks as
without a target if a spec gives it (or the policy keeps it: DML, where it is what stops the
learned thresholds from climbing without end against lam); else it is 0 under a target
(measured: AMTL's default loss penalty alone took MovieLens-1M to 19% of the bytes, and the
masks it had trained did not come back up for a target of 25%).
"""

from __future__ import annotations

import json
from abc import abstractmethod
from dataclasses import replace
from pathlib import Path
from typing import Annotated, ClassVar

import numpy as np
import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn

from models.policies.chunked import ChunkedPolicy
from models.policies.params import PolicyParams, store_config
from models.policy import MemoryReport
from storage.atomic_npz import read_npz, write_npz
from storage.vhpi.config import fixed_entry_bytes
from storage.vhpi.device_index import mix64_t
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
        return grad, torch.ones((), dtype=grad.dtype, device=grad.device)


def add_loss(x: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """x unchanged; backward through it also back-propagates d(penalty)/d(params) once."""
    return _AddLoss.apply(x, penalty)


def straight_through(values: torch.Tensor, hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """values * mask with the mask `hard` in forward and `soft` in backward (all [U, D]).

    Forward is exactly values * hard (soft - soft.detach() is exactly 0, where
    hard + soft - soft.detach() would round); backward: d/dvalues = hard, d/dsoft = values."""
    return values * hard + values.detach() * (soft - soft.detach())


class MaskedParams(PolicyParams):
    """The spec parameters every masked policy has (the subclass sets its own defaults)."""

    penalty: NonNegativeFloat = 0.0  # weight of the expected kept fraction in the loss
    tau: PositiveFloat = 1.0  # soft mask temperature
    relayout: PositiveInt = 50  # re-lay out every live entry every this many steps
    warmup: NonNegativeInt = 0  # the penalty ramps up over this many steps
    # target fraction of fixed-D's total bytes for the same IDs; None: the penalty is fixed
    memory: Annotated[float, Field(gt=0, le=1)] | None = None
    control: PositiveInt = 1  # with a memory target: adjust the penalty every this many steps
    rate: PositiveFloat | None = None  # the controller's step; default: the policy's


class MaskedChunkPolicy(ChunkedPolicy):
    """Base of `dml` and `amtl`: see module docstring. Subclasses declare `Params` and
    `WIDTHS` (the default chunk widths), set up their mask in `setup` (`self.mask_module`: the
    mask's learnable parameters, trained by the Learner's dense optimizer) and implement
    `masks`."""

    Params: ClassVar[type[MaskedParams]] = MaskedParams
    WIDTHS: ClassVar[str]
    CONTROL_RATE: ClassVar[float]  # the controller's default step, in the subclass's lam units
    TARGET_KEEPS_PENALTY: ClassVar[bool] = False  # the loss penalty stays on under a target
    LAM_MAX: ClassVar[float]  # |lam|'s ceiling, past where every entry is at one chunk (or K)
    PROPORTIONAL: ClassVar[float] = 10.0  # P: the controller's proportional gain, x its rate
    mask_module: nn.Module

    @classmethod
    def from_params(cls, params: MaskedParams, rest: dict[str, str], num_fields: int,
                    seed: int, spec: str) -> MaskedChunkPolicy:
        rest = dict(rest)
        rest.setdefault("widths", cls.WIDTHS)
        rest.setdefault("budget", "none")
        return cls(store_config(rest, seed, own=cls.Params), num_fields, spec, params)

    def __init__(self, config: StoreConfig, num_fields: int, spec: str,
                 params: MaskedParams) -> None:
        if config.budget is not None:
            raise ValueError("masked policies have no budget: the learned mask sets the memory")
        self.check(params, config)  # before the store is built
        super().__init__(config, num_fields, spec)
        self.relayout_every = params.relayout
        # under a memory target the controller sets the memory: no loss penalty unless asked
        given = "penalty" in params.model_fields_set or self.TARGET_KEEPS_PENALTY
        self.penalty_weight = 0.0 if params.memory is not None and not given else params.penalty
        self.warmup = params.warmup  # the penalty ramps up linearly over this many steps
        self.tau = params.tau
        self.memory_target = params.memory
        self.control_every = params.control
        self.control_rate = params.rate if params.rate is not None else self.CONTROL_RATE
        self.last_fraction = float("nan")
        self.lam = self.lam_integral = 0.0  # the controlled multiplier (module docstring)
        self.steps = 0
        offsets = torch.from_numpy(self.store.offsets).float().to(self.store.device)
        # prefix[n - 1, d] = 1 where dim d is kept by a mask of n chunks: float32[K, D]
        dims = torch.arange(config.dim, device=self.store.device)
        self._prefix = (dims[None, :] < offsets[1:, None]).float()
        self.last_penalty = 0.0
        self.setup(params)
        self.mask_module.to(self.store.device)

    @classmethod
    def check(cls, params: MaskedParams, config: StoreConfig) -> None:
        """Refuse parameters that do not fit the config (ValueError)."""

    @abstractmethod
    def setup(self, params: MaskedParams) -> None:
        """The subclass's own state from its parameters, and `self.mask_module`."""

    # ---- the subclass's mask --------------------------------------------------------------
    @abstractmethod
    def masks(
        self, slots: torch.Tensor, train: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        """Entries int64[U] -> (hard chunk counts int64[U] in 1..K, (hard mask, soft mask)
        float32[U, D] each (train only, else None), penalty scalar tensor (train only))."""

    def after_step(self) -> None:
        """Hook after the dense optimizer's step and the embedding update."""

    def id_hash01(self, slots: torch.Tensor) -> torch.Tensor:
        """float32[U] in [0, 1), a fixed function of each entry's (field, raw ID): what spreads
        a memory target's action over a field's IDs (dml's partial chunk)."""
        index = self.store.index
        h = mix64_t(index.fields[slots], index.keys[slots] ^ 0x5DEECE66D)
        return ((h >> 40) & 0xFFFFFF).float() * (1.0 / (1 << 24))

    # ---- layout ---------------------------------------------------------------------------
    def resize(self, slots: torch.Tensor, n_chunks: torch.Tensor) -> int:
        """Give entries exactly their first n chunks (ChunkStore.resize): int64[N], int64[N]
        -> number of entries changed."""
        return self.store.resize(slots, n_chunks)

    def relayout(self) -> int:
        """Re-lay out every live entry to the current hard mask; returns entries changed."""
        slots = self.store.live_slots()
        if slots.numel() == 0:
            return 0
        with torch.no_grad():
            n, _, _ = self.masks(slots, train=False)
        return self.resize(slots, n)

    def chunk_counts(self) -> np.ndarray:
        """int64[E] stored chunks of every live entry (the hard mask as laid out)."""
        slots = self.store.live_slots()
        return (self.store.addresses(slots) >= 0).sum(dim=1).cpu().numpy()

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
        values = self.store.gather(ctx.unique, addr).requires_grad_(True)  # [U, D] leaf
        U = ctx.unique.numel()
        # The leaf is per unique entry, so the store sees one "access" row per entry.
        own = replace(ctx, inverse=torch.arange(U, device=self.device), addresses=addr)
        self._pending = (own, values)
        masked = straight_through(values, *mask)
        out = masked.index_select(0, ctx.inverse).reshape(B, F, -1)
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
        if self.memory_target is not None and self.steps % self.control_every == 0:
            self.control_penalty()

    # ---- the memory controller ------------------------------------------------------------
    def memory_fraction(self) -> float:
        """Total bytes of every live entry laid out to its current hard mask (entries, their
        chunks and the chunks' links, index table, mask parameters), as a fraction of what a
        fixed-D store would take for the same IDs."""
        store = self.store
        slots = store.live_slots()
        E = slots.numel()
        table = store.index.table_bytes
        fixed = E * fixed_entry_bytes(store.config.dim, store.config.optimizer) + table
        if E == 0:
            return 0.0
        with torch.no_grad():
            n, _, _ = self.masks(slots, train=False)
        held = torch.where(store.entries.count[slots] >= store.config.min_count, n, 0)
        prefix = np.concatenate([[0.0], np.cumsum(store.entries.position_costs())])
        per_n = torch.bincount(held.long(), minlength=self.store.K + 1).cpu().numpy()
        chunks = float(per_n @ prefix)
        used = chunks + E * store.entry_bytes() + table + self.mask_bytes()
        return used / fixed

    def control_penalty(self) -> None:
        """One step of the controller (module docstring): the penalty follows the target."""
        assert self.memory_target is not None
        self.last_fraction = frac = self.memory_fraction()
        e = float(np.clip((frac - self.memory_target) / self.memory_target, -1.0, 1.0))
        bound = self.LAM_MAX
        self.lam_integral = min(max(self.lam_integral + self.control_rate * e, -bound), bound)
        self.lam = min(max(self.lam_integral + self.PROPORTIONAL * self.control_rate * e, -bound),
                       bound)

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
        if self.memory_target is not None:
            out["lam"] = self.lam
            out["memory_fraction"] = self.memory_fraction()
        return out

    # ---- persistence: the store's .npz plus the mask's state ------------------------------
    def extra_state(self) -> dict[str, object]:
        """JSON-able state beyond the mask module's tensors (subclasses add theirs)."""
        return {"steps": self.steps, "lam": self.lam, "lam_integral": self.lam_integral}

    def load_extra_state(self, state: dict[str, object]) -> None:
        self.steps = int(state.get("steps", 0))  # type: ignore[arg-type]
        self.lam = float(state.get("lam", 0.0))  # type: ignore[arg-type]
        self.lam_integral = float(state.get("lam_integral", 0.0))  # type: ignore[arg-type]

    def save(self, path: Path) -> None:
        """ChunkStore.save, with the mask's tensors added as `mask.*` arrays (ChunkStore.load
        ignores them, so a hot start reads this file like any store save)."""
        path = Path(path)
        self.store.save(path)
        arrays = read_npz(path)
        for name, t in self.mask_module.state_dict().items():
            arrays[_MASK_PREFIX + name] = t.detach().cpu().numpy()
        meta = json.dumps(self.extra_state()).encode()
        arrays[_MASK_PREFIX + "meta"] = np.frombuffer(meta, dtype=np.uint8)
        write_npz(path, arrays)

    def load(self, path: Path) -> None:
        """Load in place: the mask parameters keep their identity (the optimizer holds them)."""
        self.store = ChunkStore.load(path, device=self.store.config.device)
        state = {k[len(_MASK_PREFIX) :]: torch.from_numpy(v)
                 for k, v in read_npz(path).items() if k.startswith(_MASK_PREFIX)}
        meta = state.pop("meta", None)
        if state:
            self.mask_module.load_state_dict(state)
        if meta is not None:
            self.load_extra_state(json.loads(meta.numpy().tobytes().decode()))
