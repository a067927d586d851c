"""Where an ID's chunks past the first are: each live chunk holds the address of the next one.

An ID's live chunks are always a prefix of its K positions (the prune step keeps prefixes,
allocation.py), so the entry's head record holds chunk 0's address and every live chunk at
position j < K-1 holds chunk j+1's (-1: the ID's last live chunk). An ID pays 4 bytes a live
chunk instead of an extension record of K-1 addresses plus a pointer to it (the layout before:
an ID with chunks 0 and 1 at K = 5 paid 8 + 16 bytes of addresses, now 8), and an ID with no
chunk pays none. Utilities of positions H..K-1 (tail_utilities="extension": those an ID keeps
only while it has a chunk past its first) live beside chunk 1, indexed by its address.

    links = ChunkLinks(K=5, tail_utilities=3, util_dtype=torch.uint8, device="cpu")
    links.follow(pools)                       # rows for every pool address (after an alloc)
    links.addresses(head_addr)                # int64[N] chunk 0 -> int64[N, K], -1 = pruned
    links.write(addr, old_first)              # int64[N, K] prefixes (rows of changed entries)

Arrays (torch, on the device; indexed by the address in that position's pool):
    next{j}    int32[capacity of pool j]      address of chunk j+1, j = 0..K-2
    tail_util  [capacity of pool 1, K-H]      utilities of positions H..K-1, utility dtype
"""

from __future__ import annotations

import numpy as np
import torch

from storage.vhpi.chunk_pool import ChunkPool

ADDRESS_BYTES = 4


class ChunkLinks:
    def __init__(self, K: int, tail_utilities: int, util_dtype: torch.dtype,
                 device: torch.device) -> None:
        self.K, self.device, self.util_dtype = K, device, util_dtype
        self.tail = tail_utilities if K > 1 else 0
        self.next = [torch.full((0,), -1, dtype=torch.int32, device=device)
                     for _ in range(K - 1)]
        self.tail_util = torch.zeros((0, self.tail), dtype=util_dtype, device=device)

    # ---- sizes ---------------------------------------------------------------------------
    def follow(self, pools: list[ChunkPool]) -> None:
        """A row for every address of pools 0..K-2 (they grow in alloc; new rows: -1, 0)."""
        for j, t in enumerate(self.next):
            cap = pools[j].capacity
            if t.shape[0] < cap:
                self.next[j] = torch.cat([t, t.new_full((cap - t.shape[0],), -1)])
        if self.tail and self.tail_util.shape[0] < pools[1].capacity:
            more = pools[1].capacity - self.tail_util.shape[0]
            self.tail_util = torch.cat([self.tail_util, self.tail_util.new_zeros(more, self.tail)])

    def position_bytes(self, utility_bytes: int) -> np.ndarray:
        """float64[K]: bytes a live chunk at each position holds here (its link, and at
        position 1 the tail utilities)."""
        out = np.zeros(self.K, dtype=np.float64)
        out[: self.K - 1] += ADDRESS_BYTES
        if self.tail:
            out[1] += self.tail * utility_bytes
        return out

    def allocated_bytes(self) -> int:
        arrays = [*self.next, self.tail_util]
        return int(sum(t.numel() * t.element_size() for t in arrays))

    # ---- reading and writing -------------------------------------------------------------
    def addresses(self, head: torch.Tensor) -> torch.Tensor:
        """int64[N] chunk 0 addresses -> int64[N, K], following the links (-1 past the last)."""
        cols = [head]
        a = head
        for t in self.next:
            a = torch.where(a >= 0, t.index_select(0, a.clamp(min=0)).long(), -1)
            cols.append(a)
        return torch.stack(cols, dim=1)

    def write(self, addr: torch.Tensor, old_first: torch.Tensor | None) -> None:
        """Link entries laid out as int64[N, K] prefixes (-1 from some position on). Rows of
        chunk 1 that are new to their entry (not `old_first` int64[N], its chunk 1 before)
        start with no tail utilities."""
        for j, t in enumerate(self.next):
            live = addr[:, j] >= 0
            t.index_put_((addr[:, j].clamp(min=0)[live],), addr[:, j + 1][live].to(torch.int32))
        if self.tail and self.K > 1:
            new = addr[:, 1] >= 0
            if old_first is not None:
                new &= addr[:, 1] != old_first
            self.tail_util.index_fill_(0, addr[new, 1], 0)

    def tail_utilities(self, first: torch.Tensor) -> torch.Tensor:
        """Stored tail utilities of entries whose chunk 1 is at `first` int64[N] (-1: none,
        reads 0) -> float-castable [N, K-H] in the utility dtype."""
        got = self.tail_util.index_select(0, first.clamp(min=0))
        return torch.where((first >= 0)[:, None], got, torch.zeros((), dtype=got.dtype,
                                                                     device=got.device))

    def store_tail(self, first: torch.Tensor, v: torch.Tensor) -> None:
        """Tail utilities [N, K-H] (utility dtype) of entries with chunk 1 at `first`."""
        has = first >= 0
        self.tail_util.index_put_((first[has],), v[has])

    # ---- snapshot ------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        arrays = {f"next{j}": t.cpu().numpy() for j, t in enumerate(self.next)}
        return arrays | {"tail_util": self.tail_util.cpu().numpy()}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        for j in range(len(self.next)):
            self.next[j] = torch.from_numpy(np.array(arrays[f"next{j}"])).to(self.device)
        if "tail_util" in arrays:  # (a K = 1 snapshot of the record layout has none)
            self.tail_util = torch.from_numpy(np.array(arrays["tail_util"])).to(self.device)


def addresses_of_records(arrays: dict[str, np.ndarray], K: int) -> np.ndarray:
    """int64[E, K] chunk addresses of every entry slot of a snapshot in the layout before the
    links (head_addr, ext, ext_addr: an extension record of chunks 1..K-1 per ID that had any).
    Raises ValueError where an entry's live chunks are not a prefix (a store saved with
    prefix=false): links cannot hold that."""
    head = np.asarray(arrays["head_addr"], dtype=np.int64)
    addr = np.full((head.size, K), -1, dtype=np.int64)
    addr[:, 0] = head
    if K > 1:
        ext = np.asarray(arrays["ext"], dtype=np.int64)
        rec = np.asarray(arrays["ext_addr"], dtype=np.int64).reshape(-1, K - 1)
        has = ext >= 0
        addr[has, 1:] = rec[ext[has]]
    live = addr >= 0
    if (live[:, 1:] & ~live[:, :-1]).any():
        raise ValueError("this snapshot holds IDs whose live chunks are not a prefix (saved "
                         "with prefix=false): the store now links each chunk to the next and "
                         "cannot load it")
    return addr
