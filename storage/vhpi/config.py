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
  - without one (fixed:d, dml, amtl): every chunk with its optimizer state and link to the
    next chunk, its entry record and an index slot (fixed:64: 280 + 12 = 292 bytes).
So the measured bytes (MemoryReport.total_bytes) stay within max_bytes; arrays grown ahead of
use (index 1.5x, pools 1.25x) can take up to about half as much again. `max_entries` sets the
limit directly instead. Past the limit the least useful entries (lowest summed utility; without
utilities the fewest accesses, then the longest unseen) are evicted, and exported as deleted so
that serving's Redis shrinks too. At 512 MiB: fixed:64 holds 1.8M IDs, fiited (budget 0.25)
7.3M, dml 1.6M, amtl 1.7M, above every vocabulary the benchmarks use (synthetic: 8 x 100k).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

from pydantic import ByteSize, ConfigDict, Field
from pydantic.dataclasses import dataclass

_ENTRY_BASE_BYTES = 8 + 2 + 1 + 4 + 1  # key, field, alive, chunk 0's address, dirty
COUNT_MAX_BUDGET = 255  # a budgeted store's access counts are one byte
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
    # live chunks form a prefix of the K positions; always (the entry table links each live
    # chunk to the next, chunk_links.py): False is refused
    prefix: bool = True
    # "field": utilities relative to their (field, position) mean
    normalize: Literal["field", "none"] = "field"
    freq_power: Annotated[float, Field(ge=0)] = 1.0  # u += a**freq_power * ||g||; paper: 1
    hysteresis: Annotated[float, Field(ge=0)] = 0.0  # a pruned chunk must out-score a live one
    # where the utilities of chunks 2..K-1 live: "extension": beside chunk 1 (an ID with
    # chunk 1 pruned keeps none; the name is from the extension records they lived in before);
    # "all": in every ID's head record, as the paper has it ((K-2) x utility_bytes an ID
    # more). The default is what the
    # leave-one-data-set-out protocol chose (README, "leave one data set out").
    tail_utilities: Literal["all", "extension"] = "extension"
    # how a utility is stored: "log8", one byte (a log code, stochastically rounded,
    # utility_codes.py); "float16", two (the layout of snapshots from before it)
    utility_code: Literal["log8", "float16"] = "log8"
    cost_power: Annotated[float, Field(ge=0)] = 2.0  # score / (bytes / first's)**p; 0: blind
    # accesses before an ID gets chunks (until then it reads zeros); counts saturate at 65535,
    # with a budget at 255 (one byte: the count only decides admission there)
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
        if not self.prefix and self.num_chunks > 1:
            raise ValueError("prefix=false is not supported: the store links each live chunk "
                             "to the next, so an ID's live chunks are always its first ones")
        if self.budget is not None and self.min_count > COUNT_MAX_BUDGET:
            raise ValueError(f"min_count {self.min_count} > {COUNT_MAX_BUDGET}: with a budget "
                             f"an access count is one byte and saturates at {COUNT_MAX_BUDGET}")
        if self.budget is not None:
            # An ID's own record and index slot are paid before any chunk; a budget that does
            # not cover them cannot be held.
            meta = self.entry_bytes() + INDEX_ALLOWANCE
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
        links = 4 * (len(widths) - 1)  # chunk j's link to chunk j+1, no utilities
        return chunks + self.entry_bytes() + links + INDEX_ALLOWANCE

    def head_utilities(self) -> int:
        """Utilities in an ID's head record: none without a budget (nothing is pruned), all K
        with tail_utilities="all", else those of chunks 0 and 1."""
        if self.budget is None:
            return 0
        return self.num_chunks if self.tail_utilities == "all" else min(self.num_chunks, 2)

    def utility_bytes(self) -> int:
        """Bytes of one stored utility."""
        return 1 if self.utility_code == "log8" else 2

    def count_max(self) -> int:
        """Where an access count saturates: 255 with a budget (one byte), else 65535."""
        return COUNT_MAX_BUDGET if self.budget is not None else 65535

    def keeps_last(self) -> bool:
        """Whether entries record the epoch they were last trained in: needed to evict idle
        entries (evict_after) and, without utilities (no budget), to rank entries for
        eviction; a budgeted store without evict_after reads it nowhere and keeps none."""
        return self.budget is None or self.evict_after is not None

    def head_fields(self) -> dict[str, int]:
        """Bytes of one entry's head record, field by field (what the accounting counts)."""
        H = self.head_utilities()
        fields = {"key": 8, "field": 2, "alive": 1, "chunk 0 address": 4}
        fields["count"] = 1 if self.count_max() <= 255 else 2
        if self.keeps_last():
            fields["last"] = 2
        fields["dirty"] = 1
        if H:
            fields[f"utilities 0..{H - 1}"] = H * self.utility_bytes()
        return fields

    def chunk_fields(self) -> dict[str, list[int]]:
        """Bytes one live chunk adds at each position 0..K-1 besides its values and optimizer
        state, field by field: its link to the next chunk (none at the last position) and,
        beside chunk 1, the utilities of positions H..K-1 (chunk_links.py)."""
        K, H = self.num_chunks, self.head_utilities()
        fields = {"link to the next chunk": [4] * (K - 1) + [0]}
        if self.budget is not None and 1 < K and H < K:
            fields[f"utilities {H}..{K - 1}"] = [(K - H) * self.utility_bytes() if j == 1
                                                 else 0 for j in range(K)]
        return fields

    def entry_bytes(self) -> int:
        """Bytes of one entry's head record."""
        return sum(self.head_fields().values())

    def entry_limit(self) -> int | None:
        """Entries the store may hold: `max_entries`, else max_bytes // id_bytes(), else
        None (no limit)."""
        if self.max_entries is not None:
            return self.max_entries
        if self.max_bytes is None:
            return None
        return max(1, int(self.max_bytes // self.id_bytes()))


def entry_bytes(num_chunks: int, head_utilities: int, utility_bytes: int = 2,
                count_bytes: int = 2, last_bytes: int = 2) -> int:
    """Bytes of one entry's head record holding `head_utilities` utilities of `utility_bytes`
    each (StoreConfig.head_fields itemises a store's); `num_chunks` no longer changes it (the
    links to chunks past the first are the chunks', chunk_fields)."""
    return _ENTRY_BASE_BYTES + utility_bytes * head_utilities + count_bytes + last_bytes


def fixed_entry_bytes(dim: int, optimizer: str) -> int:
    """What one ID costs in a fixed-D store of width `dim` (K = 1, same optimizer), without
    the index table: the reference a budget is a fraction of."""
    state = dim if optimizer == "adagrad" else 1
    return 4 * (dim + state) + entry_bytes(1, 0)
