"""The CTR networks: shapes, seeding, and that DLRM reads embeddings only via dot products."""

from __future__ import annotations

import pytest
import torch

from models.networks import DLRM, EmbeddingMLP, build_model
from storage.batch import DatasetSchema

WITH_DENSE = DatasetSchema("d", fields=("a", "b", "c"), dense=("x", "y"))
NO_DENSE = DatasetSchema("n", fields=("a", "b", "c"))


def _inputs(
    schema: DatasetSchema, b: int = 5, d: int = 8
) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(b, schema.num_fields, d, generator=g)
    dense = torch.randn(b, schema.num_dense, generator=g) if schema.num_dense else None
    return emb, dense


@pytest.mark.parametrize("name", ["mlp", "dlrm"])
@pytest.mark.parametrize("schema", [WITH_DENSE, NO_DENSE])
def test_logit_per_row_and_gradients_reach_embeddings(name: str, schema: DatasetSchema) -> None:
    model = build_model(name, schema, dim=8, seed=0)
    emb, dense = _inputs(schema)
    emb.requires_grad_(True)
    out = model(emb, dense)
    assert out.shape == (5,) and out.dtype == torch.float32
    out.sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    # rows are scored independently
    torch.testing.assert_close(model(emb[:2], None if dense is None else dense[:2]), out[:2])


@pytest.mark.parametrize("name", ["mlp", "dlrm"])
def test_seed_alone_decides_the_initialisation(name: str) -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(name, WITH_DENSE, dim=4, seed=7)
    assert torch.equal(torch.rand(1), before)  # global RNG untouched
    b = build_model(name, WITH_DENSE, dim=4, seed=7)
    c = build_model(name, WITH_DENSE, dim=4, seed=8)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)


def test_dlrm_sees_embeddings_only_through_dot_products() -> None:
    """A reflection that fixes the bottom MLP's output keeps every dot product, hence the
    logit; the concat MLP has no such invariance."""
    torch.manual_seed(0)
    dlrm = DLRM(num_fields=3, num_dense=2, dim=6)
    mlp = EmbeddingMLP(num_fields=3, num_dense=2, dim=6)
    emb, dense = _inputs(WITH_DENSE, b=1, d=6)
    x = dlrm.bottom(dense)[0]  # type: ignore[misc]
    v = torch.randn(6)
    v = v - (v @ x) / (x @ x) * x  # v orthogonal to x
    q = torch.eye(6) - 2 * torch.outer(v, v) / (v @ v)
    turned = emb @ q.T
    assert not torch.allclose(turned, emb)
    torch.testing.assert_close(dlrm(turned, dense), dlrm(emb, dense))
    assert not torch.allclose(mlp(turned, dense), mlp(emb, dense))


def test_dlrm_without_dense_has_first_order_terms() -> None:
    """With no dense features a learned vector stands in, so a single field's embedding moves
    the logit even when every other embedding is zero."""
    model = build_model("dlrm", DatasetSchema("one", fields=("a",)), dim=4, seed=0)
    emb = torch.zeros(2, 1, 4)
    emb[1, 0] = torch.tensor([1.0, -2.0, 0.5, 3.0])
    out = model(emb, None)
    assert out[0] != out[1]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("transformer", WITH_DENSE, dim=4)
    emb, _ = _inputs(WITH_DENSE)
    with pytest.raises(ValueError, match="dense"):
        build_model("mlp", WITH_DENSE, dim=8)(emb, None)
