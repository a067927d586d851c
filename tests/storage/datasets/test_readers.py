"""The data-set readers against the real samples in ../shared/data (see each SOURCE.md), and
against small broken files written here. Values are checked against an independent plain-Python
parse of the same lines, not against the readers themselves."""

from __future__ import annotations

import csv
import datetime
import gzip
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from services.cli.commands import data as data_commands
from storage.batch import MISSING_ID, SparseBatch, hash_values
from storage.datasets import DatasetError, open_dataset
from storage.datasets import textfile as textfile_module
from storage.datasets.avazu import AvazuDataset
from storage.datasets.criteo import CriteoDataset
from storage.datasets.frappe import FrappeDataset
from storage.datasets.movielens import MovieLensDataset, open_movielens_100k
from storage.datasets.yidian import YidianDataset
from storage.settings import Settings

REPO = Path(__file__).resolve().parents[3]
SHARED = Settings().shared_data_dir


def shared(rel: str) -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data sets not found at {SHARED}")
    path = SHARED / rel
    assert path.exists(), f"{path} is missing from the shared data"
    return path


def h(value: str | int) -> int:
    """The ID hash_values gives one raw value."""
    return int(hash_values(np.array([str(value)], dtype=object))[0])


def read_all(ds, batch_size: int = 1000) -> SparseBatch:
    return SparseBatch.concat(list(ds.batches(batch_size)))


CRITEO_HEAD = "criteo-kaggle-train-head/criteo_train_rows_1-3000.csv"
CRITEO_TB = "criteo-terabyte-day0-sample/criteoTab.csv"
CRITEO_TEST = "criteo-kaggle-test-sample/test.tiny.csv"
CRITEO_RANDOM = "criteo-kaggle-random-sample/criteo_sample.no_holdout.txt"
ML_DIR = "movielens-1m-users3000plus"
ML_RATINGS = "movielens-1m-users3000plus/sample_movielens_rating.users3000plus.dat"
FRAPPE_VAL = "frappe/frappe.validation.libfm"
FRAPPE_TEST = "frappe/frappe.test.libfm"
YIDIAN = "yidian-news-sample/yidian_news_sampled.csv"

# (kind, relative paths, rows, positives) from the SOURCE.md files; movielens positives
# (rating >= 4) counted with awk.
COUNTS = [
    ("criteo", [CRITEO_HEAD], 3000, 633),
    ("criteo", [CRITEO_TB], 1000, 21),
    ("criteo", [CRITEO_TEST], 1999, 0),
    ("criteo", [CRITEO_RANDOM], 181, 42),
    ("avazu", ["avazu-sample/train.csv"], 8087, 1397),
    ("avazu", ["avazu-sample/dev.csv"], 480, 86),
    ("avazu", ["avazu-sample/test.csv"], 432, 80),
    ("frappe", [FRAPPE_VAL], 57722, 19063),
    ("frappe", [FRAPPE_TEST], 28860, 9536),
    ("frappe", [FRAPPE_VAL, FRAPPE_TEST], 86582, 19063 + 9536),
    ("movielens", [ML_DIR], 51419, 29684),
    ("movielens", [ML_RATINGS], 51419, 29684),
    ("yidian", [YIDIAN], 1000, 110),
]


def spec_of(kind: str, rels: list[str]) -> str:
    return f"{kind}:" + ",".join(str(shared(r)) for r in rels)


@pytest.mark.parametrize(
    "kind,rels,rows,positives", COUNTS, ids=[f"{c[0]}:{c[1][-1]}" for c in COUNTS]
)
def test_row_counts_and_positives(kind: str, rels: list[str], rows: int, positives: int) -> None:
    ds = open_dataset(spec_of(kind, rels))
    everything = read_all(ds, 4096)
    assert len(everything) == rows
    assert int(everything.labels.sum()) == positives
    assert set(np.unique(everything.labels)) <= {0.0, 1.0}
    assert everything.ids.shape == (rows, ds.schema.num_fields)
    assert ds.schema.name == kind


