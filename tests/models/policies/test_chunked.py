"""The chunked policies (fixed, fiited, adaembed) through the Learner."""

import numpy as np
import pytest
import torch

from models.learner import Learner
from models.networks import build_model
from models.policies.registry import parse_policy
from storage.batch import DatasetSchema, SparseBatch

SCHEMA = DatasetSchema("toy", fields=("a", "b", "c"))


def stream(n_batches: int = 30, rows: int = 128, seed: int = 0) -> list[SparseBatch]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        ids = (rng.zipf(1.3, size=(rows, 3)) % 500).astype(np.int64)
        logit = np.where(ids[:, 0] % 3 == 0, 1.5, -1.0) + np.where(ids[:, 1] % 2 == 0, 0.8, -0.8)
        labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        out.append(SparseBatch(SCHEMA, labels=labels, ids=ids))
    return out


def run(spec: str, batches: list[SparseBatch], model: str = "dlrm") -> np.ndarray:
    policy = parse_policy(spec, SCHEMA.num_fields, seed=0)
    learner = Learner(build_model(model, SCHEMA, policy.dim, seed=0), policy)
    learner.run(batches)
    return learner.metrics.predictions


@pytest.mark.parametrize("model", ["dlrm", "mlp"])
def test_fiited_without_pruning_predicts_exactly_like_fixed_64(model: str) -> None:
    batches = stream()
    fixed = run("fixed:64,optimizer=adagrad", batches, model)
    chunked = run("fiited:K=8,budget=none,optimizer=adagrad", batches, model)
    narrow = run("fiited:widths=4-4-8-16-32,budget=none,optimizer=adagrad", batches, model)
    np.testing.assert_allclose(chunked, fixed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(narrow, fixed, rtol=1e-5, atol=1e-6)


def test_budgeted_fiited_prunes_and_still_learns() -> None:
    batches = stream(60)
    policy = parse_policy("fiited:budget=0.4,interval=10", SCHEMA.num_fields, seed=0)
    learner = Learner(build_model("mlp", SCHEMA, policy.dim, seed=0), policy)
    learner.run(batches)
    stats = policy.stats()
    assert policy.store.prunes >= 6
    assert 1.0 <= stats["mean_live_chunks"] < 5.0  # pruned, but every ID keeps a first chunk
    assert learner.metrics.auc(start=len(learner.metrics) // 2) > 0.7
    mem = policy.memory()
    assert mem.total_bytes <= policy.store.budget_bytes()


def test_policy_save_and_load_round_trip(tmp_path) -> None:
    batches = stream(5)
    policy = parse_policy("fiited:budget=0.5,interval=2", SCHEMA.num_fields, seed=0)
    learner = Learner(build_model("mlp", SCHEMA, policy.dim, seed=0), policy)
    learner.run(batches)
    policy.save(tmp_path / "p.npz")
    other = parse_policy("fiited:budget=0.5,interval=2", SCHEMA.num_fields, seed=0)
    other.load(tmp_path / "p.npz")
    ids = batches[-1].ids
    assert torch.equal(policy.lookup(ids), other.lookup(ids))


def test_unknown_policy_parameter_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown policy parameter 'bogus'"):
        parse_policy("fiited:bogus=1", 3)
