"""Admission by frequency without an entry per ID: a count-min sketch.

An ID that has not yet been seen `min_count` times is counted here, not in the store, so the
long tail of IDs seen once or twice costs a fixed number of bytes in all instead of an entry
each. Count-min with conservative update (only the smallest counters of a key grow), uint8
counters that saturate at 255, and aging (all counters halve every `decay_every` maintenance
epochs) so that the sketch measures recent frequency and does not fill up.

    sketch = FrequencySketch(width=1 << 20, depth=4)
    est = sketch.add(fields, keys, counts)   # int16/int64/int64[N] -> int64[N] estimates
"""

from __future__ import annotations

import numpy as np

from storage.vhpi.hash_index import mix64

_SALTS = np.array(
    [
        0x243F6A8885A308D3,
        0x13198A2E03707344,
        0xA4093822299F31D0,
        0x082EFA98EC4E6C89,
        0x452821E638D01377,
        0xBE5466CF34E90C6C,
        0xC0AC29B7C97C50DD,
        0x3F84D5B5B5470917,
    ],
    dtype=np.uint64,
).view(np.int64)


class FrequencySketch:
    def __init__(self, width: int, depth: int = 4) -> None:
        if width <= 0 or width & (width - 1):
            raise ValueError(f"sketch width must be a power of two, got {width}")
        if not 1 <= depth <= len(_SALTS):
            raise ValueError(f"sketch depth must be in 1..{len(_SALTS)}, got {depth}")
        self.table = np.zeros((depth, width), dtype=np.uint8)
        self._mask = np.uint64(width - 1)

    @property
    def nbytes(self) -> int:
        return int(self.table.nbytes)

    def _cells(self, fields: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """int64[depth, N] counter index of every key in every row."""
        return np.stack(
            [
                (mix64(fields, keys ^ salt) & self._mask).astype(np.int64)
                for salt in _SALTS[: self.table.shape[0]]
            ]
        )

    def estimate(self, fields: np.ndarray, keys: np.ndarray) -> np.ndarray:
        cells = self._cells(fields, keys)
        rows = np.arange(self.table.shape[0])[:, None]
        return self.table[rows, cells].min(axis=0).astype(np.int64)

    def add(self, fields: np.ndarray, keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Count distinct keys `counts` times more; returns their estimates after the update.
        Conservative update: a key's counters are raised to (its estimate + count), never
        further; so an estimate never falls below the true count (until `decay`)."""
        cells = self._cells(fields, keys)
        rows = np.arange(self.table.shape[0])[:, None]
        est = self.table[rows, cells].min(axis=0).astype(np.int64) + np.asarray(counts, np.int64)
        new = np.minimum(est, 255).astype(np.uint8)
        for d in range(self.table.shape[0]):  # maximum.at: two keys on one counter keep the max
            np.maximum.at(self.table[d], cells[d], new)
        return est

    def decay(self) -> None:
        """Halve every counter: old sightings fade."""
        self.table >>= 1
