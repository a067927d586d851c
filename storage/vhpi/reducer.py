"""Where the store's budget is decided: over this store alone, or over every shard of a
sharded model (models/distributed/budget.py).

    store.reducer = LOCAL            # the default: one store, one budget
    total = store.reducer.sum(torch.tensor([used, budget]))

A reducer combines small tensors across the shards of one model: `sum` and `max` element-wise
(every shard gets the result), `cat` concatenates every shard's 1-D tensor in shard order.
The prune / regrow (maintenance.py, allocation.py) goes through it for everything a global
threshold needs: the per-(field, position) utility means, the score ceiling, the candidate
thresholds, the exact byte counts of a selection and the budget itself. With a global reducer
every shard must run the same maintenance calls in the same order (the sharded step does).
"""

from __future__ import annotations

from typing import Protocol

import torch


class Reducer(Protocol):
    is_global: bool

    def sum(self, values: torch.Tensor) -> torch.Tensor: ...

    def max(self, values: torch.Tensor) -> torch.Tensor: ...

    def cat(self, values: torch.Tensor) -> torch.Tensor: ...


class LocalReducer:
    """One store: every reduction is the identity."""

    is_global = False

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def max(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def cat(self, values: torch.Tensor) -> torch.Tensor:
        return values


LOCAL = LocalReducer()
