"""Progressive validation: predictions are made before training on their rows, learning
happens, and the dense optimizer reaches the policy's own parameters."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from models.learner import Learner
from models.networks import build_model
from models.policies.registry import parse_policy
from models.policies.torch_embedding import TorchEmbeddingPolicy
from storage.batch import DatasetSchema, SparseBatch

SCHEMA = DatasetSchema("planted", fields=("user", "item", "ctx"), dense=("x",))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # small ops on a shared CPU: intra-op threads only add waiting
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def planted(n: int, batch: int = 256, seed: int = 0) -> list[SparseBatch]:
    """Clicks from a logistic model with one weight per (field, id) plus the dense feature."""
    rng = np.random.default_rng(seed)
    vocab = 300
    weight = rng.normal(0, 1.2, (SCHEMA.num_fields, vocab))
    ids = np.minimum(rng.zipf(1.4, (n, SCHEMA.num_fields)) - 1, vocab - 1)
    dense = rng.normal(size=(n, 1)).astype(np.float32)
    logit = weight[np.arange(SCHEMA.num_fields), ids].sum(1) + 0.5 * dense[:, 0] - 1.0
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return [
        SparseBatch(SCHEMA, labels[i : i + batch], ids[i : i + batch], dense[i : i + batch])
        for i in range(0, n, batch)
    ]


def make_learner(spec: str = "torch:16,rows=4096", model: str = "mlp", seed: int = 0) -> Learner:
    policy = parse_policy(spec, num_fields=SCHEMA.num_fields, seed=seed)
    return Learner(build_model(model, SCHEMA, dim=policy.dim, seed=seed), policy)


@pytest.mark.parametrize(
    ("spec", "model"),
    [("torch:16,rows=4096", "mlp"), ("torch:16,rows=4096", "dlrm"), ("fixed:16", "mlp")],
)
def test_learns_a_planted_signal(spec: str, model: str) -> None:
    learner = make_learner(spec, model=model)
    metrics = learner.run(planted(30_000))
    assert len(metrics) == 30_000 and learner.rows_trained == 30_000
    first, *_, last = metrics.sliding(5000)
    assert last["logloss"] < first["logloss"] - 0.05
    assert metrics.last_fraction(0.3)["auc"] > 0.78
    assert 0.9 < metrics.last_fraction(0.3)["calibration"] < 1.1
    assert learner.samples_per_s > 0


def test_first_pass_is_scored_by_the_untrained_model() -> None:
    batch = planted(256)[0]
    learner = make_learner()
    untrained = learner.predict(batch)
    np.testing.assert_array_equal(learner.predict(batch), untrained)  # predict changes nothing
    seen: list[np.ndarray] = []
    metrics = learner.run([batch, batch, batch], callback=lambda _l, _b, p: seen.append(p))
    assert len(metrics) == 3 * len(batch)
    preds = metrics.predictions.reshape(3, len(batch))
    np.testing.assert_allclose(preds[0], untrained, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.stack(seen), preds)
    np.testing.assert_array_equal(metrics.labels, np.tile(batch.labels, 3))
    assert np.abs(preds[1] - preds[0]).max() > 1e-3  # trained in between
    assert not np.allclose(learner.predict(batch), preds[2])


@pytest.mark.parametrize("spec", ["torch:16,rows=4096", "fixed:16", "fiited:K=4,budget=0.5"])
def test_each_prediction_is_made_before_training_on_its_row(spec: str) -> None:
    """Once a batch's IDs are known to the policy (a chunk store gives an unseen ID zeros at
    serving time but a fresh vector when it trains), the score recorded for a row is what
    predict() gave just before the learner trained on it."""
    batch = planted(256)[0]
    learner = make_learner(spec)
    learner.run([batch])
    for _ in range(2):
        before = learner.predict(batch)
        recorded = learner.step(batch)
        np.testing.assert_allclose(recorded, before, rtol=0, atol=1e-6)
        assert np.abs(learner.predict(batch) - recorded).max() > 1e-3
    np.testing.assert_array_equal(learner.metrics.predictions[-256:], recorded)
    assert len(learner.metrics) == 3 * 256


def test_max_rows_cuts_the_stream() -> None:
    learner = make_learner()
    learner.run(planted(1000, batch=300), max_rows=700)
    assert len(learner.metrics) == 700 and learner.batches_trained == 3


class _ScaledTorchPolicy(TorchEmbeddingPolicy):
    """A policy with a learnable part beyond its table, as DML / AMTL have."""

    def __init__(self) -> None:
        super().__init__(8, num_fields=SCHEMA.num_fields, rows=1024)
        self.scale = torch.nn.Parameter(torch.ones(SCHEMA.num_fields, 1))

    def lookup(self, ids: np.ndarray, train: bool = False) -> torch.Tensor:
        return super().lookup(ids, train) * self.scale

    def dense_parameters(self) -> list[torch.nn.Parameter]:
        return [self.scale]


def test_policy_dense_parameters_are_trained() -> None:
    policy = _ScaledTorchPolicy()
    learner = Learner(build_model("mlp", SCHEMA, dim=8, seed=0), policy)
    learner.run(planted(1024))
    assert not torch.equal(policy.scale.detach(), torch.ones(SCHEMA.num_fields, 1))


def test_unknown_optimizer() -> None:
    policy = TorchEmbeddingPolicy(4, num_fields=3, rows=16)
    with pytest.raises(ValueError, match="optimizer"):
        Learner(build_model("mlp", SCHEMA, 4), policy, optimizer="sgd")


@pytest.mark.parametrize("spec", ["fixed:16", "fiited:dim=16,budget=0.5", "dml", "amtl"])
def test_a_batch_that_overflows_is_skipped_not_learned(spec: str) -> None:
    """A valid event may carry a dense value at float32's edge (the wire allows up to 3.4e38):
    the forward pass overflows, and one backward through it would make every weight NaN."""
    learner = make_learner(spec, model="dlrm")
    batches = planted(2048)
    learner.run(batches[:4])
    edge = batches[4]
    edge = SparseBatch(SCHEMA, edge.labels, edge.ids,
                       np.full_like(edge.dense, np.finfo(np.float32).max))
    learner.step(edge)
    assert learner.skipped_batches == 1
    learner.run(batches[5:])
    assert all(torch.isfinite(p).all() for p in learner.model.parameters())
    assert np.isfinite(learner.metrics.running()["logloss"])
    assert len(learner.metrics) == 2048 - len(edge)
    # as good as a learner that never saw the batch
    ref = make_learner(spec, model="dlrm")
    ref.run(batches[:4] + batches[5:])
    assert learner.metrics.auc() == pytest.approx(ref.metrics.auc(), abs=0.02)
