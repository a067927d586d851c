"""The AMTL policy (`amtl`): a per-value k from twin frequency mask networks, only kept dims
stored."""

import numpy as np
import torch

from models.learner import Learner
from models.networks import build_model
from models.policies.registry import parse_policy
from storage.batch import DatasetSchema, SparseBatch

SCHEMA = DatasetSchema("planted", fields=("user", "item", "noise"))


def planted_stream(n_batches: int = 150, rows: int = 256, seed: int = 0) -> list[SparseBatch]:
    """Labels from a rank-4 interaction of fields 0 and 1; field 2 is pure noise."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    out = []
    for _ in range(n_batches):
        ids = rng.integers(0, 50, size=(rows, 3))
        logit = (u[ids[:, 0]] * v[ids[:, 1]]).sum(axis=1)
        labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        out.append(SparseBatch(SCHEMA, labels=labels, ids=ids))
    return out


def trained(spec: str, batches: list[SparseBatch]):
    policy = parse_policy(spec, SCHEMA.num_fields, seed=0)
    net = build_model("dlrm", SCHEMA, policy.dim, seed=0)
    learner = Learner(net, policy, num_threads=1)
    learner.run(batches)
    return policy, learner


def test_ste_forward_is_one_hot_and_backward_reaches_both_mask_networks() -> None:
    policy = parse_policy("amtl:start=3,high=1", SCHEMA.num_fields, seed=0)  # k = 16 at start
    ids = planted_stream(1, rows=64)[0].ids
    out = policy.lookup(ids, train=True)
    ctx, values = policy._pending
    assert (out[..., 16:] == 0).all() and (out[..., :16] != 0).all()
    # Forward: exactly the stored values (the hard prefix), what eval and serving read.
    assert torch.equal(out.detach(), policy.lookup(ids, train=False))
    w = torch.randn(64)
    (out * w).sum().backward()
    net = policy.mask_module
    # counts are 1 (log1p(1) / log1p(1) = 1): the high branch decides (a = 1); its last layer
    # starts at zero, so the first layer's gradient starts at zero too
    for p in (net.w2, net.b2):
        assert p.grad[0].abs().sum() > 0, "no gradient to the high-frequency network"
        assert p.grad[1].abs().sum() == 0, "the low branch has weight 1 - a = 0 here"
    counts = torch.from_numpy(ctx.counts).float()[:, None]
    torch.testing.assert_close(values.grad[:, :16], counts * w[:16])
    assert (values.grad[:, 16:] == 0).all()  # the hard mask's gradient to the embeddings
    assert (policy.chunk_counts() == 3).all()


def test_low_frequency_values_are_decided_by_the_low_branch() -> None:
    policy = parse_policy("amtl", SCHEMA.num_fields, seed=0)
    net = policy.mask_module
    fields = torch.zeros(3, dtype=torch.long)
    x = torch.tensor([0.0, 0.5, 1.0])
    net(fields, x).sum().backward()
    # x = 0: only the low branch; x = 1: only the high branch (its weight is clip(x, 0, 1))
    g_hi, g_lo = net.b2.grad[0, 0], net.b2.grad[1, 0]
    torch.testing.assert_close(g_hi, torch.full_like(g_hi, net.gain * 1.5))
    torch.testing.assert_close(g_lo, torch.full_like(g_lo, net.gain * 1.5))


def test_learned_k_follows_the_planted_signal() -> None:
    policy, learner = trained("amtl", planted_stream())
    stats = policy.stats()
    assert stats["mean_k_2"] <= 8, f"noise values kept {stats['mean_k_2']} dims"
    assert stats["mean_k_0"] >= 32 and stats["mean_k_1"] >= 32, stats
    assert learner.metrics.auc(start=len(learner.metrics) // 2) > 0.75


def test_memory_counts_only_stored_dims() -> None:
    policy, _ = trained("amtl", planted_stream(60))
    s = policy.store
    n = (s.addresses(s.live_slots()) >= 0).sum(axis=1)
    mem = policy.memory()
    assert mem.value_bytes == 4 * int(s.offsets[n].sum())
    assert mem.optimizer_bytes == 4 * int(n.sum())  # row-wise Adagrad: one float per chunk
    assert mem.metadata_bytes > policy.mask_bytes() > 0  # the mask networks are counted
    fixed, _ = trained("fixed:64", planted_stream(60))
    assert mem.value_bytes < 0.8 * fixed.memory().value_bytes


def test_export_reproduces_the_eval_lookup_and_save_load_round_trips(tmp_path) -> None:
    policy, _ = trained("amtl", planted_stream(40))
    exp = policy.export(dirty_only=False)
    bits = (exp.masks[:, None] >> np.arange(len(exp.widths), dtype=np.uint32)) & 1
    kept = np.repeat(bits.astype(bool), exp.widths, axis=1)
    served = np.where(kept, exp.values, 0.0)  # what serving rebuilds from the records
    ids = np.zeros((len(exp), SCHEMA.num_fields), dtype=np.int64)
    ids[np.arange(len(exp)), exp.fields.astype(np.int64)] = exp.keys
    emb = policy.lookup(ids, train=False).numpy()[np.arange(len(exp)), exp.fields.astype(int)]
    np.testing.assert_array_equal(served, emb)
    policy.save(tmp_path / "amtl.npz")
    other = parse_policy("amtl", SCHEMA.num_fields, seed=1)
    other.load(tmp_path / "amtl.npz")
    assert torch.equal(policy.lookup(ids), other.lookup(ids))
    slots = policy.store.live_slots()
    with torch.no_grad():
        assert torch.equal(policy.probabilities(slots), other.probabilities(slots))
