"""The planted data set the policy tests share: labels from a rank-4 interaction of fields 0
and 1, field 2 pure noise; and a policy trained on it.

    def test_x(planted) -> None:
        policy, learner = planted.trained("dml", planted.stream(60))
"""

from __future__ import annotations

import numpy as np
import pytest

from models.learner import Learner
from models.networks import build_model
from models.policies.registry import parse_policy
from models.policy import EmbeddingPolicy
from storage.batch import DatasetSchema, SparseBatch


class Planted:
    schema = DatasetSchema("planted", fields=("user", "item", "noise"))

    def stream(self, n_batches: int = 150, rows: int = 256, seed: int = 0
               ) -> list[SparseBatch]:
        """Labels from a rank-4 interaction of fields 0 and 1; field 2 is pure noise."""
        rng = np.random.default_rng(seed)
        u, v = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
        out = []
        for _ in range(n_batches):
            ids = rng.integers(0, 50, size=(rows, 3))
            logit = (u[ids[:, 0]] * v[ids[:, 1]]).sum(axis=1)
            labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
            out.append(SparseBatch(self.schema, labels=labels, ids=ids))
        return out

    def trained(self, spec: str, batches: list[SparseBatch]
                ) -> tuple[EmbeddingPolicy, Learner]:
        """`spec` (seed 0) under a DLRM (seed 0) after one pass over `batches`."""
        policy = parse_policy(spec, self.schema.num_fields, seed=0)
        net = build_model("dlrm", self.schema, policy.dim, seed=0)
        learner = Learner(net, policy, num_threads=1)
        learner.run(batches)
        return policy, learner


@pytest.fixture(scope="session")
def planted() -> Planted:
    return Planted()
