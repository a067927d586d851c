"""The AMTL policy (`amtl`): a per-value k from twin frequency mask networks, only kept dims
stored."""

import numpy as np
import torch

from models.policies.registry import parse_policy


def test_ste_forward_is_one_hot_and_backward_reaches_both_mask_networks(planted) -> None:
    # k = 16 at start
    policy = parse_policy("amtl:start=3,high=1", planted.schema.num_fields, seed=0)
    ids = planted.stream(1, rows=64)[0].ids
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
    counts = ctx.counts.float()[:, None]
    torch.testing.assert_close(values.grad[:, :16], counts * w[:16])
    assert (values.grad[:, 16:] == 0).all()  # the hard mask's gradient to the embeddings
    assert (policy.chunk_counts() == 3).all()


def test_low_frequency_values_are_decided_by_the_low_branch(planted) -> None:
    policy = parse_policy("amtl", planted.schema.num_fields, seed=0)
    net = policy.mask_module
    fields = torch.zeros(3, dtype=torch.long)
    x = torch.tensor([0.0, 0.5, 1.0])
    net(fields, x).sum().backward()
    # x = 0: only the low branch; x = 1: only the high branch (its weight is clip(x, 0, 1))
    g_hi, g_lo = net.b2.grad[0, 0], net.b2.grad[1, 0]
    torch.testing.assert_close(g_hi, torch.full_like(g_hi, net.gain * 1.5))
    torch.testing.assert_close(g_lo, torch.full_like(g_lo, net.gain * 1.5))


def test_learned_k_follows_the_planted_signal(planted) -> None:
    policy, learner = planted.trained("amtl", planted.stream())
    stats = policy.stats()
    assert stats["mean_k_2"] <= 8, f"noise values kept {stats['mean_k_2']} dims"
    assert stats["mean_k_0"] >= 32 and stats["mean_k_1"] >= 32, stats
    assert learner.metrics.auc(start=len(learner.metrics) // 2) > 0.75


def test_memory_counts_only_stored_dims(planted) -> None:
    policy, _ = planted.trained("amtl", planted.stream(60))
    s = policy.store
    n = (s.addresses(s.live_slots()) >= 0).sum(axis=1)
    mem = policy.memory()
    assert mem.value_bytes == 4 * int(s.offsets[n].sum())
    assert mem.optimizer_bytes == 4 * int(n.sum())  # row-wise Adagrad: one float per chunk
    assert mem.metadata_bytes > policy.mask_bytes() > 0  # the mask networks are counted
    fixed, _ = planted.trained("fixed:64", planted.stream(60))
    assert mem.value_bytes < 0.8 * fixed.memory().value_bytes


def test_export_reproduces_the_eval_lookup_and_save_load_round_trips(tmp_path, planted) -> None:
    policy, _ = planted.trained("amtl", planted.stream(40))
    exp = policy.export(dirty_only=False)
    bits = (exp.masks[:, None] >> np.arange(len(exp.widths), dtype=np.uint32)) & 1
    kept = np.repeat(bits.astype(bool), exp.widths, axis=1)
    served = np.where(kept, exp.values, 0.0)  # what serving rebuilds from the records
    ids = np.zeros((len(exp), planted.schema.num_fields), dtype=np.int64)
    ids[np.arange(len(exp)), exp.fields.astype(np.int64)] = exp.keys
    emb = policy.lookup(ids, train=False).numpy()[np.arange(len(exp)), exp.fields.astype(int)]
    np.testing.assert_array_equal(served, emb)
    policy.save(tmp_path / "amtl.npz")
    other = parse_policy("amtl", planted.schema.num_fields, seed=1)
    other.load(tmp_path / "amtl.npz")
    assert torch.equal(policy.lookup(ids), other.lookup(ids))
    slots = policy.store.live_slots()
    with torch.no_grad():
        assert torch.equal(policy.probabilities(slots), other.probabilities(slots))
