"""The sharded embedding layer on 2 gloo ranks against one process (models/distributed).

The ranks are real processes on a real gloo process group (services/distributed/launch.py);
each keeps rows i mod 2 = rank of every batch, so a step trains on the rows one process trains
on, and the gradients are the single process's (models/distributed/learner.py)."""

from __future__ import annotations

import numpy as np
import pytest

from services.evaluation.quality import run_one
from services.evaluation.sharded import run_sharded
from storage.datasets.spec import open_dataset

DATA = "synthetic:events=3000,fields=4,vocab=300,seed=1"
ROWS = 2945  # the last batch has one row: rank 1 trains on an empty batch in that step


@pytest.fixture(scope="module")
def fixed_runs() -> tuple:
    sharded = run_sharded(DATA, "fixed:64", 0, workers=2, batch_size=128, max_rows=ROWS)
    one = run_one(open_dataset(DATA), "fixed:64", 0, batch_size=128, max_rows=ROWS)
    return sharded, one


def test_two_ranks_predict_what_one_process_predicts(fixed_runs) -> None:
    sharded, one = fixed_runs
    assert np.array_equal(sharded[0]["labels"], one.metrics.labels)  # every row, in order
    np.testing.assert_allclose(sharded[0]["predictions"], one.metrics.predictions, atol=1e-5)


def test_each_id_lives_on_one_rank(fixed_runs) -> None:
    sharded, one = fixed_runs
    shards = [r["shard_memory"]["live_ids"] for r in sharded]
    assert sum(shards) == one.memory["live_ids"]  # no ID held twice, none lost
    assert min(shards) > 0.4 * one.memory["live_ids"]  # the hash spreads them
    assert sharded[0]["memory"]["value_bytes"] == one.memory["value_bytes"]
    assert all(r["rows"] > 0 for r in sharded) and sharded[1]["rows"] < sharded[0]["rows"]
