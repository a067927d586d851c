"""One FIITED budget over every shard of a sharded model.

    GlobalBudget(group).attach(policy.store)     # on every rank, before the first step

Each shard's budget is `budget` x (a fixed-D store's bytes for its IDs + its index table), so
the sum over shards is the budget of one store holding all the IDs. With a global budget the
prune / regrow keeps the chunks above one threshold found over all shards together: utilities
normalised by their (field, position) means over all shards, candidate thresholds drawn from
every shard's scores, and the exact byte count of each candidate summed over the shards (an
all-reduce of K + 1 counts per probe), so N ranks keep the chunks one process would keep and
hold the same total bytes. The index tables count in the budget, so they are sized together:
each shard's table is 1/N of the table one store would have for all the IDs (storage/vhpi/
maintenance.py `_agree_step`; exact for N a power of two); with a table per shard sized on
its own, two shards started with twice one store's table and the sharded model had 14% less
room for chunks at the first prune of a small test (34,059 bytes against 39,794). Between
prunes new IDs' first chunks come from the room of every shard, lowest hash of (field, ID)
first, as one store gives them; the over-budget check after every step is global (one
all-reduce of three numbers).
"""

from __future__ import annotations

import torch

from models.distributed.group import ShardGroup
from storage.vhpi.store import ChunkStore


class GlobalBudget:
    """A storage.vhpi.reducer.Reducer over the ranks of `group`."""

    is_global = True

    def __init__(self, group: ShardGroup) -> None:
        self.group = group

    def attach(self, store: ChunkStore) -> None:
        """Make `store` one shard of the global budget; a fresh store's index table becomes
        its share of one store's (a restored one keeps its size)."""
        store.join_budget(self, self.group.world)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        return self.group.sum(values)

    def max(self, values: torch.Tensor) -> torch.Tensor:
        return self.group.max(values)

    def cat(self, values: torch.Tensor) -> torch.Tensor:
        return self.group.cat(values)
