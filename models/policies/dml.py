"""`dml`: Dimension Mask Layer (Saket et al., arXiv 2510.15308): one learned length N_f per
feature field; only the first N_f dimensions of the field's embeddings pass, and only they are
stored.

    dml[:penalty=0.02,tau=2,speed=500,init=64,harden=300,widths=4-4-8-8-8-16-16,...]

How N_f is learned (the paper gives the layer, not a rule; this is ours):
- Each field has a threshold t_f = init + speed * theta_f (theta_f a dense parameter, trained
  by the Learner's optimizer; `speed` sets how many dims one unit of theta moves, so that Adam's
  ~lr-sized steps move t by about lr * speed dims per step).
- Soft mask over dimension index d (0-based): m_d = sigmoid((t_f - d - 1/2) / tau).
- Hard mask, chunk-aligned: keep chunk j iff it starts below t_f (at least chunk 0), so N_f is
  t_f rounded up to a chunk boundary. With widths 4-4-8-8-8-16-16, N in {4,8,16,24,32,48,64}.
  With a memory target, a field's last chunk is partial: the chunk t_f is inside (from its
  start s to s + w) is kept by the fraction (t_f - s) / w of the field's IDs whose hash falls
  below it, the others stop a chunk short, so the field's mean length follows t_f smoothly
  instead of in steps of a whole chunk of every ID (an ID's hash is fixed: as t_f rises the
  same IDs keep their chunk and more join them).
- Forward uses the hard mask, backward the soft one (straight-through), plus a sparsity
  penalty `penalty * mean_f(sum_d m_d / D)` (the expected kept fraction) on the loss. Dims that
  help the loss push t_f up against the penalty; a field without signal shrinks to one chunk.
- Hardening: once a field's N_f has not changed for `harden` steps, its t_f is frozen (restored
  after every optimizer step) and N_f is final.
- With a memory target (`memory=0.25`, models.policies.masked) a controlled multiplier lam
  lowers every t_f by lam * D so that the memory follows the target; hardening is then off.
  Without the partial chunk above, the fractions DML could reach were steps (a field with
  most of the IDs moved the memory by a whole chunk of each of its IDs at once; measured on
  Frappe, first 40,000 rows: 17.6% for a target of 25%).

When the tail is freed: always. An entry stores exactly the chunks of its field's current
N_f; a train lookup re-lays out the batch's entries first (chunks past N_f are freed to the
pool; chunks that N_f grew into are allocated with the ID's initial values), and every
`relayout` steps (default 50) all live entries are re-laid out, so a shrink reaches IDs not seen
since. New IDs are born with N_f's chunks only.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat
from torch import nn

from models.policies.masked import MaskedChunkPolicy, MaskedParams

DML_WIDTHS = "4-4-8-8-8-16-16"


class DMLParams(MaskedParams):
    """dml's own spec parameters (the rest go to StoreConfig)."""

    penalty: NonNegativeFloat = 0.02  # weight of the expected kept fraction in the loss
    tau: PositiveFloat = 2.0  # soft mask temperature, in dims
    speed: PositiveFloat = 500.0  # dims one unit of theta moves t_f
    init: NonNegativeFloat | None = None  # t_f at start, in dims; default D
    harden: NonNegativeInt = 300  # freeze N_f after this many steps unchanged; 0: never


