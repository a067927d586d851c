"""Your own data: `table:PATH,label=...,fields=a|b,dense=x,time=ts` on a CSV and a Parquet
file (rows from the Yidian sample in ../shared/data, written here in both formats), read by
the reader, `chunkrec data info` and `chunkrec bench quality`; every bad spec or value is one
line naming the file and the column. Values are checked against the frame itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from services.cli import app
from storage.batch import hash_values
from storage.datasets import DatasetError, open_dataset

YIDIAN = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "yidian-news-sample" \
    / "yidian_news_sampled.csv"
COLS = "label=click,fields=userId|itemId|OS|city,dense=age0|female,time=ts"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    if YIDIAN.is_file():
        df = pd.read_csv(YIDIAN, dtype={"userId": str, "itemId": str}).head(600)
    else:  # a fresh clone without ../shared: a frame of the same shape
        rng = np.random.default_rng(0)
        df = pd.DataFrame({"userId": rng.integers(0, 50, 600).astype(str),
                           "itemId": rng.integers(0, 200, 600).astype(str),
                           "OS": rng.choice(["Android", "iOS"], 600),
                           "city": rng.choice(["a", "b", None], 600),
                           "age0": rng.random(600), "female": rng.random(600),
                           "click": rng.integers(0, 2, 600),
                           "showTime": rng.integers(0, 10**12, 600)})
    df = df[["userId", "itemId", "OS", "city", "age0", "female", "click", "showTime"]].copy()
    df["ts"] = df["showTime"] // 1000
    # shuffle so that the time order is the reader's work, not the file's
    return df.sample(frac=1.0, random_state=1).reset_index(drop=True)


@pytest.fixture(params=["csv", "parquet"])
def table_file(request: pytest.FixtureRequest, frame: pd.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / f"clicks.{request.param}"
    if request.param == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def test_rows_in_time_order_with_the_values_of_the_file(table_file: Path,
                                                        frame: pd.DataFrame) -> None:
    ds = open_dataset(f"table:{table_file},{COLS}")
    assert ds.schema.fields == ("userId", "itemId", "OS", "city")
    assert ds.schema.dense == ("age0", "female") and len(ds) == len(frame)  # type: ignore[arg-type]
    batches = list(ds.batches(128))
    assert [len(b) for b in batches] == [128, 128, 128, 128, 88]
    ts = np.concatenate([b.timestamps for b in batches])
    assert (np.diff(ts) >= 0).all()
    want = frame.iloc[np.argsort(frame["ts"].to_numpy(), kind="stable")]
    np.testing.assert_array_equal(ts, want["ts"].to_numpy())
    ids = np.concatenate([b.ids for b in batches])
    np.testing.assert_array_equal(ids[:, 0], hash_values(want["userId"].astype(str)))
    np.testing.assert_array_equal(ids[:, 2], hash_values(want["OS"].astype(str)))
    dense = np.concatenate([b.dense for b in batches])
    np.testing.assert_allclose(dense[:, 1], want["female"].fillna(0).to_numpy(), rtol=1e-6)
    labels = np.concatenate([b.labels for b in batches])
    np.testing.assert_array_equal(labels, want["click"].to_numpy(dtype=np.float32))
    units = np.concatenate([b.unit_ids for b in batches])
    np.testing.assert_array_equal(units, ids[:, 0])  # the first field by default


def test_data_info_and_bench_quality_take_it(table_file: Path, tmp_path: Path,
                                             frame: pd.DataFrame) -> None:
    spec = f"table:{table_file},{COLS}"
    info = CliRunner().invoke(app, ["data", "info", spec, "--no-progress"])
    assert info.exit_code == 0, info.output
    assert f"rows        {len(frame):,}" in info.stdout
    assert f"clicks      {int(frame['click'].sum()):,}" in info.stdout
    out = tmp_path / "q.json"
    bench = CliRunner().invoke(app, ["bench", "quality", "--data", spec, "--policies",
                                     "fixed:8", "--seeds", "1", "--bootstrap", "10",
                                     "--out", str(out), "--no-png", "--no-progress",
                                     "--batch-size", "64"])
    assert bench.exit_code == 0, bench.output
    assert '"rows": 600' in out.read_text()


@pytest.mark.parametrize(("params", "named"), [
    ("label=clik,fields=userId", "'clik'"),
    ("fields=userId", "label=COLUMN is required"),
    ("label=click", "fields=A|B"),
    ("label=click,fields=userId,colour=red", "colour=red"),
    ("label=click,fields=userId,dense=OS", "'OS'"),       # text in a dense column
    ("label=OS,fields=userId", "not a 0/1 label"),
])
def test_a_bad_spec_or_value_is_one_line(table_file: Path, params: str, named: str) -> None:
    with pytest.raises(DatasetError) as caught:
        open_dataset(f"table:{table_file},{params}")
    message = str(caught.value)
    assert named in message and "\n" not in message and str(table_file) in message


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "info", f"table:{tmp_path}/no.csv,{COLS}"])
    assert result.exit_code != 0 and "file not found" in result.output
