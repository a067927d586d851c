"""Every policy trains on `cpu` and (marker `gpu`, skipped without CUDA) on `cuda`, and a
save made on one device loads on the other with the same values."""

import numpy as np
import pytest
import torch

from models.learner import Learner
from models.networks import build_model
from models.policies.registry import parse_policy

CUDA = pytest.param("cuda", marks=[
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
])
SPECS = ["fixed:16", "fiited:budget=0.4", "adaembed:budget=0.9", "dml", "amtl", "torch:16"]


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("spec", SPECS)
def test_every_policy_learns_on_the_device(planted, spec: str, device: str, tmp_path) -> None:
    policy = parse_policy(spec, planted.schema.num_fields, seed=0, device=device)
    net = build_model("dlrm", planted.schema, policy.dim, seed=0)
    learner = Learner(net, policy, num_threads=1)
    learner.run(planted.stream(100))
    assert next(net.parameters()).device.type == device
    assert np.isfinite(learner.last_loss)
    # the planted interaction is learned (chance: 0.5)
    assert learner.metrics.auc(start=len(learner.metrics) // 2) > 0.65
    ids = np.arange(12, dtype=np.int64).reshape(4, 3)
    emb = policy.lookup(ids)
    assert emb.device.type == device and emb.shape == (4, 3, policy.dim)
    policy.save(tmp_path / "p")
    other = parse_policy(spec, planted.schema.num_fields, seed=1,
                         device="cpu" if device == "cuda" else device)
    other.load(tmp_path / "p")
    assert torch.equal(other.lookup(ids).cpu(), emb.cpu())  # the values, bit for bit
    if not spec.startswith("torch"):
        out = policy.export(dirty_only=False)
        assert len(out) > 0 and isinstance(out.values, np.ndarray)
