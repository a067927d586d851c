"""`Recommender`: a CTR model over self-resizing embeddings, from a pandas DataFrame.

    from chunkrec import Recommender

    rec = Recommender(policy="fiited:budget=0.25")
    rec.fit(df, label="click", fields=["user", "item", "city"], dense=["price"], time="ts")
    rec.metrics_                         # progressive validation of the rows fit so far
    p = rec.predict_proba(new_df)[:, 1]  # click probabilities, float32[N] (scikit-learn's shape)
    rec.partial_fit(next_hour_df)        # the stream goes on: same columns, more rows
    rec.memory_report()                  # bytes by kind, live IDs and chunks
    rec.save("my_model"); rec = Recommender.load("my_model")

What `fit` does is what the trainer does on the stream (models.learner.Learner): rows in time
order, in batches; each batch is scored, recorded, then trained on (progressive validation),
so `metrics_` is an honest out-of-sample estimate and one pass is the default. The embedding
policy is any spec `chunkrec bench quality` and `chunkrec train` take (`fixed:64`,
`fiited:budget=0.25`, `adaembed`, `dml`, `amtl`, ...); categorical values are hashed the way
events and scoring requests are (storage.batch.hash_values), so an ID is an ID everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models.learner import DENSE_LR, Learner
from models.networks import build_model
from models.policies.registry import parse_policy
from storage.batch import DatasetSchema
from storage.datasets.table import TableColumns, TableDataset, to_batch

_META = "recommender.json"


class NotFittedError(RuntimeError):
    """predict_proba / partial_fit / save before fit (or load)."""


class Recommender:
    """A click-through-rate model whose embedding tables resize themselves while they train.

    policy: embedding policy spec (README "Policies"); model: network, "dlrm" or "mlp";
    batch_size: rows per training step; lr: Adam learning rate of the network; epochs: passes
    over the data per fit / partial_fit (1: each row is scored before it is learned from, so
    `metrics_` is out of sample); seed: initialisation seed.
    """

    def __init__(self, policy: str = "fiited:budget=0.25", model: str = "dlrm",
                 batch_size: int = 256, lr: float = DENSE_LR, epochs: int = 1,
                 seed: int = 0) -> None:
        if batch_size < 1 or epochs < 1:
            raise ValueError("batch_size and epochs must be >= 1")
        self.policy, self.model, self.batch_size = policy, model, batch_size
        self.lr, self.epochs, self.seed = lr, epochs, seed
        self.columns_: TableColumns | None = None
        self._learner: Learner | None = None

    # --- training ---------------------------------------------------------------------------

    def fit(self, df: pd.DataFrame, label: str, fields: Sequence[str],
            dense: Sequence[str] = (), time: str | None = None,
            unit: str | None = None) -> Recommender:
        """Start afresh and learn from `df`: `label` the 0/1 click column, `fields` the
        categorical columns, `dense` numeric ones, `time` the column rows are ordered by
        (epoch seconds or date-times; None: the frame's order). Returns self."""
        if isinstance(fields, str) or isinstance(dense, str):
            raise TypeError("fields and dense are lists of column names")
        columns = TableColumns(label=label, fields=tuple(fields), dense=tuple(dense),
                               time=time, unit=unit)
        schema = _schema(columns)
        policy = parse_policy(self.policy, num_fields=schema.num_fields, seed=self.seed)
        net = build_model(self.model, schema, dim=policy.dim, seed=self.seed)
        self.columns_, self._learner = columns, Learner(net, policy, lr=self.lr)
        return self.partial_fit(df)

    def partial_fit(self, df: pd.DataFrame) -> Recommender:
        """Learn from more rows (same columns as `fit`), continuing where the model is: for
        streams, e.g. one call per hour of logs. Returns self."""
        learner, columns = self._fitted()
        data = TableDataset(df, columns, spec="DataFrame", name="dataframe")
        for _ in range(self.epochs):
            learner.run(data.batches(self.batch_size))
        return self

    # --- using it ---------------------------------------------------------------------------

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """float32[N, 2]: P(no click), P(click) per row of `df`, in the frame's order (the label
        and time columns are not needed). Changes nothing."""
        learner, columns = self._fitted()
        order_kept = dataclasses.replace(columns, time=None)
        batch = to_batch(df, order_kept, _schema(columns), "DataFrame",
                         need_label=False)
        parts = [learner.predict(batch.take(slice(i, i + 8192)))
                 for i in range(0, len(batch), 8192)]
        click = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return np.stack([1.0 - click, click], axis=1).astype(np.float32)

    @property
    def metrics_(self) -> dict[str, float]:
        """Progressive validation over every row fit so far: auc, logloss, ne (normalised
        entropy: log loss over that of always predicting the CTR), calibration, ctr, rows."""
        learner, _ = self._fitted()
        return {k: float(v) for k, v in learner.metrics.summary().items()
                if k not in ("start", "stop")}

    def memory_report(self) -> dict[str, float]:
        """What the embeddings take, measured from the arrays: value, optimizer, metadata and
        index bytes, their total, live IDs and chunks, total bytes per live ID; plus the
        policy's statistics (e.g. mean live dims)."""
        learner, _ = self._fitted()
        report: dict[str, float] = dict(learner.policy.memory().as_dict())
        ids = report.get("live_ids", 0)
        report["bytes_per_id"] = report["total_bytes"] / ids if ids else math.nan
        report.update({k: float(v) for k, v in learner.policy.stats().items()})
        return report

    # --- persistence ------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the model to folder `path` (created): embeddings, network, optimizer state
        and settings, enough for `load` to predict and to partial_fit on."""
        learner, columns = self._fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        learner.policy.save(folder / "policy.npz")
        torch.save({"net": learner.model.state_dict(),
                    "optimizer": learner.optimizer.state_dict()}, folder / "network.pt")
        meta = {"params": self.get_params(), "columns": dataclasses.asdict(columns)}
        (folder / _META).write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        """A Recommender as `save` left it."""
        folder = Path(path)
        meta = json.loads((folder / _META).read_text())
        rec = cls(**meta["params"])
        cols = meta["columns"]
        columns = TableColumns(label=cols["label"], fields=tuple(cols["fields"]),
                               dense=tuple(cols["dense"]), time=cols["time"], unit=cols["unit"])
        schema = _schema(columns)
        policy = parse_policy(rec.policy, num_fields=schema.num_fields, seed=rec.seed)
        policy.load(folder / "policy.npz")
        net = build_model(rec.model, schema, dim=policy.dim, seed=rec.seed)
        state = torch.load(folder / "network.pt", weights_only=True)
        net.load_state_dict(state["net"])
        learner = Learner(net, policy, lr=rec.lr)
        learner.optimizer.load_state_dict(state["optimizer"])
        rec.columns_, rec._learner = columns, learner
        return rec

    def get_params(self) -> dict[str, Any]:
        return {"policy": self.policy, "model": self.model, "batch_size": self.batch_size,
                "lr": self.lr, "epochs": self.epochs, "seed": self.seed}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"Recommender({args})"

    def _fitted(self) -> tuple[Learner, TableColumns]:
        if self._learner is None or self.columns_ is None:
            raise NotFittedError("call fit(df, label=..., fields=[...]) first (or load)")
        return self._learner, self.columns_


def _schema(columns: TableColumns) -> DatasetSchema:
    return DatasetSchema("dataframe", fields=columns.fields, dense=columns.dense)
