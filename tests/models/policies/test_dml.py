"""The Dimension Mask Layer policy (`dml`): a learned length per field, only kept dims stored."""

import numpy as np
import torch

from models.policies.registry import parse_policy


def stored_dims(policy) -> np.ndarray:
    """int64[E] dims each live entry stores, from its chunk addresses."""
    s = policy.store
    n = (s.addresses(s.live_slots()) >= 0).sum(axis=1)
    return s.offsets[n]


def test_forward_mask_is_hard_and_backward_reaches_the_threshold(planted) -> None:
    policy = parse_policy("dml:init=30", planted.schema.num_fields, seed=0)  # t = 30 -> N = 32
    ids = planted.stream(1, rows=64)[0].ids
    out = policy.lookup(ids, train=True)
    ctx, values = policy._pending
    assert (out[..., 32:] == 0).all() and (out[..., :32] != 0).all()
    # Forward: the stored values exactly (what an eval lookup and serving read), not scaled
    # by the soft mask (sigmoid < 1 near t).
    assert torch.equal(out.detach(), policy.lookup(ids, train=False))
    w = torch.randn(64)
    (out * w).sum().backward()
    theta = policy.dense_parameters()[0]
    assert theta.grad is not None and (theta.grad != 0).all()  # soft mask's gradient
    # The embeddings' gradient is the hard mask's: w on the kept dims, 0 beyond.
    counts = ctx.counts.float()[:, None]
    torch.testing.assert_close(values.grad[:, :32], counts * w[:32])
    assert (values.grad[:, 32:] == 0).all()
    assert (policy.chunk_counts() == 5).all()  # 4-4-8-8-8: the stored chunks are the mask


def test_learned_length_follows_the_planted_signal(planted) -> None:
    policy, learner = planted.trained("dml", planted.stream())
    n = policy.field_dims()
    assert n[2] <= 8, f"the noise field kept {n[2]} dims"
    assert n[0] >= 24 and n[1] >= 24, f"signal fields shrank to {n[:2]}"
    assert learner.metrics.auc(start=len(learner.metrics) // 2) > 0.75


def test_memory_counts_only_stored_dims(planted) -> None:
    policy, _ = planted.trained("dml", planted.stream(60))
    policy.relayout()
    s = policy.store
    dims = stored_dims(policy)
    fields = s.index.fields[s.live_slots()]
    assert (dims == policy.field_dims()[fields]).all()  # every entry holds exactly N_f
    mem = policy.memory()
    assert mem.value_bytes == 4 * int(dims.sum())
    n_chunks = (s.addresses(s.live_slots()) >= 0).sum()
    assert mem.optimizer_bytes == 4 * int(n_chunks)  # row-wise Adagrad: one float per chunk
    fixed, _ = planted.trained("fixed:64", planted.stream(60))
    assert mem.value_bytes < fixed.memory().value_bytes


def test_export_reproduces_the_eval_lookup(planted) -> None:
    batches = planted.stream(40)
    policy, _ = planted.trained("dml", batches)
    exp = policy.export(dirty_only=False)
    bits = (exp.masks[:, None] >> np.arange(len(exp.widths), dtype=np.uint32)) & 1
    kept = np.repeat(bits.astype(bool), exp.widths, axis=1)
    served = np.where(kept, exp.values, 0.0)  # what serving rebuilds from the records
    ids = np.zeros((len(exp), planted.schema.num_fields), dtype=np.int64)
    ids[np.arange(len(exp)), exp.fields.astype(np.int64)] = exp.keys
    emb = policy.lookup(ids, train=False).numpy()[np.arange(len(exp)), exp.fields.astype(int)]
    np.testing.assert_array_equal(served, emb)


def test_hardened_fields_stop_moving_and_save_load_keeps_them(tmp_path, planted) -> None:
    policy, learner = planted.trained("dml:harden=20", planted.stream(80))
    assert policy.frozen.any()
    before = policy.field_dims().copy()
    learner.run(planted.stream(20, seed=1))
    after = policy.field_dims()
    assert (after[policy.frozen] == before[policy.frozen]).all()
    policy.save(tmp_path / "dml.npz")
    other = parse_policy("dml:harden=20", planted.schema.num_fields, seed=0)
    other.load(tmp_path / "dml.npz")
    assert (other.field_dims() == after).all() and (other.frozen == policy.frozen).all()
    ids = planted.stream(1, seed=2)[0].ids
    assert torch.equal(policy.lookup(ids), other.lookup(ids))
