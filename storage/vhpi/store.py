"""The FIITED chunk store: per-ID embeddings split into K chunks that are pruned and regrown
during training against a memory budget.

Entries are a structure of arrays indexed by the hash index's entry slot:

    addr       int32[E, K]    chunk address per position, -1 = pruned (reads zeros)
    util       float16[E, K]  utility per chunk, u <- gamma * u + a * ||g||, kept as
                              u * gamma^-(t - t0) so that decaying every chunk every step
                              costs nothing: one rescale of all of them every `interval` steps
    count      uint16[E]      accesses seen in training, saturating (admission)
    last       uint16[E]      the maintenance epoch (interval steps) it was last trained in

Fixed-dimension stores (no budget) keep no utilities: `util` has width 0 and costs nothing.

Training step, as the trainer drives it:

    emb, ctx = store.lookup(ids, train=True)     # int64[B, F] -> float32[B, F, D]
    ... loss.backward() on a model of emb ...
    store.apply_gradients(ctx, emb_grad)         # utilities, Adagrad on live chunks, schedule

Every `interval` steps `prune_regrow()` ranks chunks by utility and keeps the best ones that
fit the budget: live chunks that fall out are freed, pruned chunks that rise in are re-admitted
at zero with fresh optimizer state. Beyond the paper (each measured in the benchmarks):
utilities are normalised per field (AdaEmbed), an admitted ID always keeps its first chunk,
and live chunks form a prefix (chunk j only lives if chunk j-1 does), so an ID's live
dimensions are always its first n * chunk_dim.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from storage.vhpi.chunk_pool import ChunkPool
from storage.vhpi.hash_index import HashIndex, mix64

_UTIL_MAX = 60000.0  # float16 headroom


@dataclass
class StoreConfig:
    dim: int = 64  # D: padded embedding width
    num_chunks: int = 8  # K
    optimizer: str = "rowwise_adagrad"  # or "adagrad"
    lr: float = 0.05
    eps: float = 1e-8
    init_std: float = 0.01  # new IDs start N(0, init_std^2), a function of (seed, field, ID)
    seed: int = 0
    budget: float | None = None  # fraction of fixed-D total bytes for the same IDs; None: all
    gamma: float = 0.99
    interval: int = 50  # prune / regrow every this many steps
    keep_first: bool = True  # an admitted ID never loses its first chunk
    prefix: bool = True  # live chunks form a prefix of the K positions
    normalize: str = "field"  # "field": utilities relative to their field's mean; "none"
    freq_power: float = 1.0  # u += a**freq_power * ||g||; the paper's rule is 1
    min_count: int = 1  # accesses before an ID gets chunks (until then it reads zeros)
    evict_after: int | None = None  # evict entries not trained for this many steps
    max_entries: int | None = None  # evict the lowest-utility entries past this many
    initial_capacity: int = 1024

    @property
    def chunk_dim(self) -> int:
        return self.dim // self.num_chunks

    def __post_init__(self) -> None:
        if self.dim % self.num_chunks:
            raise ValueError(f"dim {self.dim} is not a multiple of K={self.num_chunks}")
        if self.budget is not None and not 0 < self.budget <= 1:
            raise ValueError(f"budget must be in (0, 1], got {self.budget}")
        if self.normalize not in ("field", "none"):
            raise ValueError(f"normalize must be 'field' or 'none', got {self.normalize!r}")
        if self.budget is not None:
            # Per-ID metadata and index slots (up to ~12 B at the lowest table load) are paid
            # before any chunk; a budget below them cannot be held.
            meta = 8 + 2 + 1 + self.num_chunks * (4 + 2) + 2 + 2 + 12
            fixed = 4 * (self.dim + (self.dim if self.optimizer == "adagrad" else 1)) + 19
            if meta >= self.budget * fixed:
                raise ValueError(
                    f"budget {self.budget:g} of fixed-{self.dim} is {self.budget * fixed:.0f} "
                    f"bytes per ID, but K={self.num_chunks} chunks need {meta} bytes of "
                    "addresses and utilities per ID alone; use fewer chunks or a larger budget"
                )


@dataclass
class LookupContext:
    """What a train lookup hands to apply_gradients: entry slot per (row, field), and the
    unique slots with the inverse map."""

    slots: np.ndarray  # int32[B*F]
    unique: np.ndarray  # int32[U]
    inverse: np.ndarray  # int64[B*F]
    counts: np.ndarray  # int64[U] accesses of each unique entry in this step
    shape: tuple[int, int]


class ChunkStore:
    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.K = config.num_chunks
        self.widths = (config.chunk_dim,) * config.num_chunks
        self.index = HashIndex(initial_capacity=config.initial_capacity)
        self.pool = ChunkPool(
            config.chunk_dim, config.optimizer, initial_capacity=config.initial_capacity
        )
        cap = self.index.entry_capacity
        self.addr = np.full((cap, self.K), -1, dtype=np.int32)
        self.tracks_utility = config.budget is not None
        self.util = np.zeros((cap, self.K if self.tracks_utility else 0), dtype=np.float16)
        self.count = np.zeros(cap, dtype=np.uint16)
        self.last = np.zeros(cap, dtype=np.uint16)
        self.dirty = np.zeros(cap, dtype=bool)  # changed since the last export
        self._deleted: list[tuple[np.ndarray, np.ndarray]] = []  # (fields, keys) evicted
        self.step = 0
        self.util_origin = 0  # t0: the step the stored utilities are scaled to
        self.epoch = 0  # maintenance epochs so far (mod 2^16 in `last`)
        self.unseen_lookups = 0  # serving-side: IDs looked up that the store does not hold
        self.prunes = 0

    # ---- sizes and accounting ----------------------------------------------------------
    def metadata_bytes_per_entry(self) -> int:
        """key + field + alive flag + addresses + utilities + count + last step."""
        return (
            8
            + 2
            + 1
            + self.K * self.addr.itemsize
            + self.util.shape[1] * self.util.itemsize
            + self.count.itemsize
            + self.last.itemsize
        )

    def fixed_bytes_per_entry(self) -> int:
        """What one entry costs in the same store at fixed dimension D (K = 1, same optimizer):
        the reference the budget is a fraction of (the index table is added separately)."""
        state = self.config.dim if self.config.optimizer == "adagrad" else 1
        meta = 8 + 2 + 1 + 4 + 2 + 2
        return 4 * (self.config.dim + state) + meta

    def memory(self) -> dict[str, int]:
        """Bytes measured from the arrays: live values, their optimizer state, per-entry
        metadata of live entries, index table; and everything allocated (capacity)."""
        value, opt = self.pool.live_bytes()
        n = self.index.num_entries
        return {
            "value_bytes": value,
            "optimizer_bytes": opt,
            "metadata_bytes": n * self.metadata_bytes_per_entry(),
            "index_bytes": self.index.table_bytes,
            "allocated_bytes": self.pool.allocated_bytes()
            + self.index.table_bytes
            + sum(a.nbytes for a in (self.addr, self.util, self.count, self.last))
            + self.index.keys.nbytes
            + self.index.fields.nbytes
            + self.index.alive.nbytes,
            "live_ids": n,
            "live_chunks": self.pool.num_live,
        }

    def chunk_capacity(self) -> int:
        """Live chunks the budget allows now, after metadata and index are paid for."""
        if self.config.budget is None:
            return np.iinfo(np.int64).max
        n = self.index.num_entries
        target = self.config.budget * (n * self.fixed_bytes_per_entry() + self.index.table_bytes)
        spare = target - n * self.metadata_bytes_per_entry() - self.index.table_bytes
        return max(0, int(spare // self.pool.chunk_bytes))

    def _ensure_entry_arrays(self) -> None:
        cap = self.index.entry_capacity
        old = self.addr.shape[0]
        if cap <= old:
            return
        self.addr = np.concatenate([self.addr, np.full((cap - old, self.K), -1, np.int32)])
        self.util = np.concatenate(
            [self.util, np.zeros((cap - old, self.util.shape[1]), np.float16)]
        )
        self.count = np.concatenate([self.count, np.zeros(cap - old, np.uint16)])
        self.last = np.concatenate([self.last, np.zeros(cap - old, np.uint16)])
        self.dirty = np.concatenate([self.dirty, np.zeros(cap - old, bool)])

    # ---- lookup ------------------------------------------------------------------------
    def lookup(
        self, ids: np.ndarray, train: bool = False
    ) -> tuple[torch.Tensor, LookupContext | None]:
        """int64[B, F] -> float32[B, F, D] zero-padded embeddings (pruned chunks read zeros).

        With train=True unseen IDs get entries (and, once admitted, chunks within the budget),
        access counts grow, and the returned context goes to `apply_gradients`."""
        ids = np.asarray(ids, dtype=np.int64)
        B, F = ids.shape
        fields = np.broadcast_to(np.arange(F, dtype=np.int16), (B, F)).ravel()
        keys = ids.ravel()
        if not train:
            slots = self.index.lookup(fields, keys)
            self.unseen_lookups += int((slots < 0).sum())
            addr = np.where((slots >= 0)[:, None], self.addr[np.maximum(slots, 0)], -1)
            return self.pool.gather(addr).reshape(B, F, self.config.dim), None

        slots, inserted = self.index.get_or_insert(fields, keys)
        self._ensure_entry_arrays()
        uniq, inverse, counts = np.unique(slots, return_inverse=True, return_counts=True)
        if inserted.any():
            new = np.unique(slots[inserted])
            self.addr[new] = -1
            self.util[new] = 0
            self.count[new] = 0
        before = self.count[uniq].astype(np.int64)
        self.count[uniq] = np.minimum(before + counts, np.iinfo(np.uint16).max)
        self.last[uniq] = self.epoch & 0xFFFF
        crossed = uniq[
            (before < self.config.min_count) & (before + counts >= self.config.min_count)
        ]
        if crossed.size:
            self._admit(crossed)
        emb = self.pool.gather(self.addr[slots]).reshape(B, F, self.config.dim)
        ctx = LookupContext(slots, uniq, inverse.ravel(), counts, (B, F))
        return emb, ctx

    def _admit(self, slots: np.ndarray) -> None:
        """Give newly admitted entries their first chunks (all K when unbudgeted), while the
        budget has room; the rest read zeros until a prune step finds them room."""
        n_init = self.K if self.config.budget is None else 1
        room = self.chunk_capacity() - self.pool.num_live
        take = slots[: max(0, min(slots.size, room // n_init))]
        if take.size == 0:
            return
        addrs = self.pool.alloc(take.size * n_init).reshape(take.size, n_init)
        self.addr[take, :n_init] = addrs
        self.pool.write(addrs.ravel(), self._initial_values(take, n_init))

    def _initial_values(self, slots: np.ndarray, n_chunks: int) -> torch.Tensor:
        """N(0, init_std^2) values of the first n_chunks of each entry, a pure function of
        (seed, field, raw ID, dimension) so every policy starts an ID at the same point:
        int32[N] -> float32[N * n_chunks, chunk_dim]."""
        width = n_chunks * self.config.chunk_dim
        base = mix64(self.index.fields[slots], self.index.keys[slots] ^ np.int64(self.config.seed))
        d = np.arange(2 * width, dtype=np.uint64)
        with np.errstate(over="ignore"):
            h = mix64(np.zeros(1, np.int16), (base[:, None] + d[None, :]).view(np.int64))
        u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
        u1, u2 = u[:, :width], u[:, width:]
        z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
        vals = torch.from_numpy((z * self.config.init_std).astype(np.float32))
        return vals.reshape(-1, self.config.chunk_dim)

    # ---- backward ----------------------------------------------------------------------
    def apply_gradients(self, ctx: LookupContext, grad: torch.Tensor) -> None:
        """float32[B, F, D] gradient of the looked-up embeddings -> utilities of every chunk
        (live or pruned), Adagrad on live chunks; then the prune / evict schedule."""
        c = self.config
        U = ctx.unique.size
        g = torch.zeros(U, self.K, c.chunk_dim)
        g.index_add_(0, torch.from_numpy(ctx.inverse), grad.reshape(-1, self.K, c.chunk_dim))
        self.step += 1
        if self.tracks_utility:
            norms = torch.linalg.vector_norm(g, dim=2).numpy()  # [U, K]
            a = ctx.counts.astype(np.float32)
            if c.freq_power != 1.0:
                a = a**c.freq_power
            # u_t = gamma * u_{t-1} + a g for every chunk == v_t = v_{t-1} + a g gamma^-(t-t0)
            scale = np.float32(c.gamma) ** np.float32(-(self.step - self.util_origin))
            v = self.util[ctx.unique].astype(np.float32) + (a * scale)[:, None] * norms
            self.util[ctx.unique] = np.minimum(v, _UTIL_MAX).astype(np.float16)

        self.dirty[ctx.unique] = True
        addr = self.addr[ctx.unique]
        live = addr >= 0
        if live.any():
            self.pool.adagrad_step(addr[live], g[torch.from_numpy(live)], c.lr, c.eps)
        if self.step % c.interval == 0:
            self.maintain()
        elif self.pool.num_live > self.chunk_capacity():
            # The index grew (its table doubled) and took room from the chunks: shed the
            # least useful ones now, so the budget holds after every step.
            self.prune_regrow()

    def maintain(self) -> None:
        """The periodic work: evict stale or excess entries, then prune / regrow."""
        c = self.config
        if self.tracks_utility:
            self.util[:] = np.minimum(self.current_utilities(slice(None)), _UTIL_MAX)
            self.util_origin = self.step
        self.epoch += 1
        if c.evict_after is not None:
            live = self.live_slots()
            idle = (self.epoch - self.last[live].astype(np.int64)) & 0xFFFF
            self.evict(live[idle * c.interval > c.evict_after])
        if c.max_entries is not None and self.index.num_entries > c.max_entries:
            live = self.live_slots()
            worth = (
                self.current_utilities(live).sum(axis=1)
                if self.tracks_utility
                else self.count[live].astype(np.float32)
            )
            excess = self.index.num_entries - c.max_entries
            self.evict(live[np.argpartition(worth, excess - 1)[:excess]])
        if c.budget is not None:
            self.prune_regrow()

    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self.index.alive[: self.index.high_water]).astype(np.int32)

    def current_utilities(self, slots: np.ndarray | slice) -> np.ndarray:
        """Utilities decayed to the current step: int32[E] -> float32[E, K]."""
        decay = np.float32(self.config.gamma) ** np.float32(self.step - self.util_origin)
        return self.util[slots].astype(np.float32) * decay

    def evict(self, slots: np.ndarray) -> None:
        """Drop entries: their chunks go back to the pool, their index slots are reused."""
        if slots.size == 0:
            return
        addr = self.addr[slots]
        self.pool.release(addr[addr >= 0])
        self._deleted.append((self.index.fields[slots].copy(), self.index.keys[slots].copy()))
        self.dirty[slots] = False
        self.addr[slots] = -1
        self.util[slots] = 0
        self.count[slots] = 0
        self.index.delete(slots)

    # ---- prune / regrow ----------------------------------------------------------------
    def chunk_scores(self, slots: np.ndarray) -> np.ndarray:
        """float64[E, K] ranking score of every chunk; the budget keeps the highest.
        -inf: never live (not admitted)."""
        c = self.config
        u = self.current_utilities(slots).astype(np.float64)
        if c.normalize == "field":
            f = self.index.fields[slots].astype(np.int64)
            nf = int(f.max()) + 1 if f.size else 1
            total = np.bincount(f, weights=u.sum(axis=1), minlength=nf)
            n = np.bincount(f, minlength=nf) * self.K
            mean = total / np.maximum(n, 1)
            u = u / np.maximum(mean[f], 1e-12)[:, None]
        s = np.minimum.accumulate(u, axis=1) if c.prefix else u
        if c.prefix:
            # Ties along a row must favour the earlier position, or a prefix could break.
            s = s - np.arange(self.K) * (1e-9 * (1.0 + np.abs(s)))
        if c.keep_first:
            s[:, 0] = (s.max() if s.size else 0.0) + 1.0 + u[:, 0]
        s[self.count[slots] < c.min_count] = -np.inf
        return s

    def prune_regrow(self) -> dict[str, int]:
        """Keep the best-scored chunks that fit the budget: free live chunks that fall out,
        re-admit pruned chunks that rise in (at zero, fresh optimizer state)."""
        slots = self.live_slots()
        if slots.size == 0:
            return {"freed": 0, "admitted": 0}
        s = self.chunk_scores(slots)
        flat = s.ravel()
        eligible = np.isfinite(flat)
        cap = self.chunk_capacity()
        keep = eligible.copy()
        n_eligible = int(eligible.sum())
        if cap < n_eligible:
            keep[:] = False
            if cap > 0:
                top = np.argpartition(np.where(eligible, -flat, np.inf), cap - 1)[:cap]
                keep[top] = True
        keep = keep.reshape(s.shape)
        addr = self.addr[slots]
        live = addr >= 0
        to_free = live & ~keep
        to_admit = keep & ~live
        freed = addr[to_free]
        self.pool.release(freed)
        addr[to_free] = -1
        n_admit = int(to_admit.sum())
        new = self.pool.alloc(n_admit)
        self.pool.write(new, torch.zeros(n_admit, self.config.chunk_dim))
        addr[to_admit] = new
        self.addr[slots] = addr
        self.dirty[slots[(to_free | to_admit).any(axis=1)]] = True
        self.prunes += 1
        return {"freed": int(freed.size), "admitted": n_admit}

    # ---- introspection -----------------------------------------------------------------
    def addresses(self, slots: np.ndarray) -> np.ndarray:
        """Chunk addresses of entries: int32[N] slots -> int32[N, K], -1 = pruned."""
        return self.addr[slots]

    def live_chunks_per_id(self) -> np.ndarray:
        """int64[K + 1] histogram: how many live IDs have 0..K live chunks."""
        slots = self.live_slots()
        return np.bincount((self.addr[slots] >= 0).sum(axis=1), minlength=self.K + 1)

    def export(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
        """(fields int16[N], keys int64[N], masks uint32[N], values float32[N, D]) of entries;
        bit j of a mask is set where chunk j is live."""
        addr = self.addresses(slots)
        bits = (addr >= 0).astype(np.uint32) << np.arange(self.K, dtype=np.uint32)
        values = self.pool.gather(addr).reshape(len(slots), self.config.dim)
        return self.index.fields[slots], self.index.keys[slots], bits.sum(axis=1, dtype=np.uint32), values

    def take_changes(self, dirty_only: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entry slots changed since the last call (or all live ones), and the (fields, keys)
        evicted since then; clears both."""
        live = self.live_slots()
        slots = live[self.dirty[live]] if dirty_only else live
        self.dirty[:] = False
        if self._deleted:
            df = np.concatenate([f for f, _ in self._deleted])
            dk = np.concatenate([k for _, k in self._deleted])
        else:
            df, dk = np.zeros(0, np.int16), np.zeros(0, np.int64)
        self._deleted = []
        return slots, df, dk

    # ---- snapshot ----------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the whole store to one .npz file, atomically (temp file + rename)."""
        path = Path(path)
        arrays = {f"index.{k}": v for k, v in self.index.state().items()}
        arrays |= {f"pool.{k}": v for k, v in self.pool.state_dict().items()}
        arrays |= {"addr": self.addr, "util": self.util, "count": self.count, "last": self.last}
        meta = {
            "config": asdict(self.config),
            "step": self.step,
            "unseen_lookups": self.unseen_lookups,
            "prunes": self.prunes,
            "util_origin": self.util_origin,
            "epoch": self.epoch,
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> ChunkStore:
        with np.load(Path(path)) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
        store = cls(StoreConfig(**meta["config"]))
        store.index = HashIndex.from_state(
            {k[6:]: v for k, v in arrays.items() if k.startswith("index.")}
        )
        store.pool.load_state_dict({k[5:]: v for k, v in arrays.items() if k.startswith("pool.")})
        for name in ("addr", "util", "count", "last"):
            setattr(store, name, np.array(arrays[name]))
        store.step = meta["step"]
        store.unseen_lookups = meta["unseen_lookups"]
        store.prunes = meta["prunes"]
        store.util_origin = meta["util_origin"]
        store.epoch = meta["epoch"]
        return store