@pytest.mark.parametrize(
    "kind,rels,rows", [(c[0], c[1], c[2]) for c in COUNTS[:-1]], ids=[c[1][-1] for c in COUNTS[:-1]]
)
@pytest.mark.parametrize("batch_size", [1, 257, 100_000])
def test_batches_have_exact_size(kind: str, rels: list[str], rows: int, batch_size: int) -> None:
    ds = open_dataset(spec_of(kind, rels))
    sizes = []
    for i, batch in enumerate(ds.batches(batch_size)):
        sizes.append(len(batch))
        if batch_size == 1 and i >= 3000:  # enough to cross a read block; the rest is slow
            break
    if batch_size == 1:
        assert set(sizes) == {1}
        return
    full, last = divmod(rows, batch_size)
    assert sizes == [batch_size] * full + ([last] if last else [])


def test_criteo_head_matches_plain_parse() -> None:
    path = shared(CRITEO_HEAD)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    assert header[0] == "label"
    got = read_all(CriteoDataset(path))
    for r in (0, 1, 1234, 2999):
        row = rows[r]
        assert got.labels[r] == float(row[0])
        expect_dense = [math.log1p(max(float(v), 0.0)) if v else 0.0 for v in row[1:14]]
        np.testing.assert_allclose(got.dense[r], expect_dense, rtol=1e-6)
        expect_ids = [h(v) if v else MISSING_ID for v in row[14:]]
        assert got.ids[r].tolist() == expect_ids
    assert got.ids[0, 0] == h("68fd1e64")  # C1 of the first row (see SOURCE.md)
    assert got.ids[0, 21] == MISSING_ID  # its C22 is empty
    assert got.unit_ids is None and got.timestamps is None
    assert 0.20 < got.labels.mean() < 0.23  # "about 22% positive"


def test_criteo_negative_and_missing_dense_read_zero() -> None:
    got = read_all(CriteoDataset(shared(CRITEO_RANDOM)))
    # Row 2 is `0,,-1,19.0,...`: I1 missing, I2 = -1 -> both 0; I3 = 19 -> log(20).
    np.testing.assert_allclose(got.dense[1, :3], [0.0, 0.0, math.log(20.0)], rtol=1e-6)
    assert (got.dense >= 0).all()


def test_criteo_terabyte_tsv() -> None:
    ds = CriteoDataset(shared(CRITEO_TB))
    assert ds.format == "tsv"
    got = read_all(ds)
    first = shared(CRITEO_TB).read_text().split("\n")[0].split("\t")
    assert got.labels[0] == 1.0 and first[0] == "1"
    assert got.dense[0, 0] == pytest.approx(math.log(6.0))  # I1 = 5
    assert got.ids[0, 0] == h("62770d79")
    assert got.ids[0].tolist() == [h(v) if v else MISSING_ID for v in first[14:]]


def test_criteo_kaggle_test_drops_id() -> None:
    ds = CriteoDataset(shared(CRITEO_TEST))
    assert ds.format == "kaggle-test"
    got = read_all(ds)
    assert got.ids.shape == (1999, 26) and got.dense.shape == (1999, 13)
    assert not got.labels.any()
    # First row: Id 60000000, I1 empty, I2 = 29, C1 = 5a9ed9b0, C6 empty.
    assert got.dense[0, 0] == 0.0 and got.dense[0, 1] == pytest.approx(math.log(30.0))
    assert got.ids[0, 0] == h("5a9ed9b0") and got.ids[0, 5] == MISSING_ID
    assert h("60000000") not in got.ids[0]


