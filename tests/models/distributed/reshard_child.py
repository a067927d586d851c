"""The ranks of tests/models/distributed/test_reshard.py (spawned: a module-level function)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.distributed.checkpoint import latest_complete, load_global, save_global
from models.distributed.embedding import ShardedPolicy
from models.distributed.group import ShardGroup
from models.distributed.learner import DistributedLearner
from models.networks import build_model
from models.policies.registry import parse_policy
from services.distributed.launch import init_from_env
from services.evaluation.sharded import my_rows
from storage.datasets.spec import open_dataset

DATA = "synthetic:events=4000,fields=4,vocab=400,seed=2"
SPEC = "fiited:budget=0.3,interval=5"


def work(rank: int, world: int, root: str, train_rows: int, save_to: str | None
         ) -> np.ndarray:
    """Build the model, restore the newest checkpoint under `root` if any (else train on the
    first `train_rows` rows), optionally save a checkpoint, and predict a fixed batch: rank 0
    returns the whole batch's predictions, in row order."""
    init_from_env()
    group = ShardGroup.current()
    data = open_dataset(DATA)
    policy = ShardedPolicy(parse_policy(SPEC, data.schema.num_fields, seed=0), group)
    net = build_model("dlrm", data.schema, policy.dim, seed=0)
    learner = DistributedLearner(net, policy, data.schema, group)
    ckpt = latest_complete(Path(root))
    if ckpt is not None:
        load_global(ckpt, learner)
    else:
        learner.run(b for b, _ in my_rows(data.batches(128), rank, world, train_rows))
    if save_to:
        save_global(Path(save_to) / "ckpt-000001", learner, extra={"rank": rank})
    fixed = next(iter(data.batches(512)))  # seen and unseen IDs alike
    mine = np.arange(rank, len(fixed), world)
    pred = learner.predict(fixed.take(mine))
    import torch.distributed as dist

    got: list = [None] * world
    dist.all_gather_object(got, (mine, pred))
    out = np.zeros(len(fixed), np.float32)
    for where, p in got:
        out[where] = p
    return out
