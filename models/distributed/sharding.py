"""Which rank owns an ID: a hash of (field, raw ID), modulo the number of ranks.

    owner = owner_of(fields, keys, world=2)     # int[N], int64[N] -> int64[N] in [0, world)

The hash is a multiply-shift over both parts, independent of the index's own hash (so a
shard's keys spread over its whole hash table), computed with torch int64 ops that wrap the
same way on the CPU and on CUDA. Restoring N ranks' shards into M ranks re-hashes with M.
"""

from __future__ import annotations

import torch

# odd 64-bit constants (as signed int64): a multiply-shift hash takes the product's top bits
_A = -7046029254386353131  # 0x9E3779B97F4A7C15
_B = -4658895280553007687  # 0xBF58476D1CE4E5B9


def owner_of(fields: torch.Tensor, keys: torch.Tensor, world: int) -> torch.Tensor:
    """int[N] fields, int64[N] raw IDs -> int64[N] owning rank in [0, world)."""
    if world == 1:
        return torch.zeros(keys.shape, dtype=torch.int64, device=keys.device)
    h = keys.long() * _A + (fields.long() + 1) * _B
    h = h ^ ((h >> 29) & ((1 << 35) - 1))  # fold the high bits down (logical shift)
    h = h * _A
    return ((h >> 33) & 0x7FFFFFFF) % world
