"""The store's fused Triton kernels (storage/vhpi/kernels.py) against its torch ops: on the CPU
in Triton's interpreter (TRITON_INTERPRET=1, set here before the kernels are first imported),
and on CUDA (marker `gpu`) where there is a device. On a CUDA machine the CPU case is left
out: there the kernels are compiled for the GPU, not interpreted."""

import copy
import os

import numpy as np
import pytest
import torch
from test_vhpi_store import check_pool, host, train_step, zipf_ids

from models.policies.registry import parse_policy
from storage.vhpi import kernels
from storage.vhpi.chunk_pool import ChunkPool
from storage.vhpi.device_index import DeviceHashIndex
from storage.vhpi.store import ChunkStore, StoreConfig

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="the fused kernels need triton (make installs it)")

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                 reason="kernels compiled for CUDA here")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device")]),
]


def _pools(widths: tuple[int, ...], optimizer: str, n: int, device: str,
           seed: int) -> tuple[list[ChunkPool], torch.Tensor]:
    """Pools holding random chunks and state, and int64[n, K] addresses with pruned (-1)
    chunks at random."""
    gen = torch.Generator().manual_seed(seed)
    pools = [ChunkPool(w, optimizer, initial_capacity=8, device=device) for w in widths]
    addr = torch.full((n, len(widths)), -1, dtype=torch.int64)
    for j, pool in enumerate(pools):
        live = torch.randperm(n, generator=gen)[: max(1, n - 5 - 9 * j)]
        a = pool.alloc(live.numel())
        pool.write(a, torch.randn(live.numel(), w := widths[j], generator=gen))
        pool.state[a + 1] = torch.rand(live.numel(), pool.state_width, generator=gen).to(device)
        addr[live, j] = a.cpu()
        assert w == pool.chunk_dim
    return pools, addr.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("widths", "optimizer"), [
    ((4, 4, 8, 16, 32), "adagrad"), ((4, 4, 8, 16, 32), "rowwise_adagrad"),
    ((3, 5, 7), "adagrad"), ((64,), "rowwise_adagrad"), ((8,) * 8, "rowwise_adagrad"),
])
def test_fused_gather_and_adagrad_equal_the_torch_ops(device: str, widths: tuple[int, ...],
                                                      optimizer: str) -> None:
    pools, addr = _pools(widths, optimizer, 70, device, seed=len(widths))
    torch_pools = copy.deepcopy(pools)
    inverse = torch.randint(0, 70, (150,), generator=torch.Generator().manual_seed(1)).to(device)
    rows = torch.cat([p.gather(addr[:, j]) for j, p in enumerate(torch_pools)], dim=1)
    assert torch.equal(kernels.gather(pools, addr, inverse),
                       torch.nn.functional.embedding(inverse, rows))
    assert torch.equal(kernels.gather(pools, addr, None), rows)
    assert (rows == 0).any(), "some chunks must be pruned (read as zeros)"

    grad = torch.randn(70, sum(widths), generator=torch.Generator().manual_seed(2)).to(device)
    norms = kernels.adagrad(pools, grad, addr, lr=0.05, eps=1e-8, norms=True)
    assert kernels.adagrad(pools, grad[:0], addr[:0], 0.05, 1e-8, norms=False) is None
    for j, (part, pool) in enumerate(zip(grad.split(widths, dim=1), torch_pools, strict=True)):
        pool.adagrad_step_masked(addr[:, j], part, addr[:, j] >= 0, 0.05, 1e-8)
        torch.testing.assert_close(norms[:, j], part.norm(dim=1), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(pools[j].values, pool.values, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(pools[j].state, pool.state, rtol=1e-6, atol=1e-7)
        assert not pools[j].values[0].any(), "the null chunk (row 0) must stay zero"
    assert not torch.equal(pools[-1].values, copy.deepcopy(pools)[-1].values.zero_())


@pytest.mark.parametrize("device", DEVICES)
def test_fused_probe_finds_what_the_torch_probe_finds(device: str, monkeypatch) -> None:
    """Hash and linear probing in one kernel: the same slots as the torch loops, over a table
    with collisions (load up to 0.7), duplicates across fields and tombstones of deletes."""
    monkeypatch.setattr(DeviceHashIndex, "numpy_on_cpu", False)
    rng = np.random.default_rng(3)
    keys = torch.from_numpy(rng.integers(-(2**63), 2**63 - 1, 6000, dtype=np.int64))
    fields = torch.from_numpy(rng.integers(0, 26, 6000).astype(np.int16))
    keys[:300] = keys[300:600]  # one raw ID in two fields: two entries
    plain = DeviceHashIndex(initial_capacity=16, device=device)
    fused = DeviceHashIndex(initial_capacity=16, device=device, fused=True)
    got_slots = [index.get_or_insert(fields[:4000].to(device), keys[:4000].to(device))[0]
                 for index in (plain, fused)]
    assert torch.equal(*got_slots), "a fused index must hand out the same slots"
    for index in (plain, fused):
        index.delete(got_slots[0][::7].unique())
    want = plain.lookup(fields.to(device), keys.to(device))
    # the kernel over the torch index's own table (its cells are placed in a racy order)
    got = kernels.probe(plain, fields.to(device), keys.to(device))
    assert torch.equal(got, want)
    assert torch.equal(fused.lookup(fields.to(device), keys.to(device)), want)
    assert 3000 < int((got >= 0).sum()) < 4000 and (got[4000:] < 0).all()
    assert int((fused.table == -2).sum()) > 0, "deletes must leave tombstones to probe past"


@pytest.mark.parametrize("device", DEVICES)
def test_a_store_on_fused_kernels_trains_as_the_torch_store_does(device: str,
                                                                tmp_path) -> None:
    """FIITED under a budget with prunes and regrowth: the same live chunks, step for step,
    and the same values within float rounding (the kernels sum a chunk's norm in another
    order than the torch matmul does)."""
    base = dict(dim=32, widths="4-4-8-16", budget=0.3, interval=3, lr=0.1, device=device)
    torch_store = ChunkStore(StoreConfig(**base))
    fused = ChunkStore(StoreConfig(**base, kernels="triton"))
    assert fused.fused and not torch_store.fused
    rng = np.random.default_rng(0)
    w = torch.randn(32, generator=torch.Generator().manual_seed(0)).to(device)
    for _ in range(12):
        ids = zipf_ids(rng, 48, 3, vocab=200)
        for store in (torch_store, fused):
            train_step(store, ids, w)
        slots = torch_store.live_slots()
        assert torch.equal(slots, fused.live_slots())
        assert torch.equal(torch_store.addresses(slots) >= 0, fused.addresses(slots) >= 0)
        torch.testing.assert_close(fused.gather(slots), torch_store.gather(slots),
                                   rtol=1e-5, atol=1e-6)
    assert torch_store.prunes > 0, "the run must prune"
    check_pool(fused)
    fused.save(tmp_path / "fused.npz")  # a restored store keeps its fused index
    fused = ChunkStore.load(tmp_path / "fused.npz")
    assert fused.fused and fused.index.fused
    ids = zipf_ids(rng, 48, 3, vocab=300)  # serving's path: no train, unseen IDs read zeros
    torch.testing.assert_close(fused.lookup(ids)[0], torch_store.lookup(ids)[0],
                               rtol=1e-5, atol=1e-6)
    assert host(fused.lookup(ids)[0]).any()


def test_fused_kernels_are_refused_where_they_cannot_run(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="kernels=triton runs on a CUDA device"):
        ChunkStore(StoreConfig(device="cpu", kernels="triton"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    policy = parse_policy("fiited:budget=0.25,kernels=triton", num_fields=2)
    assert policy.store.fused
    with pytest.raises(ValueError, match="kernels"):
        parse_policy("fiited:kernels=cuda", num_fields=2)
