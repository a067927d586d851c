"""`fixed:d`, `fiited:...` and `adaembed` policies, all on the VHPI chunk store.

fixed:d is the store with K = 1 and no budget, so fixed-dim baselines pay for the same index
and metadata as FIITED and "equal memory" compares like with like.

    fiited:budget=0.25,widths=4-4-8-16-32,gamma=0.99,interval=50  (any StoreConfig field)
    fiited:K=8,budget=0.25                                        (K equal chunks)
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from models.policy import EmbeddingExport, EmbeddingPolicy, MemoryReport
from storage.vhpi.store import ChunkStore, LookupContext, StoreConfig

_ALIASES = {"K": "num_chunks", "k": "num_chunks", "D": "dim", "d": "dim"}


def _store_config(params: dict[str, str], seed: int) -> StoreConfig:
    types = {f.name: f.type for f in fields(StoreConfig)}
    kwargs: dict[str, object] = {"seed": seed}
    for key, raw in params.items():
        name = _ALIASES.get(key, key)
        if name not in types:
            raise ValueError(f"unknown policy parameter {key!r}; known: {sorted(types)}")
        t = str(types[name])
        if raw.lower() in ("none", "") and "None" in t:
            kwargs[name] = None
        elif t.startswith("bool"):
            kwargs[name] = raw.lower() in ("1", "true", "yes", "on")
        elif t.startswith("int"):
            kwargs[name] = int(raw)
        elif t.startswith("float"):
            kwargs[name] = float(raw)
        else:
            kwargs[name] = raw
    return StoreConfig(**kwargs)


class ChunkedPolicy(EmbeddingPolicy):
    def __init__(self, config: StoreConfig, num_fields: int, spec: str, pad: int = 0) -> None:
        self.spec = spec
        self.dim = max(config.dim, pad)  # the model sees D = dim; stored dims are config.dim
        self.num_fields = num_fields
        self.store = ChunkStore(config)
        self._pending: tuple[LookupContext, torch.Tensor] | None = None

    @classmethod
    def fixed(cls, dim: int, num_fields: int, seed: int = 0, spec: str = "", **params: str):
        """fixed:d[,pad=P]: d stored dims per ID; with pad, zero-padded to P for the model, so
        a fixed-dim baseline can run the very network a wider policy runs."""
        params = dict(params) | {"dim": str(dim), "K": "1"}
        pad = int(params.pop("pad", 0))
        params.setdefault("budget", "none")
        return cls(_store_config(params, seed), num_fields, spec or f"fixed:{dim}", pad=pad)

    @classmethod
    def fiited(cls, num_fields: int, seed: int = 0, spec: str = "", **params: str):
        params = dict(params)
        if not {"K", "k", "num_chunks", "widths"} & params.keys():
            # Narrow first chunks: every admitted ID can afford a small embedding, and the
            # budget left over buys wide chunks for the IDs that earn them.
            dim = int(params.get("dim", params.get("D", params.get("d", 64))))
            if dim % 16 == 0:
                params["widths"] = "-".join(str(dim // q) for q in (16, 16, 8, 4, 2))
            else:
                params["K"] = "1"
        params.setdefault("budget", "0.25")
        return cls(_store_config(params, seed), num_fields, spec or "fiited")

    def lookup(self, ids: np.ndarray, train: bool = False) -> torch.Tensor:
        emb, ctx = self.store.lookup(ids, train=train)
        if train:
            emb.requires_grad_(True)
            self._pending = (ctx, emb)
        if self.dim > emb.shape[-1]:
            return torch.nn.functional.pad(emb, (0, self.dim - emb.shape[-1]))
        return emb

    def apply_gradients(self) -> None:
        if self._pending is None:
            raise RuntimeError("apply_gradients() without a preceding lookup(train=True)")
        ctx, emb = self._pending
        self._pending = None
        grad = emb.grad if emb.grad is not None else torch.zeros_like(emb)
        self.store.apply_gradients(ctx, grad)

    def memory(self) -> MemoryReport:
        m = self.store.memory()
        return MemoryReport(
            value_bytes=m["value_bytes"],
            optimizer_bytes=m["optimizer_bytes"],
            metadata_bytes=m["metadata_bytes"],
            index_bytes=m["index_bytes"],
            live_ids=m["live_ids"],
            live_chunks=m["live_chunks"],
        )

    def stats(self) -> dict[str, float]:
        hist = self.store.live_chunks_per_id()
        n = max(int(hist.sum()), 1)
        out = {f"ids_with_{k}_chunks": float(v) for k, v in enumerate(hist)}
        out["mean_live_chunks"] = float((hist * np.arange(hist.size)).sum() / n)
        out["allocated_bytes"] = float(self.store.memory()["allocated_bytes"])
        out["unseen_lookups"] = float(self.store.unseen_lookups)
        return out

    def export(self, dirty_only: bool = True) -> EmbeddingExport:
        slots, del_fields, del_keys = self.store.take_changes(dirty_only)
        fields_, keys, masks, values = self.store.export(slots)
        return EmbeddingExport(
            fields=fields_, keys=keys, masks=masks, values=values.numpy(),
            widths=self.store.widths, deleted_fields=del_fields, deleted_keys=del_keys,
        )

    def save(self, path: Path) -> None:
        self.store.save(path)

    def load(self, path: Path) -> None:
        self.store = ChunkStore.load(path)
