"""One prune / regrow threshold over several shards (storage/vhpi/reducer.py): two stores, each
holding the IDs one rank owns, prune together through a reducer over two threads (a stand-in
for torch.distributed's all-reduce), and keep exactly the chunks scored above one threshold
common to both, within the budget of both together."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from storage.vhpi.allocation import chunk_scores
from storage.vhpi.store import ChunkStore, StoreConfig

CONFIG = StoreConfig(dim=64, widths="4-4-8-16-32", budget=0.3, interval=5, seed=0)


class ThreadReducer:
    """Reducer of two threads' tensors: each call waits for the other thread's."""

    is_global = True

    def __init__(self, slots: list, barrier: threading.Barrier, rank: int) -> None:
        self.slots, self.barrier, self.rank = slots, barrier, rank

    def _all(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.slots[self.rank] = x.clone()
        self.barrier.wait()
        got = list(self.slots)
        self.barrier.wait()
        return got

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(self._all(x)).sum(0)

    def max(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(self._all(x)).max(0).values

    def cat(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._all(x))


def shard_rows(ids: np.ndarray, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fields, keys) of this rank's pairs: raw IDs of one parity per rank."""
    fields = np.broadcast_to(np.arange(ids.shape[1]), ids.shape).reshape(-1)
    keys = ids.reshape(-1)
    mine = keys % 2 == rank
    return torch.from_numpy(fields[mine].copy()), torch.from_numpy(keys[mine].copy())


def run_shard(rank: int, reducer: ThreadReducer, out: dict) -> None:
    store = ChunkStore(CONFIG)
    store.reducer = reducer
    rng = np.random.default_rng(0)  # both threads draw the same batches, keep their half
    w = torch.from_numpy(np.random.default_rng(1).normal(size=64).astype(np.float32))
    for _ in range(23):
        ids = (rng.zipf(1.3, size=(256, 3)) % 3000).astype(np.int64)
        emb, ctx = store.lookup_keys(*shard_rows(ids, rank), train=True)
        emb.requires_grad_(True)
        torch.sin(emb @ w).sum().backward()
        store.apply_gradients(ctx, emb.grad)  # prunes every 5 steps, all shards together
    store.prune_regrow()
    slots = store.live_slots()
    c = store.config
    costs = store.entries.chunk_costs()
    scores = chunk_scores(store.utilities(slots), store.index.fields[slots],
                          store.entries.count[slots] >= c.min_count, normalize=True,
                          prefix=c.prefix, keep_first=c.keep_first,
                          cost=(costs / costs[0]) ** c.cost_power, reduce=reducer)
    out[rank] = (scores, store.addresses(slots) >= 0, store.used_bytes(), store.budget_bytes())


def test_shards_keep_the_chunks_above_one_threshold_within_one_budget() -> None:
    slots: list = [None, None]
    barrier = threading.Barrier(2, timeout=60)
    out: dict = {}
    threads = [threading.Thread(target=run_shard, args=(r, ThreadReducer(slots, barrier, r),
                                                        out)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(out) == {0, 1}, "a shard failed (see the thread's exception above)"
    scores = torch.cat([out[r][0] for r in (0, 1)])
    kept = torch.cat([out[r][1] for r in (0, 1)])
    dropped = ~kept & torch.isfinite(scores)
    assert kept.any() and dropped.any()  # the budget binds
    # one threshold: every kept chunk outscores every dropped one, whichever shard holds them
    assert scores[kept].min() >= scores[dropped].max()
    used = sum(out[r][2] for r in (0, 1))
    budget = sum(out[r][3] for r in (0, 1))
    assert used <= budget
    assert used > 0.9 * budget  # and it is used, not left empty
    assert min(out[r][2] for r in (0, 1)) > 0.3 * used  # both shards hold their part


def kept_by_id(store: ChunkStore) -> dict[tuple[int, int], tuple[bool, ...]]:
    slots = store.live_slots()
    live = (store.addresses(slots) >= 0).tolist()
    pairs = zip(store.index.fields[slots].tolist(), store.index.keys[slots].tolist(), strict=True)
    return {p: tuple(m) for p, m in zip(pairs, live, strict=True)}


def run_steps(store: ChunkStore, rank: int | None, out: dict, key: object) -> None:
    """23 training steps (prunes every 5, admissions in between) of this shard's pairs (all
    of them with rank None); records the kept chunks by (field, ID) after every step."""
    rng = np.random.default_rng(0)
    w = torch.from_numpy(np.random.default_rng(1).normal(size=64).astype(np.float32))
    history = []
    for _ in range(23):
        ids = (rng.zipf(1.3, size=(256, 3)) % 3000).astype(np.int64)
        if rank is None:
            emb, ctx = store.lookup(ids, train=True)
        else:
            emb, ctx = store.lookup_keys(*shard_rows(ids, rank), train=True)
        emb.requires_grad_(True)
        torch.sin(emb @ w).sum().backward()
        store.apply_gradients(ctx, emb.grad)
        history.append((kept_by_id(store), store.used_bytes(), store.index.table_bytes))
    out[key] = history


@pytest.mark.parametrize("config", [CONFIG, dataclasses.replace(CONFIG, widths="64")],
                         ids=["fiited", "adaembed"])
def test_two_shards_keep_what_one_store_keeps(config: StoreConfig) -> None:
    """Shards joined under one budget (join_budget) make one store's decisions at every step:
    the same chunks live by (field, ID), the same bytes in all, index tables included. (With
    a table per shard sized on its own, and admission from a shard's own room, they parted at
    the first prune: 137 of 813 IDs kept other chunks in the sharded quality run.)"""
    out: dict = {}
    run_steps(ChunkStore(config), None, out, "one")
    slots: list = [None, None]
    barrier = threading.Barrier(2, timeout=60)

    def shard(rank: int) -> None:
        store = ChunkStore(config)
        store.join_budget(ThreadReducer(slots, barrier, rank), world=2)
        run_steps(store, rank, out, rank)

    threads = [threading.Thread(target=shard, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert {0, 1} <= set(out), "a shard failed (see the thread's exception above)"
    one = out["one"]
    binds = 0
    for step, ((kept, used, table), a, b) in enumerate(zip(one, out[0], out[1], strict=True)):
        both = {**a[0], **b[0]}
        assert both.keys() == kept.keys(), step
        differ = [p for p in kept if kept[p] != both[p]]
        assert not differ, (step, len(differ), len(kept))
        assert a[2] + b[2] == table, step  # the tables add up to one store's
        assert a[1] + b[1] == used, step
        binds += any(not all(m) for m in kept.values())
    assert binds > 10  # the budget binds: there are pruned chunks to disagree on
