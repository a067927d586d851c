"""Progressive validation on a stream, one rank of a sharded model: what `models.learner.Learner`
does in one process, in lock-step with the other ranks.

    learner = DistributedLearner(model, ShardedPolicy(local, group), schema, group)
    learner.run(my_batches)            # returns once every rank's stream is exhausted

Per step every rank: agrees on the global row count (one all-reduce: rows, streams still
open), looks up its rows through the sharded policy (all-to-alls), scores and records them,
back-propagates `world x sum(BCE of its rows) / global rows` (DistributedDataParallel averages
the dense gradients over ranks, so the network steps exactly as one process would on the union
of the ranks' rows), and applies the embedding gradients at their owners. A rank whose stream
is exhausted, or that has nothing this step, trains on an empty batch, so it never stalls the
others. A step whose loss is not finite on any rank is learned from by none.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models.distributed.embedding import ShardedPolicy
from models.distributed.group import ShardGroup
from models.learner import DENSE_LR
from models.metrics import StreamMetrics
from storage.batch import DatasetSchema, SparseBatch


def empty_batch(schema: DatasetSchema) -> SparseBatch:
    """A batch of no rows: what an idle rank trains on to keep the lock-step."""
    dense = np.zeros((0, schema.num_dense), np.float32) if schema.num_dense else None
    return SparseBatch(schema, labels=np.zeros(0, np.float32),
                       ids=np.zeros((0, schema.num_fields), np.int64), dense=dense)


class DistributedLearner:
    """See module docstring. The model is wrapped in DistributedDataParallel (its parameters
    are broadcast from rank 0 when wrapped); dense optimizer Adam (lr)."""

    def __init__(self, model: nn.Module, policy: ShardedPolicy, schema: DatasetSchema,
                 group: ShardGroup, lr: float = DENSE_LR) -> None:
        self.device = torch.device(policy.device)
        self.schema = schema
        self.group = group
        self.policy = policy
        self.net = model.to(self.device)
        ids = [torch.cuda.current_device()] if self.device.type == "cuda" else None
        self.model = DistributedDataParallel(self.net, device_ids=ids)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.metrics = StreamMetrics()
        self.rows_trained = 0  # this rank's rows
        self.steps = 0
        self.train_seconds = 0.0
        self.skipped_steps = 0

    @property
    def samples_per_s(self) -> float:
        """This rank's rows per second of training steps."""
        return self.rows_trained / self.train_seconds if self.train_seconds > 0 else float("nan")

    def _agree(self, rows: int, open_: bool) -> tuple[int, int]:
        """(global rows this step, ranks whose stream is still open)."""
        out = self.group.sum(torch.tensor([rows, int(open_)], dtype=torch.int64))
        return int(out[0]), int(out[1])

    def step(self, batch: SparseBatch, total_rows: int) -> np.ndarray:
        """Train on this rank's `batch` (possibly empty) of a step of `total_rows` rows in all;
        returns its recorded click probabilities float32[B]."""
        t0 = time.perf_counter()
        world = self.group.world
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        emb = self.policy.lookup(batch.ids, train=True)
        dense = None if batch.dense is None else torch.from_numpy(batch.dense).to(self.device)
        logits = self.model(emb, dense)
        pred = torch.sigmoid(logits.detach()).cpu().numpy().astype(np.float32, copy=True)
        labels = torch.from_numpy(batch.labels).to(self.device)
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        loss = loss * (world / max(total_rows, 1))
        finite = int(self.group.sum(torch.tensor([int(bool(torch.isfinite(loss)))]))[0])
        if finite < world:
            self.skipped_steps += 1
            self.policy.apply_gradients()  # the owners step with no gradient
        else:
            self.metrics.update(pred, batch.labels)
            loss.backward()
            self.optimizer.step()
            self.policy.apply_gradients()
            self.rows_trained += len(batch)
        self.steps += 1
        self.train_seconds += time.perf_counter() - t0
        return pred

    def run(self, batches: Iterable[SparseBatch]) -> StreamMetrics:
        """Step through `batches` until every rank's stream is exhausted."""
        it: Iterator[SparseBatch] = iter(batches)
        open_ = True
        while True:
            batch = next(it, None) if open_ else None
            if batch is None:
                open_ = False
                batch = empty_batch(self.schema)
            total, still_open = self._agree(len(batch), open_)
            if total == 0 and still_open == 0:
                return self.metrics
            self.step(batch, total)

    def predict(self, batch: SparseBatch) -> np.ndarray:
        """Click probabilities float32[B] of this rank's rows; a collective, changes nothing."""
        self.model.eval()
        with torch.no_grad():
            emb = self.policy.lookup(batch.ids, train=False)
            dense = None if batch.dense is None else torch.from_numpy(batch.dense).to(self.device)
            logits = self.net(emb, dense)
        return torch.sigmoid(logits).cpu().numpy().astype(np.float32, copy=False)
