"""`fixed:d`, `fiited:...` and `adaembed` policies, all on the VHPI chunk store.

fixed:d is the store with K = 1 and no budget, so fixed-dim baselines pay for the same index
and metadata as FIITED and "equal memory" compares like with like.

    fiited:budget=0.25,widths=4-4-8-16-32,gamma=0.99,interval=50  (any StoreConfig field)
    fiited:K=8,budget=0.25                                        (K equal chunks)
    fiited:max_bytes=64MiB                                        (entry limit from 64 MiB)

Parameters are validated by StoreConfig (a pydantic dataclass) and, for a policy's own ones,
by its pydantic model (`split_params`): a refused one is a ValueError of one line naming the
parameter as it was typed. Every policy here is bounded by the store's entry limit
(StoreConfig.max_bytes, 512 MiB by default).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import NonNegativeInt

from models.policies.params import CHUNKING, PolicyParams, store_config
from models.policy import EmbeddingExport, EmbeddingPolicy, MemoryReport
from storage.vhpi.store import ChunkStore, LookupContext, StoreConfig


class FixedParams(PolicyParams):
    pad: NonNegativeInt = 0  # zero-pad the D stored dims to this width for the model


class ChunkedPolicy(EmbeddingPolicy):
    """A policy over one ChunkStore; the kinds below differ in how a spec configures it."""

    Params: ClassVar[type[PolicyParams]] = PolicyParams

    def __init__(self, config: StoreConfig, num_fields: int, spec: str, pad: int = 0) -> None:
        self.spec = spec
        self.dim = max(config.dim, pad)  # the model sees D = dim; stored dims are config.dim
        self.num_fields = num_fields
        self.store = ChunkStore(config)
        self._pending: tuple[LookupContext, torch.Tensor] | None = None

    @property
    def device(self) -> torch.device:
        """Where the store's tables live (StoreConfig.device); lookups return tensors there."""
        return self.store.device

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
            fields=fields_, keys=keys, masks=masks, values=values.cpu().numpy(),
            widths=self.store.widths, deleted_fields=del_fields, deleted_keys=del_keys,
        )

    def save(self, path: Path) -> None:
        self.store.save(path)

    def load(self, path: Path) -> None:
        self.store = ChunkStore.load(path, device=self.store.config.device)


class FixedPolicy(ChunkedPolicy):
    """fixed:d[,pad=P]: d stored dims per ID; with pad, zero-padded to P for the model, so a
    fixed-dim baseline can run the very network a wider policy runs."""

    Params = FixedParams

    @classmethod
    def from_params(cls, params: FixedParams, rest: dict[str, str], num_fields: int,
                    seed: int, spec: str) -> FixedPolicy:
        chunking = CHUNKING & rest.keys()
        if chunking:
            raise ValueError(f"fixed:d has one chunk; {sorted(chunking)[0]!r} does not apply")
        rest = dict(rest)
        dim = rest.pop("dim", "64")
        rest |= {"dim": dim, "K": "1"}
        rest.setdefault("budget", "none")
        config = store_config(rest, seed, own=FixedParams)
        return cls(config, num_fields, spec or f"fixed:{dim}", pad=params.pad)


class FiitedPolicy(ChunkedPolicy):
    """fiited[:budget=0.25,...]: chunks pruned and regrown against a memory budget."""

    @classmethod
    def from_params(cls, params: PolicyParams, rest: dict[str, str], num_fields: int,
                    seed: int, spec: str) -> FiitedPolicy:
        rest = dict(rest)
        if not CHUNKING & rest.keys():
            # Narrow first chunks: every admitted ID can afford a small embedding, and the
            # budget left over buys wide chunks for the IDs that earn them.
            raw = rest.get("dim", rest.get("D", rest.get("d", "64"))).strip()
            dim = int(raw) if raw.isdigit() else 0  # not a number: StoreConfig names it
            if dim and dim % 16 == 0:
                rest["widths"] = "-".join(str(dim // q) for q in (16, 16, 8, 4, 2))
            elif dim:
                rest["K"] = "1"
        rest.setdefault("budget", "0.25")
        return cls(store_config(rest, seed), num_fields, spec or "fiited")


class AdaEmbedPolicy(FiitedPolicy):
    """adaembed[:budget=...]: FIITED with K = 1 (a whole embedding is kept or pruned)."""

    @classmethod
    def from_params(cls, params: PolicyParams, rest: dict[str, str], num_fields: int,
                    seed: int, spec: str) -> FiitedPolicy:
        return super().from_params(params, rest | {"K": "1"}, num_fields, seed,
                                   spec or "adaembed")
