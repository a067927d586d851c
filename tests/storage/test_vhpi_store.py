"""Invariants of the FIITED chunk store (storage/vhpi/store.py)."""

import json

import numpy as np
import pytest
import torch

from storage.atomic_npz import read_npz, write_npz
from storage.vhpi.entries import EntryTable
from storage.vhpi.store import ChunkStore, StoreConfig


def zipf_ids(rng: np.random.Generator, rows: int, fields: int, vocab: int = 3000) -> np.ndarray:
    return (rng.zipf(1.3, size=(rows, fields)) % vocab).astype(np.int64)


def train_step(store: ChunkStore, ids: np.ndarray, w: torch.Tensor) -> None:
    """One step of a fixed random linear model: loss = sum(sin(emb . w))."""
    emb, ctx = store.lookup(ids, train=True)
    emb.requires_grad_(True)
    torch.sin(emb @ w).sum().backward()
    store.apply_gradients(ctx, emb.grad)


def host(x: object) -> np.ndarray:
    """A store's tensor (on any device) as a numpy array."""
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def check_pool(store: ChunkStore) -> None:
    slots = host(store.live_slots())
    addr = host(store.addresses(slots))
    for j, pool in enumerate(store.pools):
        live = addr[addr[:, j] >= 0, j]
        free = host(pool.free)
        assert len(np.unique(live)) == live.size, "a chunk address is owned twice"
        assert live.size == pool.num_live
        assert live.size + free.size == pool.capacity
        assert not np.intersect1d(live, free).size, "a live chunk is on the free stack"
    assert store.used_bytes() <= store.budget_bytes(), "over budget"
    on = addr >= 0
    assert (on[:, 1:] <= on[:, :-1]).all(), "live chunks are not a prefix"
    for j, nxt in enumerate(store.entries.links.next):  # each live chunk links the next
        held = on[:, j]
        np.testing.assert_array_equal(host(nxt)[addr[held, j]], addr[held, j + 1])


def test_prune_regrow_invariants_hold_after_every_step() -> None:
    rng = np.random.default_rng(0)
    store = StoreConfig(dim=64, num_chunks=4, budget=0.4, interval=5, lr=0.1, hysteresis=0.0)
    store = ChunkStore(store)
    w = torch.randn(64)
    freed = admitted = 0
    for _ in range(60):
        ids = zipf_ids(rng, 128, 3)
        emb, ctx = store.lookup(ids, train=True)  # may admit new IDs (random first chunks)
        before = {
            int(s): a.copy()
            for s, a in zip(host(store.live_slots()), host(store.addresses(store.live_slots())),
                            strict=True)
        }
        emb.requires_grad_(True)
        torch.sin(emb @ w).sum().backward()
        store.apply_gradients(ctx, emb.grad)  # the update, then on schedule a prune step
        check_pool(store)
        if store.step % store.config.interval == 0:
            # Chunks admitted by this prune step start at zero.
            slots = host(store.live_slots())
            addr = host(store.addresses(slots))
            emb = store.gather(slots).cpu().reshape(-1, store.K, 16)
            for i, s in enumerate(slots):
                old = before.get(int(s))
                if old is None:
                    continue
                grown = (old < 0) & (addr[i] >= 0)
                freed += int(((old >= 0) & (addr[i] < 0)).sum())
                admitted += int(grown.sum())
                assert torch.all(emb[i][torch.from_numpy(grown)] == 0)
    assert store.prunes >= 12  # every interval, plus any forced by index growth
    assert freed > 0 and admitted > 0, "the schedule never moved a chunk"


def test_pruned_chunks_read_zero() -> None:
    rng = np.random.default_rng(1)
    store = ChunkStore(StoreConfig(dim=64, num_chunks=4, budget=0.3, interval=3))
    w = torch.randn(64)
    for _ in range(12):
        train_step(store, zipf_ids(rng, 256, 2), w)
    ids = zipf_ids(rng, 256, 2)
    emb, _ = store.lookup(ids, train=False)
    slots = host(store.index.lookup(np.tile([0, 1], 256), ids.ravel()))
    addr = np.where((slots >= 0)[:, None], host(store.addresses(np.maximum(slots, 0))), -1)
    chunks = emb.reshape(-1, 4, 16)
    dead = torch.from_numpy(addr < 0)
    assert dead.any() and (~dead).any()
    assert torch.all(chunks[dead] == 0)
    # Live chunks hold trained values (a chunk re-admitted at the last prune may still be 0).
    assert (chunks[~dead].abs().sum(dim=1) > 0).float().mean() > 0.5