class DimensionMaskPolicy(MaskedChunkPolicy):
    """Per-field learned length N_f over the chunk store. lookup(int64[B, F]) ->
    float32[B, F, D] with dims >= N_f zero (and not stored)."""

    Params = DMLParams
    WIDTHS = DML_WIDTHS
    CONTROL_RATE = 0.06  # lam is in units of D: a step moves every threshold by 3.8 dims at D=64
    # The integral must outrun the thresholds' own descent under the loss penalty (at 0.02 it
    # trailed 3 points below 50% on MovieLens-1M part, traced); a proportional gain of 10 at
    # this rate flipped fields every step (0.29 <-> 0.70), 2 does not.
    PROPORTIONAL = 2.0
    TARGET_KEEPS_PENALTY = True
    LAM_MAX = 4.0  # t_f is not clamped above: a learned t_f may sit well past D

    def setup(self, params: DMLParams) -> None:  # type: ignore[override]
        D = self.store.config.dim
        num_fields = self.num_fields
        self.speed = params.speed
        self.init = float(D if params.init is None else params.init)
        # a memory target moves the penalty for as long as the run lasts: N_f must follow it
        self.harden_after = params.harden if params.memory is None else 0
        self.mask_module = nn.ParameterDict({"theta": nn.Parameter(torch.zeros(num_fields))})
        dev = self.store.device
        self.mask_module.to(dev)
        self._starts = torch.from_numpy(self.store.offsets[:-1]).float().to(dev)  # [K] starts
        self._dim_center = torch.arange(D, dtype=torch.float32, device=dev) + 0.5  # [D]
        self.frozen = np.zeros(num_fields, dtype=bool)
        self.frozen_theta = np.zeros(num_fields, dtype=np.float32)
        self.last_n = self.field_chunks()
        self.last_change = np.zeros(num_fields, dtype=np.int64)

    @property
    def theta(self) -> nn.Parameter:
        return self.mask_module["theta"]

    def thresholds(self) -> torch.Tensor:
        """t_f, float32[F], in dims; differentiable in theta. Not clamped (a clamp would stop
        the gradient at the ends); the hard mask keeps at least one chunk and at most K."""
        t = self.init + self.speed * self.theta
        # a memory target's multiplier lowers every threshold by lam * D (masked.py)
        return t - self.lam * self.store.config.dim if self.lam else t

    def field_chunks(self) -> np.ndarray:
        """Hard N_f as a chunk count, int64[F] in 1..K: chunks starting below t_f."""
        with torch.no_grad():
            t = self.thresholds()
            n = (self._starts[None, :] < t[:, None]).sum(dim=1)
        return n.clamp(min=1).cpu().numpy().astype(np.int64)

    def field_dims(self) -> np.ndarray:
        """Hard N_f in dims, int64[F]."""
        return self.store.offsets[self.field_chunks()]

    def masks(
        self, slots: torch.Tensor, train: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        rows = self.store.index.fields[slots].long()
        n_field = torch.from_numpy(self.field_chunks()).to(self.device)
        n = n_field[rows]
        if self.memory_target is not None:  # the field's last chunk partial (docstring)
            partial = self.id_hash01(slots) >= self._last_fill()[rows]
            n = torch.where(partial, (n - 1).clamp(min=1), n)
        if not train:
            return n, None, None
        t = self.thresholds()  # [F]
        soft = torch.sigmoid((t[:, None] - self._dim_center[None, :]) / self.tau)  # [F, D]
        penalty = soft.mean()  # mean over fields of the expected kept fraction
        return n, (self._prefix[n - 1], soft[rows]), penalty

    def _last_fill(self) -> torch.Tensor:
        """float32[F]: the part of each field's last hard chunk below t_f, in (0, 1] (1 at
        one chunk: the first is always kept whole)."""
        with torch.no_grad():
            t = self.thresholds()
            n = torch.from_numpy(self.field_chunks()).to(self.device)
            start = self._starts[n - 1]
            width = torch.from_numpy(np.diff(self.store.offsets)).float().to(self.device)[n - 1]
            fill = ((t - start) / width).clamp(0.0, 1.0)
        return torch.where(n > 1, fill, 1.0)

    def after_step(self) -> None:
        if self.frozen.any():
            with torch.no_grad():
                self.theta[torch.from_numpy(self.frozen).to(self.device)] = torch.from_numpy(
                    self.frozen_theta[self.frozen]
                ).to(self.device)
        n = self.field_chunks()
        moved = n != self.last_n
        self.last_change[moved] = self.steps
        self.last_n = n
        stable = ~self.frozen & (self.steps - self.last_change >= self.harden_after)
        if self.harden_after > 0 and stable.any():
            self.frozen |= stable
            self.frozen_theta[stable] = self.theta.detach().cpu().numpy()[stable]

    def stats(self) -> dict[str, float]:
        out = super().stats()
        for f, d in enumerate(self.field_dims()):
            out[f"N_{f}"] = float(d)
        out["hardened_fields"] = float(self.frozen.sum())
        return out

    def extra_state(self) -> dict[str, object]:
        return super().extra_state() | {
            "frozen": self.frozen.tolist(),
            "frozen_theta": self.frozen_theta.tolist(),
            "last_change": self.last_change.tolist(),
        }

    def load_extra_state(self, state: dict[str, object]) -> None:
        super().load_extra_state(state)
        self.frozen = np.array(state.get("frozen", self.frozen), dtype=bool)
        self.frozen_theta = np.array(state.get("frozen_theta", self.frozen_theta), np.float32)
        self.last_change = np.array(state.get("last_change", self.last_change), np.int64)
        self.last_n = self.field_chunks()
