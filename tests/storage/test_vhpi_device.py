"""The store on a torch device: the device hash index against the numpy one, and the store's
invariants, snapshot and training on `cpu` and (marker `gpu`, skipped without CUDA) `cuda`."""

import numpy as np
import pytest
import torch
from test_vhpi_store import check_pool, host, train_step, zipf_ids

from storage.vhpi.device_index import DeviceHashIndex
from storage.vhpi.entries import EntryTable
from storage.vhpi.hash_index import HashIndex, mix64
from storage.vhpi.store import ChunkStore, StoreConfig

CUDA = pytest.param("cuda", marks=[
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
])
DEVICES = ["cpu", CUDA]


@pytest.mark.parametrize("device", ["cpu", "cpu-torch", "cpu-block", CUDA])
def test_device_index_hashes_and_places_like_the_numpy_index(device: str, monkeypatch) -> None:
    if device.startswith("cpu-"):  # the torch loops (CUDA's) on the CPU
        monkeypatch.setattr(DeviceHashIndex, "numpy_on_cpu", False)
        if device == "cpu-block":  # CUDA's block probe: 8 positions a round (3: rounds chain)
            monkeypatch.setattr(DeviceHashIndex, "probe_block", 3)
        device = "cpu"
    rng = np.random.default_rng(0)
    keys = rng.integers(-(2**63), 2**63 - 1, size=20_000, dtype=np.int64)
    keys[:50] = keys[50:100]  # duplicates in one batch get one slot
    fields = rng.integers(0, 26, size=keys.size).astype(np.int16)
    fields[:50] = fields[50:100]
    ref, dev = HashIndex(), DeviceHashIndex(device=device)
    from storage.vhpi.device_index import mix64_t

    got = mix64_t(torch.from_numpy(fields).to(device), torch.from_numpy(keys).to(device))
    np.testing.assert_array_equal(host(got), mix64(fields, keys).view(np.int64))
    s_ref, new_ref = ref.get_or_insert(fields, keys)
    s_dev, new_dev = dev.get_or_insert(fields, keys)
    np.testing.assert_array_equal(host(s_dev), s_ref)  # same slots, same order
    np.testing.assert_array_equal(host(new_dev), new_ref)
    gone = np.unique(s_ref[:3000])[:1000]
    ref.delete(gone)
    dev.delete(gone)
    assert dev.num_entries == ref.num_entries == np.unique(s_ref).size - 1000
    np.testing.assert_array_equal(host(dev.lookup(fields, keys)), ref.lookup(fields, keys))
    again, new = dev.get_or_insert(fields, keys)  # deleted keys come back into freed slots
    assert int(new.sum()) >= 1000 and set(host(again)[host(new)]) == set(gone)
    assert dev.num_entries == np.unique(s_ref).size


@pytest.mark.parametrize("device", ["cpu", "cpu-torch", "cpu-block", CUDA])
def test_prune_regrow_invariants_hold_on_the_device(device: str, monkeypatch) -> None:
    if device.startswith("cpu-"):
        monkeypatch.setattr(DeviceHashIndex, "numpy_on_cpu", False)
        if device == "cpu-block":
            monkeypatch.setattr(DeviceHashIndex, "probe_block", 3)
        device = "cpu"
    rng = np.random.default_rng(0)
    store = ChunkStore(StoreConfig(dim=64, widths="4-4-8-16-32", budget=0.3, interval=4,
                                   evict_after=8, device=device))
    w = torch.randn(64, device=device)
    for _ in range(30):
        train_step(store, zipf_ids(rng, 128, 3), w)
        check_pool(store)
    assert store.prunes >= 7 and store.live_chunks() > 0
    assert store.entries.head_addr.device.type == device
    assert all(p.values.device.type == device for p in store.pools)


@pytest.mark.parametrize("device", DEVICES)
def test_a_device_store_trains_as_the_cpu_store_does(device: str) -> None:
    """Same batches, same values up to float summation order (CUDA adds atomically)."""
    rng = np.random.default_rng(1)
    cfg = StoreConfig(dim=32, num_chunks=4, budget=None, interval=5)
    cpu, dev = ChunkStore(cfg), ChunkStore(cfg.on(device))
    w = torch.randn(32)
    for _ in range(12):
        ids = zipf_ids(rng, 64, 3)
        train_step(cpu, ids, w)
        train_step(dev, ids, w.to(device))
    np.testing.assert_array_equal(host(dev.live_slots()), host(cpu.live_slots()))
    slots = cpu.live_slots()
    torch.testing.assert_close(dev.gather(slots).cpu(), cpu.gather(slots), rtol=1e-5,
                               atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_a_snapshot_moves_between_devices_bit_exactly(tmp_path, device: str) -> None:
    rng = np.random.default_rng(3)
    store = ChunkStore(StoreConfig(dim=64, num_chunks=4, budget=0.4, interval=4, device=device))
    w = torch.randn(64, device=device)
    for _ in range(10):
        train_step(store, zipf_ids(rng, 64, 3), w)
    store.save(tmp_path / "a.npz")
    on_cpu = ChunkStore.load(tmp_path / "a.npz", device="cpu")
    on_cpu.save(tmp_path / "b.npz")
    back = ChunkStore.load(tmp_path / "b.npz", device=device)
    for other in (on_cpu, back):
        for name in EntryTable.ARRAYS:
            np.testing.assert_array_equal(host(getattr(other.entries, name)),
                                          host(getattr(store.entries, name)))
        for a, b in zip(other.pools, store.pools, strict=True):
            assert torch.equal(a.values.cpu(), b.values.cpu())
            assert torch.equal(a.state.cpu(), b.state.cpu())
        assert other.memory() == store.memory() and other.step == store.step
    assert back.device.type == device and on_cpu.device.type == "cpu"
    ids = zipf_ids(rng, 64, 3)  # and the restored store goes on training
    train_step(back, ids, w)
    check_pool(back)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad"])
def test_the_masked_adagrad_step_equals_the_selected_one_and_keeps_the_null_chunk_zero(
        device: str, optimizer: str) -> None:
    """The GPU's sync-free update (every row, pruned ones on the null chunk with a zero
    gradient) gives the very values of the update on the selected live rows."""
    from storage.vhpi.chunk_pool import ChunkPool

    gen = torch.Generator().manual_seed(0)
    pools = [ChunkPool(8, optimizer, initial_capacity=64, device=device) for _ in range(2)]
    start = torch.randn(40, 8, generator=gen)
    for p in pools:
        p.write(p.alloc(40), start)
    addrs = torch.arange(40).roll(7)
    addrs[::3] = -1  # pruned chunks: address -1, row 0
    live = addrs >= 0
    for _ in range(3):
        grads = torch.randn(40, 8, generator=gen)
        pools[0].adagrad_step(addrs[live].to(device), grads[live].to(device), 0.05, 1e-8)
        pools[1].adagrad_step_masked(addrs.to(device), grads.to(device), live.to(device), 0.05,
                                     1e-8)
    assert torch.equal(pools[0].values.cpu(), pools[1].values.cpu())
    assert torch.equal(pools[0].state.cpu(), pools[1].state.cpu())
    assert not pools[1].values[0].any() and not pools[1].state[0].any()