@pytest.mark.parametrize("code", ["float16", "log8"])
def test_utilities_decay_as_specified_across_rescales(code: str) -> None:
    # float16: every ID's utility within float16's precision. log8 (one byte, levels 9% apart,
    # stochastic rounding): each of 512 IDs trained alike within a few levels, their mean
    # within 1.5% (the rounding is unbiased, so errors average out instead of piling up).
    gamma = 0.9
    store = ChunkStore(StoreConfig(dim=64, num_chunks=2, budget=0.9, gamma=gamma, interval=4,
                                   min_count=1, utility_code=code))
    n = 1 if code == "float16" else 512
    target = np.arange(n, dtype=np.int64)[:, None]
    other = np.array([[n + 1]], dtype=np.int64)
    expected = np.zeros(2)
    for step in range(13):
        ids = target if step in (0, 1, 7) else other
        emb, ctx = store.lookup(ids, train=True)
        grad = (torch.arange(1.0, 65.0).reshape(1, 1, 64) * (step + 1) / 64).expand(
            ids.shape[0], 1, 64)
        store.apply_gradients(ctx, grad)
        a_g = np.linalg.norm(grad[0].numpy().reshape(2, 32), axis=1) if ids is target else 0.0
        expected = gamma * expected + a_g
        slots = store.index.lookup(np.zeros(n), target[:, 0])
        got = host(store.utilities(slots))
        if code == "float16":
            np.testing.assert_allclose(got[0], expected, rtol=2e-3)
        else:
            np.testing.assert_allclose(got.mean(axis=0), expected, rtol=0.015)
            np.testing.assert_allclose(got, np.broadcast_to(expected, got.shape), rtol=0.4)


@pytest.mark.parametrize("tail", ["all", "extension"])
def test_pruned_tail_chunks_keep_their_utility_without_an_extension_record(tail: str) -> None:
    # An ID with only its first chunk live has no extension record; FIITED still tracks the
    # utility of every chunk, so a chunk past position 1 can earn its way back.
    store = ChunkStore(StoreConfig(dim=64, num_chunks=4, budget=0.9, gamma=0.5, interval=1000,
                                   tail_utilities=tail, utility_code="float16"))
    ids = np.array([[7]], dtype=np.int64)
    store.lookup(ids, train=True)
    slot = store.index.lookup(np.array([0]), np.array([7]))
    store.resize(slot, [1])
    assert int(store.addresses(slot)[0, 1]) == -1
    expected = np.zeros(4)
    for step in range(3):
        emb, ctx = store.lookup(ids, train=True)
        grad = torch.arange(1.0, 65.0).reshape(1, 1, 64) * (step + 1) / 64
        store.apply_gradients(ctx, grad)
        expected = 0.5 * expected + np.linalg.norm(grad.numpy().reshape(4, 16), axis=1)
    got = host(store.utilities(slot)[0])
    np.testing.assert_allclose(got[:2], expected[:2], rtol=2e-3)
    links = store.entries.link_bytes()
    if tail == "all":
        np.testing.assert_allclose(got[2:], expected[2:], rtol=2e-3)
        np.testing.assert_array_equal(links, [4, 4, 4, 0])  # addresses only
    else:
        assert (got[2:] == 0).all()  # no chunk 1, no history
        np.testing.assert_array_equal(links, [4, 4 + 2 * 2, 4, 0])  # float16 beside chunk 1
    # the head record pays 2 bytes (float16) for each utility it holds
    held = 4 if tail == "all" else 2
    head = store.config.head_fields()
    assert head[f"utilities 0..{held - 1}"] == 2 * held
    assert store.entry_bytes() == sum(head.values())


