"""`amtl`: Adaptively-Masked Twins-based Layer (arXiv 2108.11513): per feature value, a mask
keeping its first k dims, k chosen from the value's frequency; only the kept dims are stored.

    amtl[:penalty=0.001,warmup=100,tau=1,gain=5,hidden=16,high=1000,start=K,widths=4-4-8-16-32,...]

How k is learned:
- Input per entry: x = log1p(count) / log1p(high), the store's training access count (`count`)
  on a log scale, 1.0 at `high` accesses.
- Twin mask networks, one for high- and one for low-frequency values, not shared: each is a
  per-field MLP 1 -> hidden -> K (ReLU), weights in the policy's dense parameters (trained by
  the Learner's optimizer). Their logits are mixed by the frequency weight
  a = clip(x, 0, 1): z = gain * (a * high(x) + (1 - a) * low(x)), so frequent values are decided
  (and their gradients taken) mostly by the high branch, rare ones by the low branch, and the
  many rare values do not drown the few frequent ones.
- p = softmax(z / tau) over the K options "keep the first n chunks" (n = 1..K; widths
  4-4-8-16-32 give k in {4, 8, 16, 32, 64}). Forward: the hard one-hot argmax(p) (the mask is
  exactly the prefix of n chunks); backward: p's gradient (straight-through estimator). The
  mask over dims is  M = onehot_ste(p) @ prefix,  prefix[n - 1, d] = [d < offsets[n]].
- Penalty: `penalty * mean_u(p_u . k / D)`, the expected kept fraction over the batch's unique
  values, added to the loss (the paper has no explicit penalty; we add one so the memory can
  be set; `memory=0.25` adds a controlled multiplier lam that lowers option n's logit by
  lam * (2 - a) * k_n / D, so the memory lands on 25% of fixed-D's bytes, rare values giving
  way first; models.policies.masked).
  Initially every value prefers option `start` (default K: full width) by a logit margin of 1.

Storage: an entry holds exactly the chunks of its current k (see models.policies.masked):
chunks past k are freed at the entry's next train lookup or at the next relayout (every
`relayout` steps, all live entries); chunks k grows into start at the ID's initial values.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn

from models.policies.masked import MaskedChunkPolicy, MaskedParams
from storage.vhpi.config import StoreConfig

AMTL_WIDTHS = "4-4-8-16-32"


class AMTLParams(MaskedParams):
    """amtl's own spec parameters (the rest go to StoreConfig)."""

    penalty: NonNegativeFloat = 0.001  # weight of the expected kept fraction in the loss
    tau: PositiveFloat = 1.0  # softmax temperature
    gain: PositiveFloat = 5.0  # logit scale
    hidden: PositiveInt = 16  # width of each twin MLP
    high: PositiveFloat = 1000.0  # accesses at which the frequency input reaches 1.0
    start: PositiveInt | None = None  # option every value starts at, 1..K; default K
    warmup: NonNegativeInt = 100  # the penalty ramps up over this many steps


