"""The sharded layer on CUDA with NCCL (marker `gpu`, skipped without CUDA): as many ranks as
GPUs (at most 2; NCCL takes one GPU a rank) predict what one process predicts (fixed:64), and
FIITED's global budget holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.evaluation.quality import run_one
from services.evaluation.sharded import run_sharded
from storage.datasets.spec import open_dataset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]
DATA = "synthetic:events=3000,fields=4,vocab=300,seed=1"
ROWS = 2945


def test_nccl_ranks_predict_what_one_process_predicts() -> None:
    ranks = min(2, torch.cuda.device_count())
    sharded = run_sharded(DATA, "fixed:64", 0, ranks, batch_size=128, max_rows=ROWS,
                          device="cuda")
    one = run_one(open_dataset(DATA), "fixed:64", 0, batch_size=128, max_rows=ROWS,
                  device="cuda")
    assert np.array_equal(sharded[0]["labels"], one.metrics.labels)
    np.testing.assert_allclose(sharded[0]["predictions"], one.metrics.predictions, atol=1e-4)
    budgeted = run_sharded(DATA, "fiited:budget=0.3,interval=10", 0, ranks, batch_size=128,
                           device="cuda", global_budget=True)
    assert budgeted[0]["memory"]["total_bytes"] <= budgeted[0]["budget_bytes"]
    print(f"{ranks} NCCL rank(s): max |pred diff| "
          f"{np.abs(sharded[0]['predictions'] - one.metrics.predictions).max():.2e}, fiited "
          f"{budgeted[0]['memory']['total_bytes']:,} bytes of {budgeted[0]['budget_bytes']:,.0f}")
