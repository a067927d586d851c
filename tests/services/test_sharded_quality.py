"""`chunkrec bench quality --workers 2`: one model sharded over 2 gloo ranks learns as well as
one process (paired bootstrap CI of the AUC difference) and holds one budget's bytes."""

from __future__ import annotations

from functools import partial

import numpy as np
from typer.testing import CliRunner

from models.bootstrap import bootstrap_auc
from services.cli import app
from services.evaluation.quality import run_one, run_quality_bench
from services.evaluation.sharded import run_one_sharded
from storage.datasets.spec import open_dataset

DATA = "synthetic:events=12000,fields=4,vocab=1000,zipf=1.3,dim=8,seed=1"
SPEC = "fiited:budget=0.3,interval=10"


def test_two_ranks_learn_like_one_process_within_one_budget() -> None:
    report = run_quality_bench(DATA, [SPEC], seeds=1, batch_size=128, n_bootstrap=50,
                               runner=partial(run_one_sharded, workers=2))
    two = report.runs[0]
    ones = [run_one(open_dataset(DATA), SPEC, seed, batch_size=128) for seed in (0, 1, 2)]
    one = ones[0]
    assert np.array_equal(two.metrics.labels, one.metrics.labels)
    boot = bootstrap_auc(one.metrics.labels,
                         np.stack([one.metrics.predictions, two.metrics.predictions]), 200, seed=0)
    lo, hi = np.percentile(boot[:, 1] - boot[:, 0], [2.5, 97.5])
    delta = two.metrics.auc() - one.metrics.auc()
    seed_std = float(np.std([r.metrics.auc() for r in ones], ddof=1))
    print(f"AUC one {one.metrics.auc():.4f} two {two.metrics.auc():.4f} delta {delta:+.4f} "
          f"paired row CI [{lo:+.4f}, {hi:+.4f}] seed std {seed_std:.4f}; bytes one "
          f"{one.memory['total_bytes']} two {two.memory['total_bytes']} shards "
          f"{two.stats['rank0_total_bytes']:.0f} {two.stats['rank1_total_bytes']:.0f}")
    assert one.metrics.auc() > 0.57  # there is something to learn
    # A prune's discrete choices make any two trajectories part (two ranks sum a step's
    # gradients in another order): the sharded run is one more draw of the training noise, so
    # its AUC must lie within the seed-to-seed spread of one process, not within the rows' CI.
    assert abs(delta) <= 2 * seed_std, (delta, seed_std, lo, hi)
    # one global budget: the shards together hold what one process holds
    shards = [two.stats["rank0_total_bytes"], two.stats["rank1_total_bytes"]]
    assert sum(shards) == two.memory["total_bytes"] <= two.stats["budget_bytes"]
    assert abs(two.memory["total_bytes"] / one.memory["total_bytes"] - 1) < 0.05
    assert min(shards) > 0.35 * sum(shards)


def test_bench_quality_passes_workers_on(monkeypatch, tmp_path) -> None:
    seen = {}

    def fake(data, specs, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.update(kw)

    monkeypatch.setattr("services.evaluation.quality_run.bench_quality", fake)
    out = CliRunner().invoke(app, ["bench", "quality", "--data", DATA, "--policies", SPEC,
                                   "--workers", "2", "--no-png", "--out",
                                   str(tmp_path / "r.json")])
    assert out.exit_code == 0, out.output
    assert seen["workers"] == 2
