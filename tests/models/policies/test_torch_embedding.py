"""torch:d, the reference policy: hashing, sparse Adagrad, memory, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.policies.registry import parse_policy
from models.policies.torch_embedding import EMBEDDING_LR, TorchEmbeddingPolicy, hash_rows


def test_hash_rows_is_stable_in_range_and_per_field() -> None:
    ids = np.array([[5, 5, 5], [123456789012, -3, 0]])
    rows = hash_rows(ids, 1000)
    assert rows.shape == (2, 3) and rows.dtype == np.int64
    assert rows.min() >= 0 and rows.max() < 1000
    np.testing.assert_array_equal(rows, hash_rows(ids, 1000))
    big = hash_rows(np.full((1, 8), 5), 1 << 40)
    assert len(np.unique(big)) == 8  # the same raw ID in 8 fields: 8 rows


def test_lookup_shapes_and_train_leaf() -> None:
    p = TorchEmbeddingPolicy(8, num_fields=3, seed=0, rows=512)
    ids = np.array([[1, 2, 3], [1, 2, 4]])
    ev = p.lookup(ids)
    assert ev.shape == (2, 3, 8) and ev.dtype == torch.float32 and not ev.requires_grad
    tr = p.lookup(ids, train=True)
    assert tr.is_leaf and tr.requires_grad
    torch.testing.assert_close(ev, tr.detach())
    torch.testing.assert_close(ev[0, :2], ev[1, :2])  # same (field, id) -> same vector


def test_matches_dense_adagrad_with_duplicate_ids() -> None:
    """Two steps on batches that repeat an ID give what dense Adagrad on the whole table
    gives: duplicates' gradients add up before the accumulator sees them."""
    p = TorchEmbeddingPolicy(4, num_fields=2, seed=0, rows=64)
    dense = torch.nn.Parameter(p.table.weight.detach().clone())
    ref = torch.optim.Adagrad([dense], lr=EMBEDDING_LR)
    ids = np.array([[7, 9], [7, 11], [7, 9]])
    rows = torch.from_numpy(hash_rows(ids, 64))
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        grad = torch.randn(3, 2, 4, generator=g)
        emb = p.lookup(ids, train=True)
        emb.backward(grad)
        p.apply_gradients()
        ref.zero_grad()
        (dense[rows] * grad).sum().backward()
        ref.step()
        torch.testing.assert_close(p.table.weight.detach(), dense.detach())
    assert p.memory().live_ids == 3


def test_memory_is_measured_and_save_load_round_trips(tmp_path: Path) -> None:
    p = parse_policy("torch:16,rows=1000", num_fields=2, seed=3)
    assert isinstance(p, TorchEmbeddingPolicy) and p.dim == 16 and p.rows == 1000
    mem = p.memory()
    assert mem.value_bytes == 1000 * 16 * 4
    assert mem.optimizer_bytes >= 1000 * 16 * 4  # Adagrad's state_sum
    assert mem.index_bytes == 0 and mem.live_ids == 0
    ids = np.array([[1, 2], [3, 4]])
    emb = p.lookup(ids, train=True)
    emb.sum().backward()
    p.apply_gradients()
    assert p.memory().live_ids == 4 and p.stats()["rows_touched"] == 4
    p.save(tmp_path / "t.pt")
    q = TorchEmbeddingPolicy(16, num_fields=2, seed=99, rows=1000)
    q.load(tmp_path / "t.pt")
    torch.testing.assert_close(q.lookup(ids), p.lookup(ids), rtol=0, atol=0)
    for pol in (p, q):  # same optimizer state -> same next step
        e = pol.lookup(ids, train=True)
        e.sum().backward()
        pol.apply_gradients()
    torch.testing.assert_close(q.lookup(ids), p.lookup(ids), rtol=0, atol=0)
    with pytest.raises(ValueError):
        TorchEmbeddingPolicy(8, num_fields=2, rows=1000).load(tmp_path / "t.pt")
