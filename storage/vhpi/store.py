"""The FIITED chunk store: per-ID embeddings split into K chunks that are pruned and regrown
during training against a memory budget.

The hash index maps (field, raw ID) to an entry slot; the entry table (entries.py) holds each
entry's chunk addresses, utilities and counters, and the chunk pools. Chunk j is `widths[j]`
floats, so first chunks can be narrower than later ones. Utilities follow
u <- gamma * u + a * ||g|| for every chunk every step, stored as u * gamma^-(t - t0) so that
decaying the untouched ones costs nothing but one rescale of all of them every `interval` steps.

Training step, as the trainer drives it:

    emb, ctx = store.lookup(ids, train=True)     # int64[B, F] -> float32[B, F, D]
    ... loss.backward() on a model of emb ...
    store.apply_gradients(ctx, emb_grad)         # utilities, Adagrad on live chunks, schedule

Every array is a torch tensor on `config.device` (cpu or cuda), the hash index included, and
every operation is batched torch ops on it (on the CPU the index probes small batches in numpy
over the same memory, device_index.py says why). Slots and results are tensors on that device
(a method taking slots also takes numpy); an admission sketch stays on the host. A snapshot is
CPU numpy arrays in one .npz whatever the device: a GPU store's loads on the CPU, bit-exactly.

What a policy may do beyond that, all by slot (int64[N], from a context or `live_slots()`):

    store.addresses(slots)  int64[N, K]    store.utilities(slots)  float32[N, K]
    store.counts(slots)     int32[N]       store.gather(slots)     float32[N, D]
    store.resize(slots, n)                 entries keep exactly their first n chunks
    store.import_entries(fields, keys, counts, values) -> slots   (a hot start)
    store.seed_utilities(slots, u)         utilities as of now, e.g. from chunk_norms(values)

Memory is bounded: past `config.entry_limit()` entries (by default derived from
`config.max_bytes`, see storage/vhpi/config.py) a train lookup evicts the least useful entries
not in its batch, down to 1/16 below the limit, so the O(entries) ranking runs once per
limit/16 new IDs, not once per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from storage.vhpi import kernels
from storage.vhpi.admission import FrequencySketch
from storage.vhpi.chunk_pool import ChunkPool
from storage.vhpi.config import StoreConfig
from storage.vhpi.device_index import DeviceHashIndex, mix64_t
from storage.vhpi.entries import EntryTable
from storage.vhpi.hash_index import mix64
from storage.vhpi.initial_values import initial_values
from storage.vhpi.maintenance import StoreMaintenance
from storage.vhpi.reducer import LOCAL
from storage.vhpi.snapshot import Snapshot, read_snapshot, write_snapshot


@dataclass
class LookupContext:
    """What a train lookup hands to apply_gradients (tensors on the store's device)."""

    unique: torch.Tensor  # int64[U] entry slots in the batch (-1 first: IDs not admitted)
    inverse: torch.Tensor  # int64[B*F] position of each (row, field) in `unique`
    counts: torch.Tensor  # int64[U] accesses of each unique entry in this step
    addresses: torch.Tensor  # int64[U, K] chunk addresses at lookup time


class ChunkStore(StoreMaintenance):
    # Adagrad on every row of a batch, pruned chunks with a zero gradient on the null chunk
    # (no selection of the live ones, which is a host sync on a GPU). None: on a GPU only.
    masked_updates: bool | None = None

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.device = dev = torch.device(config.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device cuda: torch sees no CUDA device here")
        self.widths = config.chunk_widths()
        self.K = len(self.widths)
        self.offsets = np.concatenate([[0], np.cumsum(self.widths)]).astype(np.int64)
        self._segments = torch.zeros(config.dim, self.K, device=dev)  # dimension d in chunk k
        for j in range(self.K):
            self._segments[self.offsets[j] : self.offsets[j + 1], j] = 1.0
        self.tracks_utility = config.budget is not None
        # kernels.py: one launch a gather / an update (ValueError where they cannot run)
        self.fused = config.kernels == "triton" and kernels.require(dev)
        self.entry_limit = config.entry_limit()
        self.index = DeviceHashIndex(config.initial_capacity, device=dev, fused=self.fused)
        self.entries = EntryTable(
            self.widths, config.optimizer, config.head_utilities(), self.index.entry_capacity,
            config.initial_capacity, dev, utility_code=config.utility_code,
            count_max=config.count_max(), keep_last=config.keeps_last(), seed=config.seed)
        # utilities round by a hash of the entry's (field, ID): shards round as one store
        self.entries.row_keys = lambda s: mix64_t(self.index.fields[s], self.index.keys[s])
        self._deleted: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.step = 0
        self.util_origin = 0  # t0: the step the stored utilities are scaled to
        self.epoch = 0  # maintenance epochs so far (mod 2^16 in `last`)
        self.unseen_lookups = 0  # lookups (not training) of IDs the store does not hold
        self.prunes = 0
        self.prune_seconds = 0.0
        self.reducer = LOCAL  # a sharded model's shards share one budget through a global one
        self._gen = torch.Generator(device=dev)
        self._gen.manual_seed(config.seed)
        self.sketch = (
            FrequencySketch(config.sketch_width, config.sketch_depth)
            if config.sketch_width and config.min_count > 1
            else None
        )

    @property
    def pools(self) -> list[ChunkPool]:
        """The K chunk pools (pool j holds every chunk at position j)."""
        return self.entries.pools

    # ---- what a policy reads and writes, by entry slot -----------------------------------
    def addresses(self, slots: object) -> torch.Tensor:
        """Chunk addresses: int[N] slots -> int64[N, K], -1 = pruned."""
        return self.entries.addresses(self._slots(slots))

    def counts(self, slots: object) -> torch.Tensor:
        """Training accesses seen (saturating at config.count_max()): int[N] -> int32[N]."""
        return self.entries.count[self._slots(slots)]

    def gather(self, slots: object, addr: torch.Tensor | None = None) -> torch.Tensor:
        """float32[N, D] embeddings of entry slots int[N] (-1, or a pruned chunk: zeros);
        with `addr` int[N, K], of those chunk addresses instead."""
        return self.entries.gather(self._slots(slots), addr)

    def resize(self, slots: object, n_chunks: object) -> int:
        """Give entries exactly their first n chunks: int[N], int[N] in 1..K -> number of
        entries changed. Chunks past n are freed (their memory goes back to the pool), missing
        ones are allocated with the ID's initial values (the values a new ID starts with); an
        entry not admitted yet (fewer than min_count accesses) keeps none."""
        slots = self._slots(slots)
        if slots.numel() == 0:
            return 0
        n = torch.as_tensor(n_chunks, device=self.device).long()
        n = torch.where(self.entries.count[slots] >= self.config.min_count, n, 0)
        return self.entries.resize(
            slots, n, lambda grow: self._initial_values(grow, self.config.dim))

    def import_entries(self, fields: object, keys: object, counts: object,
                       values: torch.Tensor) -> torch.Tensor:
        """Entries from elsewhere (a hot start): int16[N] fields, int64[N] keys, access counts
        int[N] and float32[N, D] values, written into all K chunks (an entry already held is
        overwritten) -> int64[N] slots. Goes around the entry limit: call
        `enforce_entry_limit` after (once their utilities are seeded)."""
        slots, inserted = self.index.get_or_insert(fields, keys)
        self.entries.grow(self.index.entry_capacity)
        self.entries.reset(slots[inserted], 0)
        self.entries.fill(slots, values.to(self.device))
        self.entries.count[slots] = torch.as_tensor(
            np.asarray(counts, dtype=np.int64) if not isinstance(counts, torch.Tensor)
            else counts, device=self.device).clamp(max=self.entries.count_max).to(torch.int32)
        if self.entries.keep_last:
            self.entries.last[slots] = self.epoch & 0xFFFF
        self.entries.dirty[slots] = True
        return slots

    def chunk_norms(self, values: torch.Tensor) -> torch.Tensor:
        """L2 norm of each chunk of embeddings: float32[N, D] -> float32[N, K]."""
        values = values.to(self.device)
        return torch.sqrt((values * values) @ self._segments)

    def seed_utilities(self, slots: object, u: object) -> None:
        """Set utilities float32[N, K] as of the current step (they decay from here on); a
        no-op without a budget (no utilities are kept)."""
        if not self.tracks_utility:
            return
        scale = np.float32(self.config.gamma) ** np.float32(-(self.step - self.util_origin))
        u = torch.as_tensor(u, device=self.device).float()
        scaled = u * torch.tensor(scale, device=self.device)
        self.entries.store_utilities(self._slots(slots), scaled)

    # ---- lookup ------------------------------------------------------------------------
    def lookup(
        self, ids: object, train: bool = False
    ) -> tuple[torch.Tensor, LookupContext | None]:
        """int64[B, F] (numpy or a tensor) -> float32[B, F, D] zero-padded embeddings on the
        store's device (pruned chunks read zeros).

        With train=True unseen IDs get entries (and, once admitted, chunks within the budget),
        access counts grow, and the returned context goes to `apply_gradients`."""
        ids = torch.as_tensor(ids, device=self.device).long()
        B, F = ids.shape
        fields = torch.arange(F, dtype=torch.int16, device=self.device).expand(B, F).reshape(-1)
        emb, ctx = self.lookup_keys(fields, ids.reshape(-1), train=train)
        return emb.reshape(B, F, self.config.dim), ctx

    def lookup_keys(
        self, fields: torch.Tensor, keys: torch.Tensor, train: bool = False
    ) -> tuple[torch.Tensor, LookupContext | None]:
        """`lookup` of N (field, raw ID) pairs: int16[N], int64[N] -> float32[N, D]. A sharded
        layer calls it with the pairs other ranks sent to this shard's owner;
        `apply_gradients` then takes a float32[N, D] gradient."""
        fields = torch.as_tensor(fields, device=self.device).to(torch.int16)
        keys = torch.as_tensor(keys, device=self.device).long()
        if not train:
            slots = self.index.lookup(fields, keys)
            self.unseen_lookups += int((slots < 0).sum())
            uniq, inverse = torch.unique(slots, return_inverse=True)
            return self._rows_of(uniq, inverse), None

        e = self.entries
        held = (self.index.num_entries, self.index.tombstones)  # before inserts: _agree_step
        if self.sketch is None:
            slots, inserted = self.index.get_or_insert(fields, keys)
            e.grow(self.index.entry_capacity)
            if self.index.inserted_any:  # a host flag: no sync to find there is nothing new
                e.reset(torch.unique(slots[inserted]), 0)
        else:
            slots = self._sketch_admission(fields, keys)
        uniq, inverse, counts = torch.unique(slots, return_inverse=True, return_counts=True)
        self.enforce_entry_limit(protect=uniq[uniq >= 0])
        known = uniq >= 0
        counts = torch.where(known, counts, 0)  # IDs the sketch has not admitted read zeros
        uniq_ok = uniq.clamp(min=0)
        before = e.count.index_select(0, uniq_ok).long()
        after = (before + counts).clamp(max=e.count_max).to(torch.int32)
        if self.sketch is not None:  # without a sketch every ID is known: no mask needed
            kn, after = uniq[known], after[known]
        else:
            kn = uniq
        e.count.index_copy_(0, kn, after)
        if e.keep_last:
            e.last.index_fill_(0, kn, self.epoch & 0xFFFF)
        mc = self.config.min_count
        crossed = known & (before < mc) & (before + counts >= mc)
        # Admitted IDs the budget had no room for at first get their first chunk once there is
        # room (crossing ones are the first _admit's: it gives each a chunk or uses the room up)
        waiting = (known & ~crossed & (e.count.index_select(0, uniq_ok) >= mc)
                   & (e.head_addr.index_select(0, uniq_ok) < 0)
                   if self.config.budget is not None and self.config.keep_first else None)
        any_crossed, any_waiting = torch.stack(  # one host sync for both
            [crossed.any(), waiting.any() if waiting is not None else crossed.new_zeros(())]
        ).tolist()
        if self.reducer.is_global:  # the shards size their tables and admit together
            any_crossed, any_waiting = self._agree_step(held, any_crossed, any_waiting)
        if any_crossed:
            self._admit(uniq[crossed])
        if any_waiting:
            self._admit(uniq[waiting], max_chunks=1)
        addr = torch.where(known[:, None], self.entries.addresses(uniq_ok), -1)
        return self._rows_of(uniq, inverse, addr), LookupContext(uniq, inverse, counts, addr)

    def _rows_of(self, uniq: torch.Tensor, inverse: torch.Tensor,
                 addr: torch.Tensor | None = None) -> torch.Tensor:
        """float32[N, D]: row n holds entry uniq[inverse[n]] (-1: zeros), read at `addr`."""
        if not self.fused:
            return torch.nn.functional.embedding(inverse, self.gather(uniq, addr))
        if addr is None:
            addr = torch.where((uniq >= 0)[:, None], self.addresses(uniq.clamp(min=0)), -1)
        return kernels.gather(self.pools, addr, inverse)

    def _sketch_admission(self, fields: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Entry slots of (field, key) pairs, -1 for IDs not admitted yet. A missing ID is
        counted in the sketch (on the host), and gets an entry once seen min_count times."""
        slots = self.index.lookup(fields, keys)
        miss = torch.nonzero(slots < 0).squeeze(1)
        if miss.numel() == 0:
            return slots
        mf, mk = fields[miss].cpu().numpy(), keys[miss].cpu().numpy()
        _, first, inv, cnt = np.unique(
            mix64(mf, mk), return_index=True, return_inverse=True, return_counts=True
        )
        uf, uk = mf[first], mk[first]
        assert self.sketch is not None
        est = self.sketch.add(uf, uk, cnt)
        ok = est >= self.config.min_count
        got = np.full(first.size, -1, dtype=np.int64)
        if ok.any():
            new, _ = self.index.get_or_insert(uf[ok], uk[ok])
            self.entries.grow(self.index.entry_capacity)
            start = np.minimum(est[ok] - cnt[ok], self.entries.count_max)
            self.entries.reset(new, torch.from_numpy(start).to(self.device))
            got[ok] = new.cpu().numpy()
        slots[miss] = torch.from_numpy(got[inv.ravel()]).to(self.device)
        return slots

    def _initial_values(self, slots: torch.Tensor, width: int) -> torch.Tensor:
        """The first `width` initial values of entries: int64[N] -> float32[N, width]."""
        c = self.config
        return initial_values(self.index.fields[slots], self.index.keys[slots], c.seed, width,
                              c.init_std)

    # ---- backward ----------------------------------------------------------------------
    def apply_gradients(self, ctx: LookupContext, grad: torch.Tensor) -> None:
        """float32[B, F, D] gradient of the looked-up embeddings -> utilities of every chunk
        (live or pruned), Adagrad on live chunks; then the prune / evict schedule."""
        c = self.config
        U = ctx.unique.numel()
        g = torch.zeros(U, c.dim, device=self.device)
        g.index_add_(0, ctx.inverse, grad.reshape(-1, c.dim).to(self.device))
        self.step += 1
        self.entries.seed_rounding(c.seed, self.step)  # a saved store continues identically
        unique, counts, addr = ctx.unique, ctx.counts, ctx.addresses
        # Rows of IDs not admitted (only a sketch leaves any): nothing to update.
        if self.sketch is not None and U and int(unique[0]) < 0:
            unique, counts, addr, g = unique[1:], counts[1:], addr[1:], g[1:]
        if self.fused:  # Adagrad on the live chunks and the chunk norms, one kernel
            norms = kernels.adagrad(self.pools, g, addr, c.lr, c.eps, self.tracks_utility)
        elif self.tracks_utility:  # per-chunk L2 norms in one matmul: (g*g) @ segment-indicator
            norms = torch.sqrt((g * g) @ self._segments)
        if self.tracks_utility:
            a = counts.float()
            if c.freq_power != 1.0:
                a = a**c.freq_power
            # u_t = gamma u_{t-1} + a g for every chunk  <=>  v_t = v_{t-1} + a g gamma^-(t-t0)
            scale = np.float32(c.gamma) ** np.float32(-(self.step - self.util_origin))
            a = a * torch.tensor(scale, device=self.device)
            v = self.entries.stored_utilities(unique) + a[:, None] * norms
            self.entries.store_utilities(unique, v)
        live = addr >= 0  # a prune step can only run after this update
        parts = g.split(self.widths, dim=1)
        masked = self.device.type != "cpu" if self.masked_updates is None else self.masked_updates
        for j, pool in enumerate(self.pools if not self.fused else ()):
            if masked:  # every row, pruned ones on the null chunk with a zero gradient: no sync
                pool.adagrad_step_masked(addr[:, j], parts[j], live[:, j], c.lr, c.eps)
            elif (on := torch.nonzero(live[:, j]).squeeze(1)).numel():  # the live rows alone
                pool.adagrad_step(addr[:, j].index_select(0, on),
                                  parts[j].index_select(0, on), c.lr, c.eps)
        # dirty |= has a live chunk (unique slots are distinct: no write races)
        dirty = self.entries.dirty
        dirty.index_copy_(0, unique, dirty.index_select(0, unique) | live.any(dim=1))
        if self.step % c.interval == 0:
            self.maintain()
        elif self._over_budget():
            # The index table grew and took room from the chunks: shed the least useful ones
            # now, so the budget holds after every step. (With no live chunk there is nothing
            # to shed: the fixed costs alone, e.g. a large admission sketch on a young store,
            # are over the budget, and new IDs get no chunk until it has room.)
            self.prune_regrow()


    # ---- snapshot ----------------------------------------------------------------------
    _COUNTERS = ("step", "util_origin", "epoch", "unseen_lookups", "prunes")

    def save(self, path: str | Path) -> None:
        """Write the whole store to one .npz file of CPU arrays, atomically (temp file, fsync,
        rename). The file does not depend on the device."""
        sketch = self.sketch.table if self.sketch is not None else None
        counters = {k: getattr(self, k) for k in self._COUNTERS}
        write_snapshot(Path(path), Snapshot(self.config, counters, self.index.state(),
                                            self.entries.state(), sketch))

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> ChunkStore:
        """A store exactly as `save` wrote it, on `device` (default: the saved config's)."""
        snap = read_snapshot(Path(path), cls._COUNTERS)
        config = snap.config if device is None else snap.config.on(device)
        store = cls(config)
        store.index = DeviceHashIndex.from_state(snap.index, device=store.device, fused=store.fused)
        store.entries.load_state(snap.entries)
        if store.sketch is not None:
            store.sketch.table = np.array(snap.sketch)
        for key, value in snap.counters.items():
            setattr(store, key, value)
        return store
