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

A spec is validated when parsed, before anything is built or connected: an unknown kind, an
unknown or repeated parameter, a stray word (`fixed:64,fixd:64`) or a value out of range
(dims and intervals >= 1, budgets in (0, 1], gamma in [0, 1], finite numbers) is a ValueError
of one line naming it: "policy 'fiited:interval=0': interval='0': Input should be greater than
or equal to 1".
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


KINDS = ("fixed", "fiited", "adaembed", "dml", "amtl", "torch")
_DIM_FIRST = ("fixed", "torch")  # kinds whose first parameter may be a bare dim: fixed:64


def parse_policy(spec: str, num_fields: int, seed: int = 0) -> EmbeddingPolicy:
    """Build a policy from its spec string (see module docstring). Raises ValueError with one
    line naming the refused parameter."""
    from pydantic import ValidationError

    from storage.settings import describe_validation_error

    try:
        return _build_policy(spec, num_fields, seed)
    except ValidationError as exc:
        raise ValueError(f"policy {spec!r}: {describe_validation_error(exc)}") from exc
    except ValueError as exc:
        message = " ".join(str(exc).split())  # one line, whatever raised it
        raise ValueError(f"policy {spec!r}: {message}") from exc


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'fixed:64,pad=128' -> ('fixed', {'dim': '64', 'pad': '128'}), checking the shape: a
    known kind, key=value parameters each given once, a bare dim only first in fixed/torch."""
    kind, _, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ValueError(f"unknown policy kind {kind!r}; expected fixed:d, fiited:..., "
                         "adaembed, dml, amtl or torch:d")
    params: dict[str, str] = {}
    for i, part in enumerate(p.strip() for p in arg.split(",")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            if not part:
                continue  # "fixed:64," : an empty part says nothing
            if i == 0 and kind in _DIM_FIRST:
                key, value = "dim", part
            else:
                hint = " (one policy per spec)" if ":" in part else ""
                raise ValueError(f"unexpected {part!r}: parameters are key=value{hint}")
        if not key:
            raise ValueError(f"{part!r}: a parameter needs a name")
        if key in params:
            raise ValueError(f"parameter {key!r} given twice")
        params[key] = value.strip()
    return kind, params


def _build_policy(spec: str, num_fields: int, seed: int) -> EmbeddingPolicy:
    kind, params = split_spec(spec)
    hot = params.pop("hot", None)
    if hot is not None:
        from models.policies.hot_start import hot_start

        if not hot:
            raise ValueError("hot= needs the path of a fixed:64 save")
        policy = _build_policy(
            ":".join([kind, ",".join(f"{k}={v}" for k, v in params.items())]).rstrip(":"),
            num_fields, seed)
        policy.spec = spec
        hot_start(policy, Path(hot))
        return policy
    if kind == "fixed":
        from models.policies.chunked import ChunkedPolicy

        dim = params.pop("dim", "64")
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
    from models.policies.torch_embedding import TorchEmbeddingPolicy, TorchParams

    p = TorchParams.model_validate(params)
    return TorchEmbeddingPolicy(p.dim, num_fields=num_fields, seed=seed, spec=spec, rows=p.rows)
