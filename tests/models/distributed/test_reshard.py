"""Global checkpoints restore into another number of ranks: 2 -> 1 and 1 -> 2 give the same
predictions on a fixed batch (real gloo ranks, real files; models/distributed/checkpoint.py)."""

from __future__ import annotations

import json

import numpy as np
from reshard_child import work

from services.distributed.launch import launch


def test_two_ranks_to_one_and_back_predict_the_same(tmp_path) -> None:
    two, one = tmp_path / "two", tmp_path / "one"
    before = launch(work, 2, args=(str(two), 2000, str(two)))[0]  # train 2 ranks, save
    assert (two / "ckpt-000001" / "COMMIT").exists()
    assert json.loads((two / "ckpt-000001" / "COMMIT").read_text())["world"] == 2
    restored = launch(work, 1, args=(str(two), 0, str(one)))[0]  # 2 -> 1, save
    back = launch(work, 2, args=(str(one), 0, None))[0]  # 1 -> 2
    assert len(set(np.round(before, 3))) > 10  # a trained model, not a constant
    np.testing.assert_allclose(restored, before, atol=1e-6)
    np.testing.assert_allclose(back, before, atol=1e-6)


def test_a_checkpoint_without_commit_is_not_restored(tmp_path) -> None:
    from models.distributed.checkpoint import latest_complete

    (tmp_path / "ckpt-000001").mkdir()
    (tmp_path / "ckpt-000001" / "COMMIT").write_text("{}")
    (tmp_path / "ckpt-000002").mkdir()  # a crash before its marker
    assert latest_complete(tmp_path) == tmp_path / "ckpt-000001"
