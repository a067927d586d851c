"""The values a new ID starts with: a pure function of (seed, field, raw ID, dimension), so every
policy starts an ID at the same point, on any device.

    initial_values(fields, keys, seed=0, width=8, init_std=0.01)  # -> float32[N, 8]
"""

from __future__ import annotations

import numpy as np
import torch

from storage.vhpi.device_index import mix64_t


def hashed_uniform(fields: torch.Tensor, keys: torch.Tensor, salt: int, first: int,
                   width: int) -> torch.Tensor:
    """float32[N, width] in [0, 1): one hash of (salt, field, key, position first + j) a value,
    on the keys' device: int16[N] (or [1], broadcast), int64[N] -> a pure function of what it
    draws for, not of the order or the store it is drawn in."""
    base = mix64_t(fields, keys ^ salt)
    d = torch.arange(first, first + width, dtype=torch.int64, device=keys.device)
    h = mix64_t(torch.zeros(1, dtype=torch.int16, device=keys.device), base[:, None] + d[None, :])
    return ((h >> 40) & 0xFFFFFF).to(torch.float32) * (1.0 / (1 << 24))


def initial_values(fields: torch.Tensor, keys: torch.Tensor, seed: int, width: int,
                   init_std: float) -> torch.Tensor:
    """Uniform values with standard deviation init_std for the first `width` dimensions of
    each ID, a pure function of (seed, field, raw ID, dimension), so every policy starts an ID
    at the same point, on any device: int16[N], int64[N] -> float32[N, width] on their device.
    One hash per value."""
    u = hashed_uniform(fields, keys, seed, 0, width)
    half_width = float(np.float32(init_std * np.sqrt(3.0)))  # a kernel argument: no copy
    return (u * 2 - 1) * half_width
