"""Reading speed of each data-set reader: rows/s over the shared sample data sets.

    python bench/read_speed.py [--batch-size 1024] [--repeat 3] [--scale 40]

Each data set is read end to end `--repeat` times (best time kept), in batches of
`--batch-size`. The shared samples are small (at most 4 MB), so their numbers include the
per-file start-up; the `xN` rows read a file made of N copies of a sample, which shows the
steady-state rate of the block reader on a large file. MovieLens-100k is included when cached
(`chunkrec data fetch movielens-100k`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from storage.datasets import DatasetError, open_dataset
from storage.settings import get_settings

SHARED_SETS = [
    ("criteo", "criteo-kaggle-train-head/criteo_train_rows_1-3000.csv"),
    ("criteo", "criteo-terabyte-day0-sample/criteoTab.csv"),
    ("criteo", "criteo-kaggle-test-sample/test.tiny.csv"),
    ("criteo", "criteo-kaggle-random-sample/criteo_sample.no_holdout.txt"),
    ("avazu", "avazu-sample/train.csv"),
    ("avazu", "avazu-sample/dev.csv"),
    ("avazu", "avazu-sample/test.csv"),
    ("frappe", "frappe/frappe.validation.libfm"),
    ("frappe", "frappe/frappe.test.libfm"),
    ("movielens", "movielens-1m-users3000plus"),
    ("yidian", "yidian-news-sample/yidian_news_sampled.csv"),
]
# Samples replicated into one large file: (kind, sample, header lines to drop from copies 2..N)
SCALED_SETS = [
    ("criteo", "criteo-kaggle-train-head/criteo_train_rows_1-3000.csv", 1),
    ("criteo", "criteo-terabyte-day0-sample/criteoTab.csv", 0),
    ("avazu", "avazu-sample/train.csv", 1),
    ("frappe", "frappe/frappe.validation.libfm", 0),
    ("yidian", "yidian-news-sample/yidian_news_sampled.csv", 1),
]


def time_read(spec: str, batch_size: int, repeat: int) -> tuple[int, float]:
    """(rows, best seconds) to open `spec` and read it end to end."""
    best = float("inf")
    rows = 0
    for _ in range(repeat):
        start = time.perf_counter()
        rows = sum(len(b) for b in open_dataset(spec).batches(batch_size))
        best = min(best, time.perf_counter() - start)
    return rows, best


def replicate(src: Path, copies: int, header_lines: int, dst: Path) -> Path:
    """`copies` copies of `src` in one file, keeping only the first copy's header."""
    data = src.read_bytes()
    if not data.endswith(b"\n"):
        data += b"\n"
    body = data.split(b"\n", header_lines)[-1] if header_lines else data
    dst.write_bytes(data + body * (copies - 1))
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=int, default=40, help="copies in the xN rows (0: skip)")
    args = parser.parse_args()
    settings = get_settings()
    root = settings.shared_data_dir

    jobs: list[tuple[str, str]] = []
    for kind, rel in SHARED_SETS:
        if (root / rel).exists():
            jobs.append((f"{kind}:{rel}", f"{kind}:{root / rel}"))
    cache = settings.data_dir / "movielens-100k"
    if (cache / "ratings.parquet").exists():
        jobs.append(("movielens-100k", "movielens-100k"))
    synthetic = "synthetic:events=1000000,fields=26,vocab=1000000,zipf=1.1,seed=0,drift=0.5"
    jobs.append((synthetic, synthetic))

    print(f"batch size {args.batch_size}, best of {args.repeat}; shared data: {root}")
    print(f"{'data set':<62} {'rows':>10} {'seconds':>8} {'rows/s':>11}")
    with tempfile.TemporaryDirectory(prefix="chunkrec-bench-") as tmp:
        if args.scale > 1:
            for kind, rel, header in SCALED_SETS:
                if (root / rel).exists():
                    big = replicate(root / rel, args.scale, header, Path(tmp) / Path(rel).name)
                    jobs.append((f"{kind}:{rel} x{args.scale}", f"{kind}:{big}"))
        for label, spec in jobs:
            try:
                rows, seconds = time_read(spec, args.batch_size, args.repeat)
            except DatasetError as exc:
                print(f"{label:<62} failed: {exc}")
                continue
            print(f"{label:<62} {rows:>10,} {seconds:>8.3f} {rows / seconds:>11,.0f}")


if __name__ == "__main__":
    main()
