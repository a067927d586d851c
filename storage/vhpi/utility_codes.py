"""Chunk utilities in one byte each: a logarithmic code with stochastic rounding.

A utility is a decayed sum of gradient norms; the prune step only ranks them (relative to their
(field, position) mean), so their order matters, not their digits. One byte a utility instead
of float16's two: code 0 is exactly 0, code c in 1..255 is 2^(LOG2_MIN + (c - 1) / PER_OCTAVE),
so 255 levels, PER_OCTAVE to an octave (adjacent levels 12.2% apart), cover 2^-26 .. 2^16.3:
all of float16's range (its smallest subnormal is 2^-24, the old cap 60000 < 2^16), the range
the utilities had when they were float16. Measured (stored utilities at every 5th prune, log2,
0.1% / median / max): frappe -22 / -8.1 / 5.8, the synthetic stream -24 / -16.3 / 3.3; a hot
start's seeds (access count x chunk norm, models/policies/hot_start.py) reach thousands, which
a range topping at 2^8 flattened into ties. Values past the top saturate there.

Rounding is stochastic: a value between two levels takes the upper one with probability
(u - lower) / (upper - lower), so the code is unbiased, E[decode(encode(u))] = u. That matters:
every training step adds a small a * ||g|| to an ID's utility, often much less than 12% of it;
nearest rounding would drop every such increment, stochastic rounding keeps them on average.

    codes = encode(u, gen)     # float32[...] >= 0 -> uint8[...], on u's device
    codes = encode(u, noise=r) # the rounding drawn by the caller (entries.py keys it)
    u2 = decode(codes)         # uint8[...] -> float32[...]
"""

from __future__ import annotations

import torch

from storage.vhpi.initial_values import hashed_uniform

LOG2_MIN = -26.0  # level of code 1
PER_OCTAVE = 6  # codes per doubling
TOP = 255


def _levels(device: torch.device) -> torch.Tensor:
    """float32[256]: the value of every code."""
    c = torch.arange(TOP + 1, dtype=torch.float64, device=device)
    levels = torch.exp2(LOG2_MIN + (c - 1) / PER_OCTAVE)
    levels[0] = 0.0
    return levels.float()


_CACHE: dict[torch.device, torch.Tensor] = {}


def levels(device: torch.device) -> torch.Tensor:
    """float32[256] level of every code on `device` (made once per device)."""
    if device not in _CACHE:
        _CACHE[device] = _levels(device)
    return _CACHE[device]


def max_value() -> float:
    """The largest value a code holds (where larger ones saturate)."""
    return float(2.0 ** (LOG2_MIN + (TOP - 1) / PER_OCTAVE))


def decode(codes: torch.Tensor) -> torch.Tensor:
    """uint8[...] -> float32[...]."""
    lv = levels(codes.device)
    return lv.index_select(0, codes.reshape(-1).long()).reshape(codes.shape)


def encode(u: torch.Tensor, gen: torch.Generator | None = None,
           noise: torch.Tensor | None = None) -> torch.Tensor:
    """float32[...] (>= 0; negatives and NaN read 0) -> uint8[...], stochastically rounded
    (module docstring): by `noise` (uniform [0, 1) of u's shape) when given, else drawn by
    `gen` (on u's device)."""
    u = torch.nan_to_num(u.float(), nan=0.0).clamp(min=0.0)
    lv = levels(u.device)
    # the code just below u (0 under the first level), from its log; float error near a level
    # can put it one off, which the probability clamp below absorbs
    pos = (torch.log2(u.clamp(min=1e-45)) - LOG2_MIN) * PER_OCTAVE + 1
    lo = torch.floor(pos).clamp(0, TOP - 1).long()
    lo = torch.where(u < lv[1], 0, lo)
    below, above = lv[lo], lv[lo + 1]
    p = ((u - below) / (above - below)).clamp(0.0, 1.0)
    r = noise if noise is not None else torch.rand(u.shape, generator=gen, device=u.device)
    return (lo + (r < p).long()).to(torch.uint8)


def keyed_noise(keys: torch.Tensor, round_key: int, first: int, width: int) -> torch.Tensor:
    """float32[N, width] uniform [0, 1), a hash of (round_key, key, position first + j): a
    rounding that depends on what is rounded, not on the order or the store it happens in."""
    rk = round_key & ((1 << 64) - 1)
    rk = rk - (1 << 64) if rk >= 1 << 63 else rk
    none = torch.zeros(1, dtype=torch.int16, device=keys.device)
    return hashed_uniform(none, keys.long(), rk, first, width)
