"""A stand-in embedding policy for publisher tests: entries set by hand, exported as the real
policies export them (models/policy.py EmbeddingExport), dirty tracking included."""

from __future__ import annotations

import numpy as np

from models.policy import EmbeddingExport


class HandPolicy:
    """(field, ID) -> (chunk mask, float32[D] row); `set`/`evict` mark entries dirty."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        self.widths = widths
        self.dim = sum(widths)
        self.entries: dict[tuple[int, int], tuple[int, np.ndarray]] = {}
        self.dirty: set[tuple[int, int]] = set()
        self.evicted: set[tuple[int, int]] = set()

    def set(self, fields: np.ndarray, keys: np.ndarray, masks: np.ndarray,
            rows: np.ndarray) -> None:
        for f, k, m, r in zip(fields.tolist(), keys.tolist(), masks.tolist(), rows,
                              strict=True):
            self.entries[(f, k)] = (m, np.asarray(r, np.float32))
            self.dirty.add((f, k))
            self.evicted.discard((f, k))

    def evict(self, fields: np.ndarray, keys: np.ndarray) -> None:
        for f, k in zip(fields.tolist(), keys.tolist(), strict=True):
            if self.entries.pop((f, k), None) is not None:
                self.evicted.add((f, k))
            self.dirty.discard((f, k))

    def export(self, dirty_only: bool = True) -> EmbeddingExport:
        pairs = sorted(self.dirty if dirty_only else self.entries)
        rows = [self.entries[p] for p in pairs]
        ev = sorted(self.evicted)
        self.dirty.clear()
        self.evicted.clear()
        return EmbeddingExport(
            fields=np.array([p[0] for p in pairs], np.int16),
            keys=np.array([p[1] for p in pairs], np.int64),
            masks=np.array([m for m, _ in rows], np.uint32),
            values=np.array([r for _, r in rows], np.float32).reshape(len(rows), self.dim),
            widths=self.widths,
            deleted_fields=np.array([p[0] for p in ev], np.int16),
            deleted_keys=np.array([p[1] for p in ev], np.int64))

    def expected(self, fields: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """float32[N, D]: what a reader must decode (stored chunks only, zeros elsewhere)."""
        out = np.zeros((len(keys), self.dim), np.float32)
        edges = np.cumsum((0, *self.widths))
        for i, (f, k) in enumerate(zip(fields.tolist(), keys.tolist(), strict=True)):
            m, r = self.entries.get((f, k), (0, None))
            for j in range(len(self.widths)):
                if m >> j & 1:
                    out[i, edges[j]:edges[j + 1]] = r[edges[j]:edges[j + 1]]
        return out
