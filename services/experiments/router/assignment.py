"""Deterministic arm assignment.

    u = blake2b(f"{salt}:{phase}:{unit_id}", 8 bytes) / 2^64     in [0, 1)
    arm = the first arm whose cumulative weight share exceeds u

No state and no randomness: every replica, before and after a restart, sends a unit to the
same arm for as long as the phase lasts. A new phase (weight layout) re-buckets every unit
independently, so no phase inherits the previous one's imbalance.
"""

from __future__ import annotations

import hashlib

import numpy as np

_SCALE = float(1 << 64)


def unit_hash(salt: str, phase: int, unit_id: str) -> float:
    """u in [0, 1), uniform over units, fixed for (salt, phase, unit)."""
    digest = hashlib.blake2b(f"{salt}:{phase}:{unit_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def bucket(u: np.ndarray | float, weights: list[float] | np.ndarray) -> np.ndarray:
    """Arm index of each u: int[N] (u float[N]); weights of 0 never win."""
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or len(w) == 0 or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {weights}")
    edges = np.cumsum(w) / w.sum()
    idx = np.searchsorted(edges, np.asarray(u, np.float64), side="right")
    return np.minimum(idx, len(w) - 1)


def assign_arm(salt: str, phase: int, unit_id: str, weights: list[float]) -> int:
    """Index of the arm (in the experiment's arm order) that serves `unit_id`."""
    return int(bucket(np.array([unit_hash(salt, phase, str(unit_id))]), weights)[0])


def assign_arms(salt: str, phase: int, unit_ids: list[str], weights: list[float]) -> np.ndarray:
    """assign_arm of many units: int[N]."""
    u = np.fromiter((unit_hash(salt, phase, str(x)) for x in unit_ids), np.float64,
                    len(unit_ids))
    return bucket(u, weights)
