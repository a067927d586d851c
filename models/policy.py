"""Embedding-dimension policies behind one interface, used alike by the models, the Learner,
the trainer and the serving tier.

A policy maps a batch of IDs to padded embeddings and owns the embedding storage and its
optimizer (embeddings are updated sparsely by the policy, never by the dense optimizer):

    emb = policy.lookup(ids, train=True)      # int64[B, F] -> float32[B, F, D], requires_grad
    loss = model(emb, dense).loss(labels); loss.backward()
    policy.apply_gradients()                  # sparse update + utilities + prune/regrow schedule

Policies with learnable parts beyond the table (Dimension Mask Layer, AMTL) expose them via
`dense_parameters()` so the model's optimizer trains them, and apply their mask inside
`lookup`.

This module is the interface only: the policies are in models/policies/, and the registry
(models/policies/registry.py) maps a spec's kind to one and parses specs (`parse_policy`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel


@dataclass
class MemoryReport:
    """Bytes measured from the arrays themselves (nbytes of what is allocated and in use)."""

    value_bytes: int  # live embedding values
    optimizer_bytes: int  # optimizer state of the live values
    metadata_bytes: int  # per-entry metadata: chunk addresses, utilities, counters, keys
    index_bytes: int  # hash-index slots
    live_ids: int = 0
    live_chunks: int = 0

    @property
    def total_bytes(self) -> int:
        return self.value_bytes + self.optimizer_bytes + self.metadata_bytes + self.index_bytes

    def as_dict(self) -> dict[str, int]:
        d = asdict(self)
        d["total_bytes"] = self.total_bytes
        return d


@dataclass
class EmbeddingExport:
    """Embeddings to publish to serving: the stored part of each entry, and entries removed.

    fields   int16[N]      field index of each entry
    keys     int64[N]      raw ID
    masks    uint32[N]     bit j set = chunk j is stored (live); 0 = nothing stored (delete it)
    values   float32[N, D] zero-padded embedding (zeros where a chunk is not stored)
    widths   tuple[int]    chunk widths, summing to D: chunk j is values[:, sum(widths[:j]):...]
    deleted_fields, deleted_keys: int16[M], int64[M] entries evicted since the last export
    """

    fields: np.ndarray
    keys: np.ndarray
    masks: np.ndarray
    values: np.ndarray
    widths: tuple[int, ...]
    deleted_fields: np.ndarray
    deleted_keys: np.ndarray

    def __len__(self) -> int:
        return int(self.keys.shape[0])


class EmbeddingPolicy(ABC):
    """See module docstring. `dim` is D, the width of the padded embeddings."""

    spec: str
    dim: int
    num_fields: int
    Params: ClassVar[type[BaseModel]]  # the kind's own spec parameters (models/policies/params.py)

    @classmethod
    def from_params(cls, params: Any, rest: dict[str, str], num_fields: int, seed: int,
                    spec: str) -> EmbeddingPolicy:
        """Build from a parsed spec: `params` validated by `Params`, `rest` the other
        parameters as typed (the chunk store's, for policies that have one)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a spec")

    @abstractmethod
    def lookup(self, ids: np.ndarray, train: bool = False) -> torch.Tensor:
        """int64[B, F] -> float32[B, F, D]. With train=True the result is a leaf tensor with
        requires_grad; `apply_gradients` reads its .grad after backward."""

    @abstractmethod
    def apply_gradients(self) -> None:
        """After loss.backward(): update the embeddings looked up by the last train lookup."""

    def dense_parameters(self) -> list[torch.nn.Parameter]:
        return []

    @abstractmethod
    def memory(self) -> MemoryReport: ...

    def stats(self) -> dict[str, float]:
        """Policy-specific gauges (live chunks per ID, thresholds...), for logs and dashboards."""
        return {}

    @abstractmethod
    def export(self, dirty_only: bool = True) -> EmbeddingExport:
        """Entries changed since the last export (dirty_only) or all of them, and the entries
        evicted since the last export; an export clears both sets."""

    @abstractmethod
    def save(self, path: Path) -> None: ...

    @abstractmethod
    def load(self, path: Path) -> None: ...
