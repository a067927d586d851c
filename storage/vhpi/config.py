"""Configuration of the chunk store and the byte sizes its budget is computed from."""

from __future__ import annotations

from dataclasses import dataclass

_ENTRY_BASE_BYTES = 8 + 2 + 1 + 4 + 2 + 2 + 1  # key, field, alive, head address, count, last, dirty
INDEX_ALLOWANCE = 12  # index-table bytes per entry at the lowest load the table runs at


@dataclass
class StoreConfig:
    dim: int = 64  # D: padded embedding width
    num_chunks: int = 8  # K (ignored when `widths` is given)
    widths: str | None = None  # chunk widths, e.g. "4-4-8-16-32" (sum = dim); default D/K each
    optimizer: str = "rowwise_adagrad"  # or "adagrad"
    lr: float = 0.05
    eps: float = 1e-8
    init_std: float = 0.01  # new IDs start uniform with this std, a function of (seed, field, ID)
    seed: int = 0
    budget: float | None = None  # fraction of fixed-D total bytes for the same IDs; None: all
    gamma: float = 0.99
    interval: int = 50  # prune / regrow every this many steps
    keep_first: bool = True  # an admitted ID's first chunk goes before any other chunk
    prefix: bool = True  # live chunks form a prefix of the K positions
    normalize: str = "field"  # "field": utilities relative to their (field, position) mean
    freq_power: float = 1.0  # u += a**freq_power * ||g||; the paper's rule is 1
    hysteresis: float = 0.0  # a pruned chunk must out-score a live one by this factor
    cost_power: float = 2.0  # score / (chunk bytes / first chunk's bytes)**p; 0: cost-blind
    min_count: int = 1  # accesses before an ID gets chunks (until then it reads zeros)
    sketch_width: int = 0  # >0: count not-yet-admitted IDs in a count-min sketch, not entries
    sketch_depth: int = 4
    sketch_decay_every: int = 10  # halve the sketch every this many maintenance epochs
    init_chunks: int | None = None  # chunks a new ID starts with; default: what its share pays
    evict_after: int | None = None  # evict entries not trained for this many steps
    max_entries: int | None = None  # evict the lowest-utility entries past this many
    initial_capacity: int = 1024

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
        if self.budget is not None and not 0 < self.budget <= 1:
            raise ValueError(f"budget must be in (0, 1], got {self.budget}")
        if self.normalize not in ("field", "none"):
            raise ValueError(f"normalize must be 'field' or 'none', got {self.normalize!r}")
        if self.budget is not None:
            # An ID's own record and index slot are paid before any chunk; a budget that does
            # not cover them cannot be held.
            meta = entry_bytes(self.num_chunks, True) + INDEX_ALLOWANCE
            fixed = fixed_entry_bytes(self.dim, self.optimizer)
            if meta >= self.budget * fixed:
                raise ValueError(
                    f"budget {self.budget:g} of fixed-{self.dim} is {self.budget * fixed:.0f} "
                    f"bytes per ID, but an ID's entry and index slot alone take {meta}; "
                    "use a larger budget (or min_count/max_entries to store fewer IDs)"
                )


def entry_bytes(num_chunks: int, tracks_utility: bool) -> int:
    """Bytes of one entry's head record."""
    head_utils = min(num_chunks, 2) if tracks_utility else 0
    return _ENTRY_BASE_BYTES + (4 if num_chunks > 1 else 0) + 2 * head_utils


def fixed_entry_bytes(dim: int, optimizer: str) -> int:
    """What one ID costs in a fixed-dim store of width `dim` (K = 1, same optimizer), without
    the index table: the reference a budget is a fraction of."""
    state = dim if optimizer == "adagrad" else 1
    return 4 * (dim + state) + entry_bytes(1, False)
