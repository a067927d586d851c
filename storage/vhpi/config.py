"""Configuration of the chunk store, the byte sizes its budget is computed from, and the entry
limit that bounds its memory.

    config = StoreConfig(dim=64, widths="4-4-8-16-32", budget=0.25)   # fiited's default shape
    config.entry_limit()        # -> 7_354_396: at most this many IDs held (512 MiB / 73 bytes)

Every field is validated when the config is made (a pydantic dataclass: bounds, finite floats,
choices, no unknown fields), so a bad policy parameter fails at start with its name.

Bounded memory by default (`max_bytes`, 512 MiB unless set; `max_bytes=None` turns it off):
the store holds at most

    entry_limit = max_bytes // (the most bytes one ID may take)

entries, where one ID may take
  - with a budget: budget x (a fixed-D entry + an index slot), its share of the budget
    (budget 0.25 of fixed-64 with rowwise Adagrad: 0.25 x (280 + 12) = 73 bytes);
  - without one (fixed:d, dml, amtl): every chunk with its optimizer state, its entry and
    extension records and an index slot (fixed:64: 280 + 12 = 292 bytes).
So the measured bytes (MemoryReport.total_bytes) stay within max_bytes; arrays grown ahead of
use (index 1.5x, pools 1.25x) can take up to about half as much again. `max_entries` sets the
limit directly instead. Past the limit the least useful entries (lowest summed utility; without
utilities the fewest accesses, then the longest unseen) are evicted, and exported as deleted so
that serving's Redis shrinks too. At 512 MiB: fixed:64 holds 1.8M IDs, fiited (budget 0.25)
7.3M, dml 1.6M, amtl 1.6M, above every vocabulary the benchmarks use (synthetic: 8 x 100k).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

from pydantic import ByteSize, ConfigDict, Field
from pydantic.dataclasses import dataclass

_ENTRY_BASE_BYTES = 8 + 2 + 1 + 4 + 2 + 2 + 1  # key, field, alive, head address, count, last, dirty
INDEX_ALLOWANCE = 12  # index-table bytes per entry at the lowest load the table runs at
DEFAULT_MAX_BYTES = ByteSize(512 << 20)

Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]


@dataclass(config=ConfigDict(extra="forbid", allow_inf_nan=False))
class StoreConfig:
    dim: Positive = 64  # D: padded embedding width
    num_chunks: Annotated[int, Field(ge=1, le=32)] = 8  # K (ignored when `widths` is given)
    # chunk widths, e.g. "4-4-8-16-32" (sum = dim); default D/K each
    widths: Annotated[str, Field(pattern=r"^\d+([-/]\d+)*$")] | None = None
    optimizer: Literal["rowwise_adagrad", "adagrad"] = "rowwise_adagrad"
    lr: Annotated[float, Field(gt=0)] = 0.05
    eps: Annotated[float, Field(gt=0)] = 1e-8
    # new IDs start uniform with this std, a function of (seed, field, ID)
    init_std: Annotated[float, Field(ge=0)] = 0.01
    seed: NonNegative = 0
    # fraction of fixed-D total bytes for the same IDs; None: all
    budget: Annotated[float, Field(gt=0, le=1)] | None = None
    gamma: Annotated[float, Field(ge=0, le=1)] = 0.99
    interval: Positive = 50  # prune / regrow every this many steps
    keep_first: bool = True  # an admitted ID's first chunk goes before any other chunk
    prefix: bool = True  # live chunks form a prefix of the K positions
    # "field": utilities relative to their (field, position) mean
    normalize: Literal["field", "none"] = "field"
    freq_power: Annotated[float, Field(ge=0)] = 1.0  # u += a**freq_power * ||g||; paper: 1
    hysteresis: Annotated[float, Field(ge=0)] = 0.0  # a pruned chunk must out-score a live one
    # where the utilities of chunks 2..K-1 live: "extension": only in extension records (an
    # ID without one, i.e. with chunk 1 pruned, keeps none there); "all": in every ID's head
    # record, as the paper has it (2(K-2) bytes an ID more). The default is what the
    # leave-one-data-set-out protocol chose (README, "leave one data set out").
    tail_utilities: Literal["all", "extension"] = "extension"
    cost_power: Annotated[float, Field(ge=0)] = 2.0  # score / (bytes / first's)**p; 0: blind
    # accesses before an ID gets chunks (until then it reads zeros); counts saturate at 65535
    min_count: Annotated[int, Field(ge=1, le=65535)] = 1
    sketch_width: NonNegative = 0  # >0: count not-yet-admitted IDs in a count-min sketch
    sketch_depth: Positive = 4
    sketch_decay_every: Positive = 10  # halve the sketch every this many maintenance epochs
    init_chunks: Positive | None = None  # chunks a new ID starts with; default: what it pays
    evict_after: Positive | None = None  # evict entries not trained for this many steps
    max_entries: Positive | None = None  # entry limit; default: from max_bytes (see above)
    max_bytes: Annotated[ByteSize, Field(gt=0)] | None = DEFAULT_MAX_BYTES  # None: no limit
    initial_capacity: Positive = 1024
    device: Literal["cpu", "cuda"] = "cpu"  # where every array of the store lives
    # the chunked gather and Adagrad: torch ops, or one fused Triton kernel each (kernels.py;
    # a CUDA device, or the CPU under TRITON_INTERPRET=1)
    kernels: Literal["torch", "triton"] = "torch"

    def on(self, device: str) -> StoreConfig:
        """This config with the store on `device` ("cpu" or "cuda")."""
        return StoreConfig(**{**asdict(self), "device": device})

    def chunk_widths(self) -> tuple[int, ...]:
        if self.widths:
            return tuple(int(w) for w in str(self.widths).replace("/", "-").split("-"))
        return (self.dim // self.num_chunks,) * self.num_chunks

    def __post_init__(self) -> None:
        if self.widths:
            w = self.chunk_widths()
            if sum(w) != self.dim or min(w) <= 0:
                raise ValueError(f"widths {self.widths} must be positive and sum to dim {self.dim}")
            self.num_chunks = len(w)
        elif self.dim % self.num_chunks:
            raise ValueError(f"dim {self.dim} is not a multiple of K={self.num_chunks}")
        if self.num_chunks > 32:
            raise ValueError("at most 32 chunks (a chunk mask is 32 bits)")
        if self.budget is not None:
            # An ID's own record and index slot are paid before any chunk; a budget that does
            # not cover them cannot be held.
            meta = entry_bytes(self.num_chunks, self.head_utilities()) + INDEX_ALLOWANCE
            fixed = fixed_entry_bytes(self.dim, self.optimizer)
            if meta >= self.budget * fixed:
                raise ValueError(
                    f"budget {self.budget:g} of fixed-{self.dim} is {self.budget * fixed:.0f} "
                    f"bytes per ID, but an ID's entry and index slot alone take {meta}; "
                    "use a larger budget (or min_count/max_entries to store fewer IDs)"
                )

    def id_bytes(self) -> float:
        """The most bytes one ID may take (see module docstring): its share of the budget, or
        without a budget all its chunks, records and index slot."""
        if self.budget is not None:
            return self.budget * (fixed_entry_bytes(self.dim, self.optimizer) + INDEX_ALLOWANCE)
        widths = self.chunk_widths()
        chunks = sum(4 * (w + (w if self.optimizer == "adagrad" else 1)) for w in widths)
        ext_record = 4 * (len(widths) - 1)  # chunk addresses 1..K-1, no utilities
        return chunks + entry_bytes(len(widths), 0) + ext_record + INDEX_ALLOWANCE

    def head_utilities(self) -> int:
        """Utilities in an ID's head record: none without a budget (nothing is pruned), all K
        with tail_utilities="all", else those of chunks 0 and 1."""
        if self.budget is None:
            return 0
        return self.num_chunks if self.tail_utilities == "all" else min(self.num_chunks, 2)

    def entry_limit(self) -> int | None:
        """Entries the store may hold: `max_entries`, else max_bytes // id_bytes(), else
        None (no limit)."""
        if self.max_entries is not None:
            return self.max_entries
        if self.max_bytes is None:
            return None
        return max(1, int(self.max_bytes // self.id_bytes()))


def entry_bytes(num_chunks: int, head_utilities: int) -> int:
    """Bytes of one entry's head record holding `head_utilities` float16 utilities."""
    return _ENTRY_BASE_BYTES + (4 if num_chunks > 1 else 0) + 2 * head_utilities


def fixed_entry_bytes(dim: int, optimizer: str) -> int:
    """What one ID costs in a fixed-D store of width `dim` (K = 1, same optimizer), without
    the index table: the reference a budget is a fraction of."""
    state = dim if optimizer == "adagrad" else 1
    return 4 * (dim + state) + entry_bytes(1, 0)
