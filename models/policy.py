"""Embedding-dimension policies behind one interface, used alike by the models, the Learner,
the trainer and the serving tier.

A policy maps a batch of IDs to padded embeddings and owns the embedding storage and its
optimizer (embeddings are updated sparsely by the policy, never by the dense optimizer):

    emb = policy.lookup(ids, train=True)      # int64[B, F] -> float32[B, F, D], requires_grad
    loss = model(emb, dense).loss(labels); loss.backward()
    policy.apply_gradients()                  # sparse update + utilities + prune/regrow schedule

Policies with learnable parts beyond the table (Dimension Mask Layer, AMTL) expose them via
`dense_parameters()` so the model's optimizer trains them, and apply their mask inside
`lookup`. Spec strings (`parse_policy`):

    fixed:d                                   every ID gets d dims (D = d)
    fiited[:budget=0.25,widths=4-4-8-16-32,gamma=0.99,interval=50,...]
                                              default chunks: 4-4-8-16-32 (narrow first chunks);
                                              K=8 gives the paper's K equal chunks
    adaembed[:budget=...]                     FIITED with K = 1
    torch:d[,rows=N]                          torch nn.Embedding(sparse=True), hashed rows; a
                                              reference for speed, not a product policy
    dml[:penalty=0.02,...]                    Dimension Mask Layer: a learned length per field
    amtl[:penalty=0.001,...]                  AMTL: a learned length per value, from frequency
    any spec + ,hot=PATH                      hot start from a fixed:64 save (hot_start.py)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch


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


def parse_policy(spec: str, num_fields: int, seed: int = 0) -> EmbeddingPolicy:
    """Build a policy from its spec string (see module docstring)."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    hot = [p for p in arg.split(",") if p.strip().startswith("hot=")]
    if hot:
        from models.policies.hot_start import hot_start

        cold = f"{kind}:" + ",".join(p for p in arg.split(",") if p not in hot)
        policy = parse_policy(cold.rstrip(":"), num_fields, seed)
        policy.spec = spec
        hot_start(policy, Path(hot[-1].partition("=")[2].strip()))
        return policy
    params: dict[str, str] = {}
    positional: list[str] = []
    for part in filter(None, (p.strip() for p in arg.split(","))):
        key, sep, value = part.partition("=")
        if sep:
            params[key.strip()] = value.strip()
        else:
            positional.append(part)
    if kind == "fixed":
        from models.policies.chunked import ChunkedPolicy

        dim = int(positional[0]) if positional else int(params.pop("dim", 64))
        return ChunkedPolicy.fixed(dim, num_fields=num_fields, seed=seed, spec=spec, **params)
    if kind in ("fiited", "adaembed"):
        from models.policies.chunked import ChunkedPolicy

        if kind == "adaembed":
            params["K"] = "1"
        return ChunkedPolicy.fiited(num_fields=num_fields, seed=seed, spec=spec, **params)
    if kind == "dml":
        from models.policies.dml import DimensionMaskPolicy

        return DimensionMaskPolicy(num_fields=num_fields, seed=seed, spec=spec, **params)
    if kind == "amtl":
        from models.policies.amtl import AMTLPolicy

        return AMTLPolicy(num_fields=num_fields, seed=seed, spec=spec, **params)
    if kind == "torch":
        from models.policies.torch_embedding import TorchEmbeddingPolicy

        dim = int(positional[0]) if positional else int(params.pop("dim", 64))
        return TorchEmbeddingPolicy(
            dim,
            num_fields=num_fields,
            seed=seed,
            spec=spec,
            rows=int(params.get("rows", 1 << 20)),
        )
    raise ValueError(f"unknown policy {spec!r}; expected fixed:d, fiited:..., adaembed, "
                     "dml, amtl, torch:d")
