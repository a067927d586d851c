"""`chunkrec.Recommender`, the notebook API: it learns a planted signal from a DataFrame, keeps
the frame's row order in predictions, continues with partial_fit, and save/load restores it
exactly (predictions, and the training that follows)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import chunkrec
from chunkrec import NotFittedError, Recommender

ROOT = Path(__file__).resolve().parents[2]


def planted(n: int, seed: int) -> pd.DataFrame:
    """Clicks driven by the user, the item and a dense price; rows in shuffled time order."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 40, n)
    item = rng.integers(0, 60, n)
    price = rng.normal(size=n)
    w_user, w_item = np.random.default_rng(99).normal(0, 1.5, (2, 60))
    logit = w_user[user] + w_item[item] - price - 1.0
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame({"user": user.astype(str), "item": item, "price": price,
                         "click": click, "ts": rng.permutation(n) + 1_700_000_000})


def _fit(policy: str = "fixed:16") -> tuple[Recommender, pd.DataFrame]:
    rec = Recommender(policy=policy, batch_size=64, lr=3e-3)
    df = planted(4000, seed=0)
    return rec.fit(df, label="click", fields=["user", "item"], dense=["price"], time="ts"), df


def test_it_learns_and_keeps_the_frame_order() -> None:
    rec, _ = _fit()
    assert rec.metrics_["rows"] == 4000 and rec.metrics_["auc"] > 0.65
    test = planted(1000, seed=1)
    proba = rec.predict_proba(test)
    assert proba.shape == (1000, 2) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(test["click"], proba[:, 1]) > 0.7
    # row i's score is row i's, whatever the time order: score a reversed frame
    reversed_proba = rec.predict_proba(test.iloc[::-1].drop(columns=["click", "ts"]))
    np.testing.assert_allclose(reversed_proba[::-1], proba, atol=1e-6)
    report = rec.memory_report()
    assert report["live_ids"] == 100 and report["total_bytes"] > report["value_bytes"] > 0


def test_partial_fit_continues_and_save_load_restores(tmp_path: Path) -> None:
    rec, _ = _fit("fiited:budget=0.5")
    more = planted(500, seed=2)
    rec.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    np.testing.assert_array_equal(back.predict_proba(more), rec.predict_proba(more))
    rec.partial_fit(more)
    back.partial_fit(more)  # same state, same rows: the same model after
    assert rec.metrics_["rows"] == 4500
    np.testing.assert_allclose(back.predict_proba(more), rec.predict_proba(more), atol=1e-6)


def test_errors_a_user_meets() -> None:
    with pytest.raises(NotFittedError, match="fit"):
        Recommender().predict_proba(planted(10, 0))
    with pytest.raises(ValueError, match="nosuch"):
        Recommender(policy="nosuch:1").fit(planted(10, 0), label="click", fields=["user"])
    with pytest.raises(chunkrec.DatasetError, match="'usr'"):
        Recommender().fit(planted(10, 0), label="click", fields=["usr"])
    with pytest.raises(TypeError):
        Recommender().fit(planted(10, 0), label="click", fields="user")  # type: ignore[arg-type]


def test_import_is_light_and_version_matches_the_cli() -> None:
    code = ("import sys, chunkrec; print(chunkrec.__version__); "
            "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split("\n")
    assert out[1] == "[]"
    cli = subprocess.run([sys.executable, "-m", "services.cli", "--version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert cli.strip() == f"chunkrec {out[0]}" and out[0] == chunkrec.__version__