def test_a_snapshot_of_the_old_layout_loads_in_that_layout(tmp_path) -> None:
    rng = np.random.default_rng(5)
    store = ChunkStore(StoreConfig(dim=64, num_chunks=4, budget=0.4, interval=4,
                                   tail_utilities="extension"))
    w = torch.randn(64)
    for _ in range(8):
        train_step(store, zipf_ids(rng, 64, 3), w)
    store.save(tmp_path / "s.npz")
    # drop the key, as saves from before it lack it
    arrays = read_npz(tmp_path / "s.npz")
    meta = json.loads(arrays["meta"].tobytes().decode())
    del meta["config"]["tail_utilities"]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    write_npz(tmp_path / "old.npz", arrays)
    back = ChunkStore.load(tmp_path / "old.npz")
    assert back.config.tail_utilities == "extension"
    slots = store.live_slots()
    np.testing.assert_array_equal(host(back.utilities(slots)), host(store.utilities(slots)))


def test_repeated_ids_accumulate_like_a_dense_reference() -> None:
    cfg = StoreConfig(dim=4, num_chunks=2, optimizer="adagrad", lr=0.3, eps=1e-10)
    store = ChunkStore(cfg)
    ids = np.array([[1, 2], [1, 3], [1, 2]], dtype=np.int64)  # 1 three times in field 0
    emb, ctx = store.lookup(ids, train=True)
    # Dense reference: one parameter row per distinct (field, id).
    keys = [(j, int(ids[i, j])) for i in range(3) for j in range(2)]
    uniq = sorted(set(keys))
    table = (
        torch.stack([emb.reshape(-1, 4)[keys.index(k)] for k in uniq]).clone().requires_grad_(True)
    )
    rows = torch.tensor([uniq.index(k) for k in keys])
    target = torch.randn(3, 2, 4)
    ref_loss = ((table[rows].reshape(3, 2, 4) - target) ** 2).sum()
    ref_loss.backward()
    opt = torch.optim.Adagrad([table], lr=0.3, eps=1e-10)
    opt.step()

    emb.requires_grad_(True)
    ((emb - target) ** 2).sum().backward()
    np.testing.assert_allclose(emb.grad.reshape(-1, 4)[0], 2 * (emb[0, 0] - target[0, 0]).detach())
    store.apply_gradients(ctx, emb.grad)
    after, _ = store.lookup(ids, train=False)
    expected = table.detach()[rows].reshape(3, 2, 4)
    torch.testing.assert_close(after, expected, rtol=1e-6, atol=1e-7)


def test_admission_reads_zero_until_min_count() -> None:
    store = ChunkStore(
        StoreConfig(dim=64, num_chunks=4, budget=0.6, min_count=3, initial_capacity=16)
    )
    ids = np.array([[42]], dtype=np.int64)
    norms = []
    for _ in range(4):
        emb, ctx = store.lookup(ids, train=True)
        norms.append(float(emb.abs().sum()))
        store.apply_gradients(ctx, torch.ones_like(emb))
    assert norms[0] == 0 and norms[1] == 0
    assert norms[2] > 0 and norms[3] > 0


def test_stale_entries_are_evicted_and_their_chunks_freed() -> None:
    store = ChunkStore(StoreConfig(dim=8, num_chunks=2, budget=None, interval=5, evict_after=10))
    w = torch.randn(8)
    train_step(store, np.array([[1], [2]], dtype=np.int64), w)
    assert store.live_chunks() == 4
    for _ in range(20):
        train_step(store, np.array([[2]], dtype=np.int64), w)
    assert store.index.lookup(np.array([0]), np.array([1]))[0] == -1
    assert store.index.lookup(np.array([0]), np.array([2]))[0] >= 0
    assert store.live_chunks() == 2
    check_pool(store)


