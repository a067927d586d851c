"""`chunkrec bench quality` end to end on a small in-memory stream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import services.evaluation.quality as quality_bench
from services.cli import app
from services.evaluation.quality import split_policies
from storage.batch import DatasetSchema, SparseBatch

KEYS = {
    "policy", "seed", "auc", "logloss", "ne", "embedding_bytes", "value_bytes", "samples_per_s",
    "auc_last30", "delta_auc", "delta_auc_ci", "delta_auc_last30", "delta_auc_last30_ci",
    "memory", "stats",
}


class PlantedDataset:
    """A deterministic stream with a learnable signal, standing in for a reader."""

    def __init__(self, spec: str, n: int = 4000) -> None:
        self.spec = spec
        self.schema = DatasetSchema("planted", fields=("u", "i", "c"), dense=("x",))
        rng = np.random.default_rng(0)
        weight = rng.normal(0, 1.2, (3, 200))
        self.ids = np.minimum(rng.zipf(1.4, (n, 3)) - 1, 199)
        self.dense = rng.normal(size=(n, 1)).astype(np.float32)
        logit = weight[np.arange(3), self.ids].sum(1) + self.dense[:, 0] - 1.0
        self.labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)

    def batches(self, batch_size: int) -> Iterator[SparseBatch]:
        for i in range(0, len(self.labels), batch_size):
            s = slice(i, i + batch_size)
            yield SparseBatch(self.schema, self.labels[s], self.ids[s], self.dense[s])


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(quality_bench, "open_dataset",
                        lambda spec, data_dir=None: PlantedDataset(spec))
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # --threads sets it for the process


def test_split_policies_keeps_parameters_with_their_policy() -> None:
    assert split_policies("fixed:64,fixed:8,fiited:K=8,budget=0.25") == [
        "fixed:64", "fixed:8", "fiited:K=8,budget=0.25",
    ]
    assert split_policies("fiited:K=4,budget=0.5, adaembed:budget=0.25,torch:64,rows=1000") == [
        "fiited:K=4,budget=0.5", "adaembed:budget=0.25", "torch:64,rows=1000",
    ]
    assert split_policies("dml:dim=16,amtl,Fixed:2") == ["dml:dim=16", "amtl", "Fixed:2"]
    assert split_policies("fiited:K=8,dim=64,torch:8") == ["fiited:K=8,dim=64", "torch:8"]
    assert split_policies("") == []


def test_bench_quality_end_to_end(planted: None, tmp_path: Path) -> None:
    out, png = tmp_path / "results.json", tmp_path / "frontier.png"
    result = CliRunner().invoke(
        app,
        ["bench", "quality", "--data", "planted", "--policies", "torch:8,rows=4096",
         "--policy", "torch:4,rows=512", "--seeds", "2", "--out", str(out), "--png", str(png),
         "--batch-size", "128", "--max-rows", "3000", "--bootstrap", "50", "--threads", "1",
         "--model", "mlp"],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert [(r["policy"], r["seed"]) for r in records] == [
        ("torch:8,rows=4096", 0), ("torch:8,rows=4096", 1),
        ("torch:4,rows=512", 0), ("torch:4,rows=512", 1),
    ]
    for r in records:
        assert KEYS <= r.keys()
        assert r["embedding_bytes"] == r["memory"]["total_bytes"] > r["value_bytes"] > 0
        assert r["memory"]["value_bytes"] == r["value_bytes"]
        assert 0.6 < r["auc"] < 1 and 0.6 < r["auc_last30"] < 1  # it learned something
        assert r["stats"]["rows_touched"] > 0
        lo, hi = r["delta_auc_ci"]
        assert lo <= hi
    ref, small = records[0], records[2]
    assert ref["delta_auc"] == 0 and ref["delta_auc_ci"] == [0, 0]
    assert small["delta_auc"] == pytest.approx(small["auc"] - ref["auc"])
    assert small["delta_auc_last30"] == pytest.approx(small["auc_last30"] - ref["auc_last30"])
    lo, hi = small["delta_auc_ci"]
    assert lo < small["delta_auc"] < hi and hi - lo > 1e-4
    assert small["value_bytes"] == 512 * 4 * 4 and ref["value_bytes"] == 4096 * 8 * 4
    assert small["pct_of_base"] == pytest.approx(
        100 * small["embedding_bytes"] / ref["embedding_bytes"]
    )
    assert png.stat().st_size > 1000
    table = result.stdout
    for text in ("torch:8,rows=4096", "torch:4,rows=512", "% of torch:8,rows=4096", "AUC last30",
                 "ΔAUC", "100.0%", "samples/s"):
        assert text in table


def test_reference_option_and_rows_capped(planted: None, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        app,
        ["bench", "quality", "--data", "planted", "--policies", "torch:4,rows=512",
         "--reference", "torch:8,rows=512", "--seeds", "1", "--out", str(out),
         "--max-rows", "1000", "--bootstrap", "20", "--threads", "1", "--model", "dlrm"],
    )
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    # a reference that is not among the policies is run too, and is the zero of ΔAUC
    assert [r["policy"] for r in records] == ["torch:4,rows=512", "torch:8,rows=512"]
    assert records[1]["delta_auc"] == 0 and records[0]["delta_auc"] != 0
    assert all(r["rows"] == 1000 and r["model"] == "dlrm" for r in records)


def test_chunked_policies_run_end_to_end(planted: None, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        app,
        ["bench", "quality", "--data", "planted", "--policies", "fixed:16,fiited:K=4,budget=0.25",
         "--seeds", "1", "--out", str(out), "--max-rows", "2000", "--bootstrap", "20",
         "--threads", "1"],
    )
    assert result.exit_code == 0, result.output
    fixed, fiited = json.loads(out.read_text())
    assert (fixed["policy"], fiited["policy"]) == ("fixed:16", "fiited:K=4,budget=0.25")
    assert fiited["embedding_bytes"] == fiited["memory"]["total_bytes"] > 0
    assert fiited["pct_of_base"] == pytest.approx(
        100 * fiited["embedding_bytes"] / fixed["embedding_bytes"]
    )
    assert 0 < fiited["auc"] < 1 and fiited["stats"]


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "quality", "--data", "nosuch:x", "--policies",
                                 "torch:4", "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 2 and "unknown data set kind" in result.output
    result = runner.invoke(app, ["bench", "quality", "--data", "planted"])
    assert result.exit_code != 0


def test_bad_policy_fails_before_any_run(planted: None, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["bench", "quality", "--data", "planted", "--policies", "torch:4,rows=64",
         "--policy", "magic:3", "--out", str(tmp_path / "r.json")],
    )
    assert result.exit_code == 2
    assert "magic:3" in result.output and "seed 0" not in result.output


def _stderr_lines(result) -> list[str]:  # noqa: ANN001 - click's Result
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_percent_of_fixed64_whatever_the_order(planted: None, tmp_path: Path) -> None:
    """fixed:64 is 100% even when a narrower fixed policy comes first (and is zero-padded to
    64 for the common network); the picture goes next to the JSON; one seed has no spread."""
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        app,
        ["bench", "quality", "--data", "planted", "--policies", "fixed:8,fixed:64",
         "--seeds", "1", "--out", str(out), "--max-rows", "1000", "--bootstrap", "20",
         "--threads", "1", "--no-progress"],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    narrow, full = json.loads(out.read_text())
    assert (narrow["base"], full["base"]) == ("fixed:64", "fixed:64")
    assert full["pct_of_base"] == pytest.approx(100.0)
    assert narrow["pct_of_base"] == pytest.approx(
        100 * narrow["embedding_bytes"] / full["embedding_bytes"]) and narrow["pct_of_base"] < 50
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert "% of fixed-64" in result.stdout and "± n/a" in result.stdout
    assert "± 0.0000" not in result.stdout


@pytest.mark.parametrize(("policies", "named"), [
    ("fixed:64,fixd:64", "fixd:64"),
    ("fixed:64,fixed:abc", "fixed:abc"),
    ("fixed:64,fiited:budgt=0.25", "budgt"),
])
def test_a_policy_typo_is_one_plain_line(planted: None, tmp_path: Path, policies: str,
                                         named: str) -> None:
    result = CliRunner().invoke(app, ["bench", "quality", "--data", "planted", "--policies",
                                      policies, "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 2, result.output
    lines = _stderr_lines(result)
    assert len(lines) == 1 and named in lines[0], lines
    assert "seed 0" not in result.output and not (tmp_path / "r.json").exists()


def test_missing_output_folder_fails_before_the_work(planted: None, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def no_work(*_: object, **__: object) -> None:
        raise AssertionError("the benchmark ran before its outputs were checked")

    monkeypatch.setattr(quality_bench, "run_one", no_work)
    for args in (["--out", str(tmp_path / "nope" / "r.json")],
                 ["--out", str(tmp_path / "r.json"), "--png", str(tmp_path / "no" / "f.png")]):
        result = CliRunner().invoke(app, ["bench", "quality", "--data", "planted",
                                          "--policies", "fixed:8"] + args)
        assert result.exit_code == 2, result.output
        lines = _stderr_lines(result)
        assert len(lines) == 1 and "does not exist" in lines[0], lines


def test_picture_titles_and_ticks() -> None:
    from services.evaluation.frontier_plot import _ticks
    from services.evaluation.quality import dataset_title

    assert dataset_title("frappe:/a/b/frappe.test.libfm") == "frappe · frappe.test.libfm"
    assert dataset_title("movielens-100k") == "movielens-100k"
    ticks = _ticks(12.0, 100.0)
    assert ticks[-1] == 100 and len(ticks) <= 8
    assert [t for t in ticks if t < 30]  # labelled ticks below 30%, not only 100%
