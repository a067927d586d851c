"""Where a FIITED store's bytes go, per ID, against a fixed-dim row: the per-ID records field by
field (what the budget's accounting counts), then measured on a short training run, then how
much one-byte utilities change the prune step's choice.

    python bench/entry_bytes.py                       # frappe, the first 10,000 rows
    python bench/entry_bytes.py --rows 20000 --data movielens:PATH/movielens-1m-users3000plus

1. Field by field: the head record every ID has and what each live chunk adds at each position
   (StoreConfig.head_fields / chunk_fields), for fiited's default at budget 0.25 and for
   fixed:8, whose row is an entry plus one 8-wide chunk.
2. Measured after training `--rows` rows (DLRM, seed 0): per live ID, the bytes of values,
   optimizer state, head records, extension records and the index table, and values and total
   as % of fixed-64's (the budget's reference: every ID at 64 dims, 280 bytes, plus the index).
   The run uses only the store's public accounting, so the same script measures older trees.
3. The prune step's choice from the trained float16 run's utilities as they are, and from the
   same utilities through the one-byte log code (5 draws of the stochastic rounding): the % of
   chunks whose keep/free decision differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.learner import Learner  # noqa: E402
from models.networks import build_model  # noqa: E402
from models.policies.registry import parse_policy  # noqa: E402
from storage.datasets import open_dataset  # noqa: E402
from storage.settings import get_settings  # noqa: E402
from storage.vhpi.config import fixed_entry_bytes  # noqa: E402

FRAPPE = "frappe:{d}/frappe/frappe.validation.libfm,{d}/frappe/frappe.test.libfm"
SPECS = ("fixed:8", "fixed:16", "fiited:budget=0.25", "fiited:budget=0.5")


def train(data: str, spec: str, rows: int, batch: int):  # -> the trained policy
    settings = get_settings()
    ds = open_dataset(data, settings.data_dir)
    if spec.startswith("fixed:"):  # the network every policy runs (bench/frontier.py's too)
        spec += ",pad=64"
    policy = parse_policy(spec, num_fields=ds.schema.num_fields, seed=0)
    net = build_model("dlrm", ds.schema, dim=policy.dim, seed=0)
    Learner(net, policy).run(ds.batches(batch), max_rows=rows)
    return policy


def field_table(console: Console) -> None:
    from storage.vhpi.config import StoreConfig  # the field lists exist in newer trees only

    if not hasattr(StoreConfig, "head_fields"):
        console.print("(this tree has no StoreConfig.head_fields: part 1 skipped)")
        return
    fiited = StoreConfig(dim=64, widths="4-4-8-16-32", budget=0.25)
    fixed = StoreConfig(dim=8, num_chunks=1, budget=None)
    table = Table(title="1. bytes of one ID's records, field by field")
    for col in ("record", "field", "fiited:budget=0.25", "fixed:8"):
        table.add_column(col)
    hf, ff = fiited.head_fields(), fixed.head_fields()
    for name in dict.fromkeys([*hf, *ff]):
        table.add_row("head", name, str(hf.get(name, "")), str(ff.get(name, "")))
    table.add_row("head", "[b]total[/b]", str(sum(hf.values())), str(sum(ff.values())))
    widths = fiited.chunk_widths()
    table.add_row("per live chunk, positions 0..K-1", "values + row-wise Adagrad state",
                  " / ".join(str(4 * (w + 1)) for w in widths), str(4 * (8 + 1)))
    for name, per_position in fiited.chunk_fields().items():
        table.add_row("per live chunk, positions 0..K-1", name,
                      " / ".join(str(b) for b in per_position), "")
    table.add_row("index", "table slot (int32 at load 0.35-0.7)", "5.7-11.4", "5.7-11.4")
    console.print(table)


def measured_table(console: Console, data: str, rows: int, batch: int) -> None:
    table = Table(title=f"2. measured per live ID after {rows:,} rows of {data.split(':')[0]}")
    for col in ("policy", "IDs", "values", "optimizer", "head records", "links / ext. records",
                "index", "total", "values % of fixed-64", "total % of fixed-64"):
        table.add_column(col, justify="right")
    for spec in SPECS:
        store = train(data, spec, rows, batch).store
        m = store.memory()
        n = m["live_ids"]
        head = n * store.entry_bytes()
        ext = m["metadata_bytes"] - head  # chunk links (older trees: extension records)
        total = m["value_bytes"] + m["optimizer_bytes"] + m["metadata_bytes"] + m["index_bytes"]
        reference = n * fixed_entry_bytes(64, store.config.optimizer) + m["index_bytes"]
        table.add_row(spec, f"{n:,}", *(f"{b / n:.1f}" for b in (
            m["value_bytes"], m["optimizer_bytes"], head, ext, m["index_bytes"], total)),
            f"{100 * m['value_bytes'] / (n * 64 * 4):.1f}%", f"{100 * total / reference:.1f}%")
    console.print(table)


def agreement_table(console: Console, data: str, rows: int, batch: int) -> None:
    from storage.vhpi import utility_codes

    table = Table(title="3. the prune step's choice: float16 utilities vs one-byte log codes "
                        "(the same utilities, 5 roundings)")
    for col in ("budget", "chunks kept", "decisions that differ", "IDs whose length differs"):
        table.add_column(col, justify="right")
    for budget in (0.25, 0.5):
        store = train(data, f"fiited:budget={budget},utility_code=float16", rows, batch).store
        slots = store.live_slots()
        u = store.utilities(slots)
        keep = store.chunks_to_keep(slots, u)
        diff, length = [], []
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            k8 = store.chunks_to_keep(slots, utility_codes.decode(utility_codes.encode(u, gen)))
            diff.append(float((k8 != keep).float().mean()))
            length.append(float((k8.sum(1) != keep.sum(1)).float().mean()))
        table.add_row(f"{budget:g}", f"{int(keep.sum()):,} of {keep.numel():,}",
                      f"{100 * np.mean(diff):.2f}% (max {100 * max(diff):.2f}%)",
                      f"{100 * np.mean(length):.2f}%")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="a data-set spec (default: frappe)")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data or FRAPPE.format(d=get_settings().shared_data_dir)
    batch = max(32, min(256, args.rows // 400))  # as bench/frontier.py sizes it
    console = Console(width=200)
    field_table(console)
    measured_table(console, data, args.rows, batch)
    from storage.vhpi.config import StoreConfig

    if "utility_code" in StoreConfig.__dataclass_fields__:
        agreement_table(console, data, args.rows, batch)


if __name__ == "__main__":
    main()