def test_max_entries_evicts_the_least_useful() -> None:
    store = ChunkStore(StoreConfig(dim=64, num_chunks=2, budget=0.9, interval=1, max_entries=2))
    for i, ids in enumerate([[[1], [2]], [[1], [3]], [[1], [3]]]):
        emb, ctx = store.lookup(np.array(ids, dtype=np.int64), train=True)
        store.apply_gradients(ctx, torch.ones_like(emb) * (i + 1))
    assert store.index.num_entries == 2
    found = store.index.lookup(np.zeros(3, np.int16), np.array([1, 2, 3]))
    assert found[0] >= 0 and found[2] >= 0 and found[1] == -1


def test_infeasible_budget_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="larger budget"):
        StoreConfig(dim=64, num_chunks=8, budget=0.1)


def test_snapshot_round_trips_bit_exactly(tmp_path) -> None:
    rng = np.random.default_rng(3)
    store = ChunkStore(StoreConfig(dim=64, num_chunks=4, budget=0.4, interval=4))
    w = torch.randn(64)
    for _ in range(10):
        train_step(store, zipf_ids(rng, 64, 3), w)
    store.save(tmp_path / "s.npz")
    back = ChunkStore.load(tmp_path / "s.npz")
    for name in EntryTable.ARRAYS:
        np.testing.assert_array_equal(getattr(back.entries, name), getattr(store.entries, name))
    for a, b in zip(back.entries.links.next, store.entries.links.next, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(back.pools, store.pools, strict=True):
        assert torch.equal(a.values, b.values) and torch.equal(a.state, b.state)
    assert back.step == store.step and back.memory() == store.memory()
    # And both continue identically.
    ids = zipf_ids(rng, 64, 3)
    train_step(store, ids, w)
    train_step(back, ids, w)
    for a, b in zip(back.pools, store.pools, strict=True):
        assert torch.equal(a.values, b.values)
    np.testing.assert_array_equal(
        back.addresses(back.live_slots()), store.addresses(store.live_slots())
    )
    # (one-byte utilities are rounded at random, from a stream seeded by (seed, step))
    np.testing.assert_array_equal(
        back.utilities(back.live_slots()), store.utilities(store.live_slots())
    )


def test_narrow_first_chunks_and_their_links_are_accounted() -> None:
    rng = np.random.default_rng(4)
    store = ChunkStore(StoreConfig(dim=64, widths="4-4-8-16-32", budget=0.3, interval=4))
    assert store.widths == (4, 4, 8, 16, 32)
    w = torch.randn(64)
    for _ in range(24):
        train_step(store, zipf_ids(rng, 256, 3), w)
        check_pool(store)
    m = store.memory()
    hist = store.live_chunks_per_id()
    assert hist[1] > 0 and hist[2:].sum() > 0, "no ID grew past its first chunk"
    # an entry's head record, 4 bytes of link for each live chunk but the last position's,
    # and the tail utilities (3 positions, one byte each) beside each chunk 1
    head = store.config.head_fields()
    assert store.entry_bytes() == sum(head.values()) == 8 + 2 + 1 + 4 + 1 + 1 + 2
    live = np.array([p.num_live for p in store.pools])
    expected_meta = m["live_ids"] * store.entry_bytes() + 4 * live[:4].sum() + 3 * live[1]
    assert m["metadata_bytes"] == expected_meta
    assert live[1] == hist[2:].sum()
    addr = store.addresses(store.live_slots())
    expected_values = sum(
        4 * wj * int((addr[:, j] >= 0).sum()) for j, wj in enumerate(store.widths)
    )
    assert m["value_bytes"] == expected_values


def test_export_reports_masks_changes_and_deletions() -> None:
    store = ChunkStore(StoreConfig(dim=16, num_chunks=2, budget=None, interval=5, evict_after=5))
    w = torch.randn(16)
    train_step(store, np.array([[1], [2]], dtype=np.int64), w)
    slots, df, dk = store.take_changes()
    fields, keys, masks, values = store.export(slots)
    assert sorted(keys.tolist()) == [1, 2] and (masks == 0b11).all()
    assert values.shape == (2, 16)
    for _ in range(10):
        train_step(store, np.array([[2]], dtype=np.int64), w)
    slots, df, dk = store.take_changes()
    assert store.index.keys[slots].tolist() == [2]
    assert dk.tolist() == [1] and df.tolist() == [0]
    assert store.take_changes()[0].numel() == 0



def test_hysteresis_keeps_incumbents_within_the_margin() -> None:
    from storage.vhpi.allocation import chunk_scores, select_chunks

    util = np.array([[1.0], [1.2]], dtype=np.float32)  # entry 0 live, entry 1 pruned
    live = np.array([[True], [False]])
    admitted = np.ones(2, dtype=bool)

    def kept(h: float) -> list[bool]:
        s = chunk_scores(util, np.zeros(2), admitted, False, True, False, live, h)
        return select_chunks(s, 1.0, lambda k: float(k.sum()))[:, 0].tolist()

    assert kept(0.0) == [False, True]  # the better pruned chunk takes the place
    assert kept(0.5) == [True, False]  # but not by a margin of 50%


def test_cost_aware_scores_make_a_wide_chunk_earn_its_width() -> None:
    from storage.vhpi.allocation import chunk_scores, select_chunks

    # Entry 0 is popular: its wide second chunk (8x the bytes) has 4x the utility of entry 1's
    # narrow first chunk... but per byte it is worth half as much.
    util = np.array([[8.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    admitted = np.ones(2, dtype=bool)
    bytes_of = np.array([1.0, 8.0])

    def kept(cost: np.ndarray | None, capacity: float) -> list[list[bool]]:
        s = chunk_scores(util, np.zeros(2), admitted, False, True, False, cost=cost)
        keep = select_chunks(s, capacity, lambda k: float((k * bytes_of).sum()))
        return keep.tolist()

    # budget for 9 bytes: the first chunk of 0 plus either its wide chunk or entry 1's chunk
    assert kept(None, 9.0) == [[True, True], [False, False]]  # cost-blind: the wide one
    assert kept(bytes_of**1, 9.0) == [[True, False], [True, False]]  # per byte: entry 1
    assert kept(bytes_of**1, 10.0) == [[True, True], [True, False]]  # room for all


def test_sketch_admission_keeps_the_tail_out_of_the_store() -> None:
    cfg = StoreConfig(dim=64, num_chunks=4, budget=None, min_count=3, sketch_width=1 << 12)
    store = ChunkStore(cfg)
    w = torch.randn(64)
    hot = np.array([[7]], dtype=np.int64)
    norms = []
    for i in range(4):
        ids = np.array([[7], [1000 + i]], dtype=np.int64)  # 7 recurs, the others appear once
        emb, ctx = store.lookup(ids, train=True)
        norms.append(float(emb[0].abs().sum()))
        assert float(emb[1].abs().sum()) == 0.0  # a once-seen ID reads zeros
        emb.requires_grad_(True)
        torch.sin(emb @ w).sum().backward()
        store.apply_gradients(ctx, emb.grad)
    assert norms[:2] == [0.0, 0.0] and norms[2] > 0  # admitted at its third sighting
    assert store.index.num_entries == 1  # the four singletons have no entry
    assert store.index.lookup(np.zeros(1, np.int16), hot[0])[0] >= 0
    m = store.memory()
    assert m["metadata_bytes"] == (
        store.entry_bytes() + store.entries.links_live_bytes() + store.sketch.nbytes
    )
    check_pool(store)


def test_frequency_sketch_counts_and_ages() -> None:
    from storage.vhpi.admission import FrequencySketch

    sketch = FrequencySketch(width=1 << 16)
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**62, size=500, dtype=np.int64)
    fields = np.zeros(500, dtype=np.int16)
    true = rng.integers(1, 20, size=500)
    est = sketch.add(fields, keys, true)
    np.testing.assert_array_equal(est, true)  # a fresh, wide sketch: exact
    again = sketch.estimate(fields, keys)
    assert (again >= true).all()  # never below the truth; above it only where keys collide
    assert (again == true).mean() > 0.95
    sketch.decay()
    assert (sketch.estimate(fields, keys) == again // 2).all()
    assert sketch.nbytes == 4 * (1 << 16)


def _as_record_layout(arrays: dict, K: int, eu: int) -> dict:
    """A snapshot's arrays as the layout before chunk links wrote them: an extension record
    (addresses of chunks 1..K-1, utilities of positions K-eu..K-1) per ID with a chunk past
    its first, uint16 counts, a `last` per entry, no utility_code in the config."""
    arrays = dict(arrays)
    head = arrays["head_addr"].astype(np.int64)
    addr = np.full((head.size, K), -1, dtype=np.int64)
    addr[:, 0] = head
    for j in range(K - 1):
        on = addr[:, j] >= 0
        addr[on, j + 1] = arrays[f"next{j}"][addr[on, j]]
    has = np.flatnonzero(addr[:, 1] >= 0)
    ext = np.full(head.size, -1, dtype=np.int32)
    ext[has] = np.arange(has.size)[::-1]  # records in another order than the slots
    arrays["ext"] = ext
    arrays["ext_addr"] = np.zeros((has.size, K - 1), dtype=np.int32)
    arrays["ext_addr"][ext[has]] = addr[has, 1:]
    arrays["ext_util"] = np.zeros((has.size, eu), dtype=np.float16)
    arrays["ext_util"][ext[has]] = arrays["tail_util"][addr[has, 1]]
    arrays["ext_free"] = np.zeros(0, dtype=np.int32)
    for key in [k for k in arrays if k.startswith("next")] + ["tail_util"]:
        del arrays[key]
    arrays["count"] = arrays["count"].astype(np.uint16)
    arrays["last"] = np.zeros(head.size, dtype=np.uint16)
    meta = json.loads(arrays["meta"].tobytes().decode())
    del meta["config"]["utility_code"]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return arrays


def test_a_snapshot_of_the_record_layout_loads_relinked(tmp_path) -> None:
    rng = np.random.default_rng(8)
    store = ChunkStore(StoreConfig(dim=64, widths="4-4-8-16-32", budget=0.4, interval=4,
                                   utility_code="float16"))
    w = torch.randn(64)
    for _ in range(12):
        train_step(store, zipf_ids(rng, 128, 3), w)
    assert store.live_chunks_per_id()[2:].sum() > 0
    store.save(tmp_path / "s.npz")
    write_npz(tmp_path / "old.npz", _as_record_layout(read_npz(tmp_path / "s.npz"), 5, 3))
    back = ChunkStore.load(tmp_path / "old.npz")
    assert back.config.utility_code == "float16"  # what that layout stored
    slots = store.live_slots()
    np.testing.assert_array_equal(host(back.addresses(slots)), host(store.addresses(slots)))
    np.testing.assert_array_equal(host(back.utilities(slots)), host(store.utilities(slots)))
    np.testing.assert_array_equal(host(back.gather(slots)), host(store.gather(slots)))
    assert back.memory() == store.memory()
    check_pool(back)


def test_live_chunks_are_always_a_prefix() -> None:
    with pytest.raises(ValueError, match="prefix=false is not supported"):
        StoreConfig(dim=64, num_chunks=4, budget=0.5, prefix=False)
    with pytest.raises(ValueError, match="one byte and saturates at 255"):
        StoreConfig(dim=64, num_chunks=4, budget=0.5, min_count=300)


def test_a_one_chunk_snapshot_of_the_record_layout_loads(tmp_path) -> None:
    # fixed:d's stores (K = 1) saved before chunk links had no tail_util array
    rng = np.random.default_rng(9)
    store = ChunkStore(StoreConfig(dim=16, num_chunks=1, budget=None))
    for _ in range(4):
        train_step(store, zipf_ids(rng, 64, 3), torch.randn(16))
    store.save(tmp_path / "s.npz")
    arrays = read_npz(tmp_path / "s.npz")
    del arrays["tail_util"]
    write_npz(tmp_path / "old.npz", arrays)
    back = ChunkStore.load(tmp_path / "old.npz")
    slots = store.live_slots()
    np.testing.assert_array_equal(host(back.gather(slots)), host(store.gather(slots)))
    assert back.memory() == store.memory()