class TwinMaskNet(nn.Module):
    """Two per-field MLPs (high / low frequency), 1 -> H -> K, mixed by frequency weight.

    forward(fields: int64[U], x: float32[U]) -> logits float32[U, K]
    """

    def __init__(self, num_fields: int, hidden: int, options: int, start: int, gain: float,
                 seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        F, H, K = num_fields, hidden, options
        self.gain = gain
        self.w1 = nn.Parameter(torch.randn(2, F, H, generator=g))
        self.b1 = nn.Parameter(torch.randn(2, F, H, generator=g) * 0.5)
        # Last layer zero: every value starts at option `start`, whatever its frequency.
        self.w2 = nn.Parameter(torch.zeros(2, F, H, K))
        b2 = torch.zeros(2, F, K)
        b2[:, :, start - 1] = 1.0 / gain  # a logit margin of 1 for the starting option
        self.b2 = nn.Parameter(b2)

    def forward(self, fields: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x[None, :, None] * self.w1[:, fields] + self.b1[:, fields])  # [2, U, H]
        out = torch.einsum("buh,buhk->buk", h, self.w2[:, fields]) + self.b2[:, fields]
        a = x.clamp(0.0, 1.0)[:, None]  # weight of the high-frequency branch
        return self.gain * (a * out[0] + (1.0 - a) * out[1])


class AMTLPolicy(MaskedChunkPolicy):
    """Per-value learned k over the chunk store. lookup(int64[B, F]) -> float32[B, F, D] with
    dims >= k(value) zero (and not stored)."""

    Params = AMTLParams
    WIDTHS = AMTL_WIDTHS
    CONTROL_RATE = 0.05  # lam is in logits per unit of kept fraction
    LAM_MAX = 100.0

    @classmethod
    def check(cls, params: AMTLParams, config: StoreConfig) -> None:  # type: ignore[override]
        K = config.num_chunks
        start = K if params.start is None else params.start
        if not 1 <= start <= K:
            raise ValueError(f"start must be a chunk count in 1..{K}, got {start}")

    def setup(self, params: AMTLParams) -> None:  # type: ignore[override]
        config = self.store.config
        K = config.num_chunks
        start = K if params.start is None else params.start
        self.log_hot = float(np.log1p(params.high))
        self.mask_module = TwinMaskNet(self.num_fields, params.hidden, K, start, params.gain,
                                       config.seed)
        self.mask_module.to(self.store.device)
        self._kept = (torch.from_numpy(self.store.offsets[1:]).float() / config.dim).to(
            self.store.device)  # [K]

    def frequency(self, slots: torch.Tensor) -> torch.Tensor:
        """float32[U] log-scaled access counts, 1.0 at `high` accesses."""
        c = self.store.counts(slots).float()
        return torch.log1p(c) / np.float32(self.log_hot)

    def probabilities(self, slots: torch.Tensor) -> torch.Tensor:
        """float32[U, K]: softmax(z / tau) over "keep n chunks", n = 1..K."""
        fields = self.store.index.fields[slots].long()
        x = self.frequency(slots)
        z = self.mask_module(fields, x) / self.tau
        if self.lam:
            # A memory target's multiplier: each option costs lam * its kept fraction, twice as
            # much for a value never seen as for one seen `high` times. Without the frequency
            # in the price every value of a field would move at once while the twin networks
            # still ignore frequency (they start so), and the memory would move in steps of
            # whole fields.
            price = 2.0 - x.clamp(0.0, 1.0)
            z = z - self.lam * price[:, None] * self._kept[None, :]
        return torch.softmax(z, dim=1)

    def masks(
        self, slots: torch.Tensor, train: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        if not train:
            with torch.no_grad():
                p = self.probabilities(slots)
            return p.argmax(dim=1) + 1, None, None
        p = self.probabilities(slots)  # [U, K]
        choice = p.detach().argmax(dim=1)
        hard = torch.nn.functional.one_hot(choice, p.shape[1]).float()
        # Masks over dims [U, D]: the hard one-hot's prefix forward, p's expected mask backward
        # (d mask / d p_n = prefix of n chunks: the straight-through estimator).
        masks = (hard @ self._prefix, p @ self._prefix)
        penalty = (p @ self._kept).mean()
        return choice + 1, masks, penalty

    def stats(self) -> dict[str, float]:
        out = super().stats()
        slots = self.store.live_slots()
        if slots.numel():
            n = (self.store.addresses(slots) >= 0).sum(dim=1).cpu().numpy()
            fields = self.store.index.fields[slots].cpu().numpy().astype(np.int64)
            dims = self.store.offsets[n]
            sums = np.bincount(fields, weights=dims, minlength=self.num_fields)
            cnt = np.maximum(np.bincount(fields, minlength=self.num_fields), 1)
            for f in range(self.num_fields):
                out[f"mean_k_{f}"] = float(sums[f] / cnt[f])
        return out
