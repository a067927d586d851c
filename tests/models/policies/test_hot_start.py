"""Hot start: every chunk-store policy initialised from a trained fixed:64 save."""

from pathlib import Path

import pytest

from models.learner import Learner
from models.networks import build_model
from models.policies.hot_start import hot_start, save_hot_start
from models.policies.registry import parse_policy
from storage.batch import SparseBatch

TRAIN, PROBE = 120, 8  # batches to train fixed:64 on, then batches the AUC is measured on


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, planted) -> tuple[Path, list[SparseBatch], float]:
    """A fixed:64 save after TRAIN batches, the PROBE batches after them, and the trained
    fixed-64's progressive AUC on those."""
    batches = planted.stream(TRAIN + PROBE)
    policy = parse_policy("fixed:64", planted.schema.num_fields, seed=0)
    net = build_model("dlrm", planted.schema, 64, seed=0)
    learner = Learner(net, policy, num_threads=1)
    learner.run(batches[:TRAIN])
    path = tmp_path_factory.mktemp("hot") / "fixed64.npz"
    save_hot_start(policy, net, path)
    learner.run(batches[TRAIN:])
    return path, batches[TRAIN:], learner.metrics.auc(start=TRAIN * 256)


def probe_auc(spec: str, path: Path | None, probe: list[SparseBatch], planted):
    policy = parse_policy(spec, planted.schema.num_fields, seed=0)
    net = build_model("dlrm", planted.schema, policy.dim, seed=0)
    if path is not None:
        hot_start(policy, path, model=net)
    learner = Learner(net, policy, num_threads=1)
    learner.run(probe)
    return learner.metrics.auc(), policy


@pytest.mark.parametrize(
    "spec",
    [
        "fixed:64",
        "fiited:budget=0.5,initial_capacity=64",
        "adaembed:budget=0.5,initial_capacity=64",
        "dml",
        "amtl",
        "fixed:16,pad=64",
    ],
)
def test_hot_start_starts_at_the_checkpoints_auc(checkpoint, spec: str, planted) -> None:
    path, probe, trained_auc = checkpoint
    cold, _ = probe_auc(spec, None, probe, planted)
    hot, policy = probe_auc(spec, path, probe, planted)
    assert trained_auc > 0.8
    assert hot > cold + 0.1, f"{spec}: hot {hot:.3f} vs cold {cold:.3f}"
    if policy.store.config.budget is not None:
        # Pruned to the budget at once, by count x norm per (field, position): on this stream
        # (a third of the fields pure noise, yet given the same share) part of the quality goes.
        assert policy.store.used_bytes() <= policy.store.budget_bytes()
        return
    # fixed:16 keeps a quarter of the dims: close, not equal
    slack = 0.08 if spec.startswith("fixed:16") else 0.03
    assert hot >= trained_auc - slack, f"{spec}: hot {hot:.3f} vs trained {trained_auc:.3f}"


def test_budgeted_hot_start_is_within_budget_and_keeps_frequent_ids(checkpoint, planted) -> None:
    path, _, _ = checkpoint
    # A small index table: with the default capacity it would take most of 150 IDs' budget.
    policy = parse_policy("fiited:budget=0.25,initial_capacity=64", planted.schema.num_fields,
                          seed=0)
    n = hot_start(policy, path)
    s = policy.store
    assert n == s.index.num_entries == 150
    assert s.used_bytes() <= s.budget_bytes()  # pruned at once, before any step
    live = (s.addresses(s.live_slots()) >= 0).sum(axis=1)
    assert live.min() >= 1 and live.max() > 1  # every ID keeps a first chunk, some more


def test_hot_spec_parameter(checkpoint, planted) -> None:
    path, probe, trained_auc = checkpoint
    policy = parse_policy(f"dml:penalty=0.01,hot={path}", planted.schema.num_fields, seed=0)
    assert policy.store.index.num_entries == 150
    assert policy.spec.endswith(f"hot={path}")
    assert policy.penalty_weight == 0.01
