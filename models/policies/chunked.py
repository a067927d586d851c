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

from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, ValidationError

from models.policy import EmbeddingExport, EmbeddingPolicy, MemoryReport
from storage.settings import describe_validation_error
from storage.vhpi.store import ChunkStore, LookupContext, StoreConfig

_ALIASES = {"K": "num_chunks", "k": "num_chunks", "D": "dim", "d": "dim"}
_NONE = ("none", "")  # how a spec says "no value" (budget=none, max_bytes=none)


class PolicyParams(BaseModel):
    """Base of a policy's own spec parameters (beyond StoreConfig's): finite numbers."""

    model_config = ConfigDict(allow_inf_nan=False)


P = TypeVar("P", bound=PolicyParams)


class FixedParams(PolicyParams):
    pad: NonNegativeInt = 0  # zero-pad the D stored dims to this width for the model


def split_params(params: dict[str, str], model: type[P]) -> tuple[P, dict[str, str]]:
    """Separate a policy's own spec parameters, validated by `model`, from the rest (the
    StoreConfig's). A refused value is a ValueError of one line naming it."""
    mine = {k: None if v.strip().lower() in _NONE else v
            for k, v in params.items() if k in model.model_fields}
    rest = {k: v for k, v in params.items() if k not in model.model_fields}
    try:
        return model.model_validate(mine), rest
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc)) from None


def _store_config(params: dict[str, str], seed: int, also_known: Iterable[str] = ()
                  ) -> StoreConfig:
    """StoreConfig from spec strings; pydantic converts and checks them. `also_known`: the
    calling policy's own parameter names, for the message about an unknown one."""
    names = {f.name for f in fields(StoreConfig)}
    kwargs: dict[str, object] = {"seed": seed}
    typed: dict[str, str] = {}  # field name -> the key as the spec spelled it
    for key, raw in params.items():
        name = _ALIASES.get(key, key)
        if name not in names:
            known = ", ".join(sorted(names | set(_ALIASES) | set(also_known)))
            raise ValueError(f"unknown policy parameter {key!r} (known: {known})")
        if name in typed:
            raise ValueError(f"parameter {key!r} given twice (as {typed[name]!r})")
        typed[name] = key
        kwargs[name] = None if raw.strip().lower() in _NONE else raw
    try:
        return StoreConfig(**kwargs)
    except ValidationError as exc:
        raise ValueError(describe_validation_error(
            exc, name=lambda field: typed.get(field, field))) from None


class ChunkedPolicy(EmbeddingPolicy):
    def __init__(self, config: StoreConfig, num_fields: int, spec: str, pad: int = 0) -> None:
        self.spec = spec
        self.dim = max(config.dim, pad)  # the model sees D = dim; stored dims are config.dim
        self.num_fields = num_fields
        self.store = ChunkStore(config)
        self._pending: tuple[LookupContext, torch.Tensor] | None = None

    @classmethod
    def fixed(cls, dim: int | str, num_fields: int, seed: int = 0, spec: str = "",
              **params: str) -> ChunkedPolicy:
        """fixed:d[,pad=P]: d stored dims per ID; with pad, zero-padded to P for the model, so
        a fixed-dim baseline can run the very network a wider policy runs."""
        own, params = split_params(params, FixedParams)
        chunking = {"K", "k", "num_chunks", "widths"} & params.keys()
        if chunking:
            raise ValueError(f"fixed:d has one chunk; {sorted(chunking)[0]!r} does not apply")
        params |= {"dim": str(dim), "K": "1"}
        params.setdefault("budget", "none")
        config = _store_config(params, seed, also_known=FixedParams.model_fields)
        return cls(config, num_fields, spec or f"fixed:{dim}", pad=own.pad)

    @classmethod
    def fiited(cls, num_fields: int, seed: int = 0, spec: str = "",
               **params: str) -> ChunkedPolicy:
        params = dict(params)
        if not {"K", "k", "num_chunks", "widths"} & params.keys():
            # Narrow first chunks: every admitted ID can afford a small embedding, and the
            # budget left over buys wide chunks for the IDs that earn them.
            raw = params.get("dim", params.get("D", params.get("d", "64"))).strip()
            dim = int(raw) if raw.isdigit() else 0  # not a number: StoreConfig names it
            if dim and dim % 16 == 0:
                params["widths"] = "-".join(str(dim // q) for q in (16, 16, 8, 4, 2))
            elif dim:
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
