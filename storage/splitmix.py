"""splitmix64's finaliser: the one 64-bit mixer of the project (the hash index, the hashed rows
of `torch:d`, the synthetic data set's IDs). A bijection on uint64 with good avalanche, a few
vector ops per call.

    splitmix64(np.array([1, 2], np.uint64))            # -> uint64[2]
    splitmix64_inverse(splitmix64(x)) == x              # for every uint64[...] x
"""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: the salt step between streams
_C1, _C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
# the same three constants as signed int64 (what torch and Triton multiply with)
SIGNED_CONSTANTS = tuple(c - (1 << 64) if c >= 1 << 63 else c for c in (int(GOLDEN), _C1, _C2))
_C1_INV, _C2_INV = pow(_C1, -1, 1 << 64), pow(_C2, -1, 1 << 64)
_U = np.uint64


def splitmix64(x: np.ndarray) -> np.ndarray:
    """uint64[...] -> uint64[...] (a new array; wraps modulo 2^64)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> _U(30))) * _U(_C1)
        x = (x ^ (x >> _U(27))) * _U(_C2)
        return x ^ (x >> _U(31))


def splitmix64_inverse(x: np.ndarray) -> np.ndarray:
    """The inverse of `splitmix64`: uint64[...] -> uint64[...]."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> _U(31)) ^ (x >> _U(62))
        x = x * _U(_C2_INV)
        x = x ^ (x >> _U(27)) ^ (x >> _U(54))
        x = x * _U(_C1_INV)
        return x ^ (x >> _U(30)) ^ (x >> _U(60))
