"""Progressive validation on a stream: every row is scored, recorded, then trained on.

    learner = Learner(model, policy, lr=1e-3)
    metrics = learner.run(dataset.batches(1024))        # -> StreamMetrics
    learner.samples_per_s                                # training throughput

Per batch, one forward pass serves both purposes: the policy's train lookup and the model's
forward give the predictions of the parameters as they were before this batch (nothing is
updated until after the backward pass), so sigmoid(logits) is recorded first, then the loss is
back-propagated, the dense optimizer steps the network (and `policy.dense_parameters()`), and
`policy.apply_gradients()` updates the embeddings. The network must compute the same function
in train and eval mode (no dropout / batch norm), which `models.networks` guarantees.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.metrics import StreamMetrics
from models.policy import EmbeddingPolicy
from storage.batch import SparseBatch, first_rows

DENSE_LR = 1e-3  # Adam on the network's weights

Callback = Callable[["Learner", SparseBatch, np.ndarray], None]


class Learner:
    """Trains `model` over `policy`'s embeddings on a stream, recording progressive-validation
    predictions in `self.metrics`.

    model(emb: float32[B, F, D], dense: float32[B, Dn] | None) -> logits float32[B]
    optimizer: "adam" or "adagrad" for the dense parameters (network + policy.dense_parameters()).
    num_threads: if given, torch.set_num_threads(num_threads) (a process-wide setting).
    The model is moved to the policy's device (`policy.device`, cpu or cuda), and every batch
    with it; predictions come back to the host for the metrics.
    """

    def __init__(
        self,
        model: nn.Module,
        policy: EmbeddingPolicy,
        lr: float = DENSE_LR,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        num_threads: int | None = None,
    ) -> None:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.device = torch.device(getattr(policy, "device", "cpu"))
        self.model = model.to(self.device)
        self.policy = policy
        params = list(model.parameters()) + list(policy.dense_parameters())
        kind = optimizer.strip().lower()
        if kind == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=lr, weight_decay=weight_decay
            )
        elif kind == "adagrad":
            self.optimizer = torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}; expected adam or adagrad")
        self.metrics = StreamMetrics()
        self.rows_trained = 0
        self.batches_trained = 0
        self.train_seconds = 0.0
        self.last_loss = float("nan")
        self.skipped_batches = 0  # batches whose loss was not finite (see step)

    @property
    def samples_per_s(self) -> float:
        """Rows trained per second of training time (lookup, forward, backward, updates and
        recording; reading the data is not counted)."""
        return self.rows_trained / self.train_seconds if self.train_seconds > 0 else float("nan")

    def _dense(self, batch: SparseBatch) -> torch.Tensor | None:
        if batch.dense is None:
            return None
        return torch.from_numpy(batch.dense).to(self.device, non_blocking=True)

    def predict(self, batch: SparseBatch) -> np.ndarray:
        """Click probabilities float32[B] with the current parameters; changes nothing."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                emb = self.policy.lookup(batch.ids, train=False)
                logits = self.model(emb, self._dense(batch))
        finally:
            self.model.train(was_training)
        return torch.sigmoid(logits).cpu().numpy().astype(np.float32, copy=False)

    def step(self, batch: SparseBatch) -> np.ndarray:
        """Score `batch` with the current parameters, record the scores, then train on it.
        Returns the recorded click probabilities float32[B]. A batch whose loss is not finite
        is neither recorded nor learned from (counted in `skipped_batches`)."""
        t0 = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        emb = self.policy.lookup(batch.ids, train=True)
        logits = self.model(emb, self._dense(batch))
        pred = torch.sigmoid(logits.detach()).cpu().numpy().astype(np.float32, copy=True)
        labels = torch.from_numpy(batch.labels).to(self.device, non_blocking=True)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        if not torch.isfinite(loss):
            # inputs at the edge of float32 overflow the forward pass: one such batch would
            # make every weight NaN for good. It is not learned from (the policy steps with no
            # gradient) nor recorded (its NaN would poison the running metrics).
            self.skipped_batches += 1
            self.policy.apply_gradients()
            self.train_seconds += time.perf_counter() - t0
            return pred
        self.metrics.update(pred, batch.labels)
        loss.backward()
        self.optimizer.step()
        self.policy.apply_gradients()
        self.train_seconds += time.perf_counter() - t0
        self.rows_trained += len(batch)
        self.batches_trained += 1
        self.last_loss = float(loss.detach())
        return pred

    def run(
        self,
        batches: Iterable[SparseBatch],
        callback: Callback | None = None,
        max_rows: int | None = None,
    ) -> StreamMetrics:
        """Progressive validation over `batches` (at most `max_rows` rows in all, the last
        batch cut short if need be). callback(learner, batch, predictions) after each step."""
        for batch in first_rows(batches, max_rows):
            if len(batch) == 0:
                continue
            pred = self.step(batch)
            if callback is not None:
                callback(self, batch, pred)
        return self.metrics
