"""A policy spec's parameters, typed: the one path from `key=value` strings to values.

A spec's parameters (after `split_spec` in the registry) are of two kinds: the policy's own,
declared by its pydantic model (`Params` on the policy class), and the chunk store's, which
make a `StoreConfig` (a pydantic dataclass). Both are validated when parsed, and a refusal is a
ValueError of one line naming the parameter as it was typed:

    own, rest = split_params({"penalty": "0.1", "budget": "none"}, DMLParams)
    config = store_config(rest, seed=0, own=DMLParams)     # StoreConfig(budget=None, ...)
    no_store_params(rest, TorchParams)                     # a policy without a chunk store

`none` (or nothing) after `=` says "no value" (budget=none, max_bytes=none).
"""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from storage.settings import describe_validation_error
from storage.vhpi.config import StoreConfig

ALIASES = {"K": "num_chunks", "k": "num_chunks", "D": "dim", "d": "dim"}
CHUNKING = frozenset({"K", "k", "num_chunks", "widths"})  # the spellings that set the chunks
_NONE = ("none", "")


class PolicyParams(BaseModel):
    """Base of a policy's own spec parameters (beyond StoreConfig's): finite numbers."""

    model_config = ConfigDict(allow_inf_nan=False)


P = TypeVar("P", bound=PolicyParams)


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


def store_config(params: dict[str, str], seed: int, own: type[PolicyParams] = PolicyParams
                 ) -> StoreConfig:
    """StoreConfig from spec strings; pydantic converts and checks them. `own`: the calling
    policy's parameter model, named in the message about an unknown parameter."""
    names = {f.name for f in fields(StoreConfig)}
    kwargs: dict[str, object] = {"seed": seed}
    typed: dict[str, str] = {}  # field name -> the key as the spec spelled it
    for key, raw in params.items():
        name = ALIASES.get(key, key)
        if name not in names:
            known = ", ".join(sorted(names | set(ALIASES) | set(own.model_fields)))
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


def no_store_params(params: dict[str, str], own: type[PolicyParams]) -> None:
    """For a policy without a chunk store: any parameter not its own is unknown."""
    for key in params:
        known = ", ".join(sorted(own.model_fields))
        raise ValueError(f"unknown policy parameter {key!r} (known: {known})")