def test_avazu_values() -> None:
    path = shared("avazu-sample/train.csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    ds = AvazuDataset(path)
    got = read_all(ds)
    assert ds.schema.fields[0] == "hour" and "id" not in ds.schema.fields
    assert "click" not in ds.schema.fields and ds.schema.num_fields == 22
    assert (got.timestamps == 1413849600).all()  # 14102100 = 2014-10-21 00:00 UTC
    for r in (0, 4000, 8086):
        row = dict(zip(header, rows[r], strict=True))
        assert got.labels[r] == float(row["click"])
        assert got.ids[r, 0] == h("0")  # hour of day
        assert got.ids[r, 1:].tolist() == [h(row[c]) for c in ds.schema.fields[1:]]
        if row["device_id"] == "a99f214a":
            user = f"ip:{row['device_ip']}/{row['device_model']}"
        else:
            user = f"id:{row['device_id']}"
        assert got.unit_ids[r] == h(user)


def test_avazu_headerless_and_gzip_read_the_same(tmp_path: Path) -> None:
    dev = shared("avazu-sample/dev.csv")
    plain = read_all(AvazuDataset(dev))
    packed = tmp_path / "dev.csv.gz"
    packed.write_bytes(gzip.compress(dev.read_bytes()))
    zipped = read_all(open_dataset(f"avazu:{packed}"))
    np.testing.assert_array_equal(plain.ids, zipped.ids)
    np.testing.assert_array_equal(plain.unit_ids, zipped.unit_ids)
    with_header = tmp_path / "dev_header.csv"
    header = shared("avazu-sample/train.csv").read_text().split("\n")[0]
    with_header.write_text(header + "\n" + dev.read_text())
    np.testing.assert_array_equal(plain.ids, read_all(AvazuDataset(with_header)).ids)


def test_avazu_timestamps_and_hour_field(tmp_path: Path) -> None:
    line = shared("avazu-sample/dev.csv").read_text().split("\n")[0].split(",")
    lines = []
    for hour in ("14102100", "14102913", "14103023"):
        lines.append(",".join([line[0], line[1], hour, *line[3:]]))
    path = tmp_path / "hours.csv"
    path.write_text("\n".join(lines) + "\n")
    got = read_all(AvazuDataset(path))
    utc = datetime.UTC
    expect = [
        datetime.datetime(2014, 10, 21, 0, tzinfo=utc),
        datetime.datetime(2014, 10, 29, 13, tzinfo=utc),
        datetime.datetime(2014, 10, 30, 23, tzinfo=utc),
    ]
    assert got.timestamps.tolist() == [int(t.timestamp()) for t in expect]
    assert got.ids[:, 0].tolist() == [h("0"), h("13"), h("23")]


def test_frappe_values() -> None:
    got = read_all(FrappeDataset([shared(FRAPPE_VAL), shared(FRAPPE_TEST)]))
    # validation line 1: `1 266:1 1244:1 5042:1 5049:1 5054:1 5055:1 5058:1 5062:1 5074:1 5149:1`
    assert got.labels[0] == 1.0
    assert got.ids[0].tolist() == [266, 1244, 5042, 5049, 5054, 5055, 5058, 5062, 5074, 5149]
    assert got.unit_ids[0] == 266
    # test line 1 (row 57,722 of the joint stream): `-1 204:1 4798:1 ...`
    assert got.labels[57722] == 0.0 and got.ids[57722, :2].tolist() == [204, 4798]
    # each field owns its own index range (SOURCE.md: user 0..954, city 5149..5381)
    assert got.ids[:, 0].max() < got.ids[:, 1].min()
    assert (np.diff(got.ids, axis=1) > 0).all()


def test_yidian_values() -> None:
    path = shared(YIDIAN)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    assert header[:4] == ["", "userId", "itemId", "showTime"]
    got = read_all(YidianDataset(path), 333)
    columns = ["userId", "itemId", "network", "refresh", "showPos", "deviceName", "OS"]
    columns += ["province", "city"]
    for r in (0, 1, 500, 999):
        row = dict(zip(header, rows[r], strict=True))
        assert got.labels[r] == float(row["click"])
        assert got.ids[r].tolist() == [h(row[c]) for c in columns]
        assert got.unit_ids[r] == h(row["userId"])
        assert got.timestamps[r] == int(row["showTime"]) // 1000
        dense = [float(row[c]) for c in ("age0", "age1", "age2", "age3", "female", "male")]
        np.testing.assert_allclose(got.dense[r], dense, rtol=1e-6)
    # first row (SOURCE.md): user 1000014754, item 463510256, Android, 江西 / 南昌, not clicked
    assert got.ids[0, 0] == h("1000014754") and got.ids[0, 1] == h("463510256")
    assert got.ids[0, 7] == h("江西") and got.ids[0, 8] == h("南昌")
    assert got.timestamps[0] == 1624843756 and got.labels[0] == 0.0
    assert len(np.unique(got.ids[:, 1])) == 979  # item ids, counted with pandas


def test_yidian_malformed(tmp_path: Path) -> None:
    lines = shared(YIDIAN).read_text(encoding="utf-8").split("\n")[:6]
    path = tmp_path / "y.csv"
    bad = lines[3].split(",")
    bad[7] = "2"  # click
    path.write_text("\n".join([*lines[:3], ",".join(bad)]) + "\n")
    assert error_of(f"yidian:{path}") == f"yidian:{path}: line 4: click is not 0 or 1"
    path.write_text("\n".join(lines[:3] + [lines[3] + ",9"]) + "\n")
    assert error_of(f"yidian:{path}") == f"yidian:{path}: line 4 has 19 fields, expected 18"
    path.write_text("\n".join(["a,b,c"] + lines[1:3]) + "\n")
    assert "header is 'a,b,c'" in error_of(f"yidian:{path}")


def test_movielens_directory_picks_the_rating_file() -> None:
    ds = MovieLensDataset(shared(ML_DIR))
    assert ds.ratings_path.name == "sample_movielens_rating.users3000plus.dat"
    assert ds.side_files["users"].name == "users.dat"
    assert ds.side_files["movies"].name == "movies.dat"


def test_movielens_values_and_time_order() -> None:
    got = read_all(MovieLensDataset(shared(ML_DIR)), 4096)
    lines = shared(ML_RATINGS).read_text().split()
    ratings = [tuple(int(v) for v in line.split("::")) for line in lines]
    by_time = sorted(ratings, key=lambda r: r[3])  # Python's sort is stable too
    assert got.timestamps.tolist() == [r[3] for r in by_time]
    assert got.unit_ids.tolist() == [r[0] for r in by_time]
    assert got.labels.tolist() == [float(r[2] >= 4) for r in by_time]
    assert got.ids[:, 1].tolist()[:50] == [h(r[1]) for r in by_time[:50]]
    # `3116::260::5::969465180`: user 3116 (users.dat: F, 25, 0, 94114... read below),
    # movie 260 = Star Wars: Episode IV, genres Action|Adventure|Fantasy|Sci-Fi.
    users = {
        u[0]: u
        for u in (line.split("::") for line in shared(f"{ML_DIR}/users.dat").read_text().split())
    }
    row = int(np.flatnonzero((got.unit_ids == 3116) & (got.timestamps == 969465180))[0])
    _, gender, age, occupation, zipcode = users["3116"]
    assert got.ids[row].tolist() == [
        h(3116),
        h(260),
        h(gender),
        h(age),
        h(occupation),
        h(zipcode),
        h("Action"),
    ]
    assert got.labels[row] == 1.0


def test_movielens_without_side_files_reads_missing(tmp_path: Path) -> None:
    ratings = tmp_path / "my_ratings.dat.gz"
    ratings.write_bytes(gzip.compress(b"7::10::4::100\n8::11::2::50\n"))
    ds = MovieLensDataset(tmp_path)
    assert ds.ratings_path == ratings and ds.side_files == {"users": None, "movies": None}
    got = read_all(ds)
    assert got.timestamps.tolist() == [50, 100]
    assert got.labels.tolist() == [0.0, 1.0]
    assert got.ids[:, 0].tolist() == [h(8), h(7)]
    assert (got.ids[:, 2:] == MISSING_ID).all()


def test_reading_in_tiny_blocks_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines cut across read blocks, the header in the first one, CRLF endings (frappe)."""
    frappe_head = tmp_path / "frappe_head.libfm"
    with open(shared(FRAPPE_TEST), "rb") as f:
        frappe_head.write_bytes(b"".join(f.readline() for _ in range(1500)))
    assert b"\r\n" in frappe_head.read_bytes()
    specs = [
        spec_of("criteo", [CRITEO_RANDOM]),
        spec_of("criteo", [CRITEO_TB]),
        spec_of("avazu", ["avazu-sample/dev.csv"]),
        f"frappe:{frappe_head}",
    ]
    normal = [read_all(open_dataset(s)) for s in specs]
    monkeypatch.setattr(textfile_module, "BLOCK_BYTES", 2500)
    for spec, want in zip(specs, normal, strict=True):
        got = read_all(open_dataset(spec))
        assert len(got) == len(want) > 100
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.labels, want.labels)
        if want.dense is not None:
            np.testing.assert_array_equal(got.dense, want.dense)


# --- broken inputs -------------------------------------------------------------------------


def criteo_line(label: str = "0", n_dense: int = 13, n_cat: int = 26) -> str:
    return "\t".join([label, *["3"] * n_dense, *["abcd1234"] * n_cat])


def error_of(spec: str, batch_size: int = 64) -> str:
    with pytest.raises(DatasetError) as info:
        for _ in open_dataset(spec).batches(batch_size):
            pass
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_and_empty_files(tmp_path: Path) -> None:
    for kind in ("criteo", "avazu", "frappe", "movielens", "yidian"):
        message = error_of(f"{kind}:{tmp_path / 'nope.txt'}")
        assert message.startswith(f"{kind}:{tmp_path / 'nope.txt'}: no such file")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    for kind in ("criteo", "avazu", "frappe", "movielens", "yidian"):
        assert error_of(f"{kind}:{empty}") == f"{kind}:{empty}: file is empty"
    header_only = tmp_path / "header.csv"
    header_only.write_text(shared(CRITEO_HEAD).read_text().split("\n")[0] + "\n")
    assert error_of(f"criteo:{header_only}") == f"criteo:{header_only}: no data rows"


def test_bad_specs() -> None:
    with pytest.raises(DatasetError, match="unknown data set kind 'parquet'"):
        open_dataset("parquet:/x")
    with pytest.raises(DatasetError, match="missing PATH"):
        open_dataset("criteo:")
    with pytest.raises(ValueError, match="batch_size must be positive"):
        CriteoDataset(shared(CRITEO_TB)).batches(0)


def test_criteo_malformed_lines_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "day_0"
    lines = [criteo_line() for _ in range(600)]
    lines[2] = criteo_line(n_cat=15)  # line 3: 29 fields
    path.write_text("\n".join(lines) + "\n")
    assert error_of(f"criteo:{path}") == f"criteo:{path}: line 3 has 29 fields, expected 40"

    lines[2] = criteo_line()
    lines[499] = lines[499].replace("\t3\t", "\tabc\t", 1)  # line 500: I1 is not a number
    path.write_text("\n".join(lines) + "\n")
    assert error_of(f"criteo:{path}") == f"criteo:{path}: line 500: I1 'abc' is not a valid number"

    lines[499] = criteo_line(label="2")
    path.write_text("\n".join(lines) + "\n")
    assert error_of(f"criteo:{path}") == f"criteo:{path}: line 500: label is not 0 or 1"

    path.write_text("just some text\n")
    assert "unrecognised first line" in error_of(f"criteo:{path}")


def test_line_numbers_survive_block_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(textfile_module, "BLOCK_BYTES", 4096)
    path = tmp_path / "with_blanks.tsv"
    lines = [criteo_line() for _ in range(900)]
    lines[100] = ""  # blank lines are skipped but still counted
    lines[877] = criteo_line(n_dense=12)
    path.write_text("\n".join(lines) + "\n")
    assert error_of(f"criteo:{path}") == f"criteo:{path}: line 878 has 39 fields, expected 40"


def test_avazu_malformed(tmp_path: Path) -> None:
    good = shared("avazu-sample/dev.csv").read_text().split("\n")[:5]
    path = tmp_path / "a.csv"
    path.write_text("\n".join([*good[:3], good[3].replace(",14102100,", ",141021,")]) + "\n")
    assert error_of(f"avazu:{path}") == f"avazu:{path}: line 4: hour is not YYMMDDHH"
    path.write_text("\n".join([*good[:1], good[1] + ",extra"]) + "\n")
    assert error_of(f"avazu:{path}") == f"avazu:{path}: line 2 has 25 fields, expected 24"
    path.write_text("id,click,when\n1,0,3\n")
    assert "header has columns" in error_of(f"avazu:{path}")


def test_frappe_malformed(tmp_path: Path) -> None:
    good = "1 1:1 2:1 3:1 4:1 5:1 6:1 7:1 8:1 9:1 10:1"
    path = tmp_path / "f.libfm"
    path.write_text(f"{good}\n{good.rsplit(' ', 1)[0]}\n")
    assert error_of(f"frappe:{path}") == f"frappe:{path}: line 2 has 9 features, expected 10"
    path.write_text(f"{good}\n{good.replace('1 1:1', '2 1:1', 1)}\n")
    assert error_of(f"frappe:{path}") == f"frappe:{path}: line 2: label is not 1, -1 or 0"
    path.write_text(f"{good}\n{good.replace('5:1', '5:0.5')}\n")
    assert "line 2: a feature value is not 1" in error_of(f"frappe:{path}")
    path.write_text(f"{good} \n")  # a trailing space is tolerated
    assert read_all(FrappeDataset(path)).ids.tolist() == [list(range(1, 11))]


def test_movielens_malformed(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::2::5::100\n1::2::5\n")
    message = error_of(f"movielens:{tmp_path}")
    assert (
        message
        == f"movielens:{tmp_path / 'ratings.dat'}: line 2 has 3 '::'-separated fields, expected 4"
    )
    (tmp_path / "ratings.dat").write_text("1::2::5::100\n1::x::5::100\n")
    assert error_of(f"movielens:{tmp_path}").endswith("line 2: item 'x' is not a valid number")
    (tmp_path / "ratings.dat").write_text("1::2::5::100\n")
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n1::M::1::10::48067\n")
    assert (
        error_of(f"movielens:{tmp_path}")
        == f"movielens:{tmp_path / 'users.dat'}: id 1 is listed twice"
    )
    (tmp_path / "ratings.dat").unlink()
    assert error_of(f"movielens:{tmp_path}").endswith(
        "no ratings.dat[.gz] or *rating* file in directory"
    )
    (tmp_path / "a_ratings.dat").write_text("1::2::5::100\n")
    (tmp_path / "b_ratings.dat").write_text("1::2::5::100\n")
    assert "several *rating* files (a_ratings.dat, b_ratings.dat)" in error_of(
        f"movielens:{tmp_path}"
    )
    (tmp_path / "b_ratings.dat").write_text("1,2,5,100\n")
    assert "expected UserID::MovieID::Rating::Timestamp" in error_of(
        f"movielens:{tmp_path / 'b_ratings.dat'}"
    )


def test_movielens_100k_cache_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="run `chunkrec data fetch movielens-100k`"):
        open_movielens_100k(data_dir=tmp_path)


# --- commands -------------------------------------------------------------------------------


def test_fetch_movielens_100k(tmp_path: Path) -> None:
    env = {**os.environ, "CHUNKREC_DATA_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "services.cli", "data", "fetch", "movielens-100k"]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert f"cached in {tmp_path / 'movielens-100k'}" in first.stdout
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already cached" in again.stdout

    ds = open_movielens_100k(data_dir=tmp_path)
    got = read_all(ds, 4096)
    assert ds.schema.fields == MovieLensDataset(shared(ML_DIR)).schema.fields
    assert len(got) == 100_000
    assert int(got.labels.sum()) == 55_375  # ML-100k: 34,174 fours + 21,201 fives
    assert np.unique(got.unit_ids).size == 943
    assert (np.diff(got.timestamps) >= 0).all()
    assert (got.ids != MISSING_ID).all()  # every user and movie has side information
    # u.data line 1: `196 242 3 881250949`; u.user 196: 49, M, writer, 55105;
    # movie 242 (Kolya, 1996): Comedy.
    row = int(np.flatnonzero((got.unit_ids == 196) & (got.timestamps == 881250949))[0])
    assert got.ids[row].tolist() == [
        h(196),
        h(242),
        h("M"),
        h(49),
        h("writer"),
        h("55105"),
        h("Comedy"),
    ]
    assert got.labels[row] == 0.0


def test_data_info_command() -> None:
    runner = CliRunner()
    result = runner.invoke(data_commands.app, ["info", spec_of("avazu", ["avazu-sample/dev.csv"])])
    assert result.exit_code == 0, result.output
    assert "rows        480" in result.output
    assert "clicks      86" in result.output
    assert "ctr         0.1792" in result.output
    bad = runner.invoke(data_commands.app, ["info", "criteo:/does/not/exist.txt"])
    assert bad.exit_code == 1
    assert "criteo:/does/not/exist.txt: no such file" in bad.output
