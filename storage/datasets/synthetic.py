"""A seeded synthetic CTR event stream with a hidden, known ground truth.

    synthetic:events=N,fields=F,vocab=V,zipf=A,seed=S,drift=D,dense=Dn,dim=K

Every key is optional (defaults: events=1_000_000, fields=8, vocab=100_000, zipf=1.1, seed=0,
drift=0.0, dense=0, dim=32). The stream is generated block by block (`BLOCK_ROWS` rows, each
block seeded by (seed, block number)), so memory is O(vocab + block) (O(vocab * fields) with
drift) and the stream is the same whatever batch size it is read with.

Popularity. Each field has V items; item i (0-based) has home popularity rank i, and rank r is
drawn with probability proportional to (r + 1)^-A (exact inverse-CDF sampling, O(1) per draw
through a guide table). An item's raw ID is a bijective 64-bit mix of (seed, field, item), so
popular IDs are not small integers, no ID is MISSING_ID (0), and the ID alone tells the
generator which (field, item) it is.

Drift (D in [0, 1]). After every block, a fraction D of the top 16384 rank positions of each
field (deeper items move only as partners) propose to swap their item with the one at a
log-normally distributed distance in rank (typically a factor e up or down); a swap is accepted
(Metropolis) by how far it moves the two items from their home ranks, with weight 0.1 / D on
the squared log-rank distance. Hot IDs rise and fall and the hot set keeps changing, but every
item wanders around its home rank (more drift: faster and wider), so the stream stays roughly
stationary. Wide drift (D near 1) does loosen the link between popularity and signal, and the
Bayes AUC drifts down a little with it. D = 0 is stationary: the rank -> item map stays the
identity.

Ground truth (per field f and item i, derived from a hash of the ID; no per-ID table):
    n_active(f, i)  number of non-zero leading dims of the latent, in [0, dim]:
                    0 for a quarter of the items ("dead", popular or not), otherwise
                    floor(0.75 dim (i + 1)^-0.3 exp(1.1 g)), g ~ N(0, 1), capped at dim;
                    correlated with (home) popularity but far from identical to it: a few
                    IDs use all dims, most of the vocabulary (about 60% at the defaults) none
    v(f, i)         float32[dim], N(0, 1) in the first n_active dims, zeros after (a window
                    into a fixed seeded table of segments [dim normals | dim zeros])
    b(f, i)         per-ID scalar bias, N(0, 0.4^2 / F)
    logit = b0 + c * sum_{f < g} <v_f, v_g> + sum_f b_f + <w, dense>,   |w| = 0.4
`c` scales the pairwise (FM-style) interaction to a standard deviation of 1.5 and `b0` sets the
base CTR to 15%, both calibrated once on a sample of the drift-free stream; the label is
Bernoulli(sigmoid(logit)); the Bayes AUC is about 0.8 (0.83 at the defaults). Dense features
are N(0, 1). Most of the signal sits in the interactions of the few IDs with many active dims,
so a model that gives those IDs more dimensions beats uniform small dimensions:
`true_logits(ids, dims=k)`, the oracle truncated to k dims for every ID, reaches an AUC of
about 0.73 at k = 4 and 0.77 at k = 8 against 0.83 with all 32 (defaults).

Example:
    >>> ds = SyntheticDataset(events=1000, fields=4, vocab=500, seed=3)
    >>> b = next(ds.batches(256))
    >>> b.ids.shape, b.extras["p_true"].shape
    ((256, 4), (256,))
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from storage.batch import DatasetSchema, SparseBatch, rebatch
from storage.datasets.base import DatasetError
from storage.datasets.popularity import ZipfRanks, drift_step
from storage.splitmix import splitmix64, splitmix64_inverse

BLOCK_ROWS = 1 << 15  # rows per internally seeded block; also one drift step
START_TIME = 1_700_000_000  # timestamp of the first event, seconds since the epoch
EVENTS_PER_SECOND = 100

TARGET_CTR = 0.15
INTERACTION_STD = 1.5  # std of the calibrated pairwise-interaction part of the logit
BIAS_STD = 0.4  # std of the sum of per-ID biases over all fields
DENSE_STD = 0.4  # std of the dense-feature part of the logit (when dense > 0)
DEAD_FRACTION = 0.25  # items whose latent is all zero, whatever their popularity
ACTIVE_SCALE = 0.75  # m0 = ACTIVE_SCALE * dim: typical n_active of the most popular item
ACTIVE_DECAY = 0.3  # n_active scale falls as (home rank + 1)^-ACTIVE_DECAY
ACTIVE_NOISE = 1.1  # log-normal spread of n_active around that scale

_TABLE_FLOATS = 1 << 21  # size of the latent table (8 MiB); sets the number of segments
_NORMALS = 1 << 16  # scalar normals for biases and n_active noise
_CALIBRATION_ROWS = 1 << 15

_M64 = (1 << 64) - 1
_U = np.uint64

_DEFAULTS: dict[str, int | float] = {
    "events": 1_000_000,
    "fields": 8,
    "vocab": 100_000,
    "zipf": 1.1,
    "seed": 0,
    "drift": 0.0,
    "dense": 0,
    "dim": 32,
}


def _key(seed: int, tag: int) -> int:
    """A 63-bit key from (seed, tag); below 2**63 so that no valid ID is ever 0 (MISSING_ID)."""
    x = np.array([(seed * 0x9E3779B97F4A7C15 + tag) & _M64], dtype=np.uint64)
    return int(splitmix64(splitmix64(x))[0]) & ((1 << 63) - 1) | 1


class SyntheticDataset:
    """Synthetic CTR stream; see the module docstring for the generative model.

    batches(batch_size) -> Iterator[SparseBatch] with ids int64[B, F], labels float32[B],
    dense float32[B, Dn] (Dn = `dense`), unit_ids = field 0's ID, timestamps int64[B],
    extras["p_true"] float32[B] (the true click probability).
    """

    def __init__(
        self,
        events: int = 1_000_000,
        fields: int = 8,
        vocab: int = 100_000,
        zipf: float = 1.1,
        seed: int = 0,
        drift: float = 0.0,
        dense: int = 0,
        dim: int = 32,
        spec: str | None = None,
    ) -> None:
        self.events, self.num_fields, self.vocab = int(events), int(fields), int(vocab)
        self.zipf, self.seed, self.drift = float(zipf), int(seed), float(drift)
        self.num_dense, self.dim = int(dense), int(dim)
        self.spec = spec or (
            f"synthetic:events={self.events},fields={self.num_fields},vocab={self.vocab},"
            f"zipf={self.zipf},seed={self.seed},drift={self.drift},dense={self.num_dense},"
            f"dim={self.dim}"
        )
        self._check()
        self.schema = DatasetSchema(
            "synthetic",
            fields=tuple(f"f{i}" for i in range(self.num_fields)),
            dense=tuple(f"d{i}" for i in range(self.num_dense)),
        )
        self._id_key, self._prop_key = _key(self.seed, 1), _key(self.seed, 2)

        self._ranks = ZipfRanks(self.vocab, self.zipf)

        # Latent vectors: segment s is [dim normals | dim zeros]; the latent with n active dims
        # in segment s is the window of length dim that starts n entries before the zeros.
        rng = np.random.default_rng([self.seed, 0, 0xA1])
        k = self.dim
        # distinct latent vectors per n_active value: a power of two, 2^15 for dim <= 32
        self._segments = segments = 1 << min(15, (_TABLE_FLOATS // (2 * k)).bit_length() - 1)
        table = np.zeros((segments, 2 * k), np.float32)
        table[:, :k] = rng.standard_normal((segments, k), dtype=np.float32)
        self._table = table.reshape(-1)
        self._windows = np.lib.stride_tricks.sliding_window_view(self._table, k)
        # tail_sq[s * (dim + 1) + n]: squared norm of the latent with n active dims in segment s
        tail = np.cumsum(table[:, k - 1 :: -1] ** 2, axis=1, dtype=np.float64)
        tail = np.concatenate([np.zeros((segments, 1)), tail], axis=1)
        self._tail_sq = tail.astype(np.float32).reshape(-1)
        # n_active = min(dim, scale[home rank] * noise[hash]); noise is 0 for "dead" items
        ranks = np.arange(1, self.vocab + 1, dtype=np.float64)
        self._active_scale = (ACTIVE_SCALE * k * ranks**-ACTIVE_DECAY).astype(np.float32)
        noise = np.exp(ACTIVE_NOISE * rng.standard_normal(_NORMALS))
        noise[rng.random(_NORMALS) < DEAD_FRACTION] = 0.0
        self._active_noise = noise.astype(np.float32)
        bias_scale = BIAS_STD / np.sqrt(self.num_fields)
        self._bias = (bias_scale * rng.standard_normal(_NORMALS)).astype(np.float32)
        w = rng.standard_normal(self.num_dense)
        self._dense_w = (DENSE_STD * w / max(np.linalg.norm(w), 1e-12)).astype(np.float32)
        self._scale, self._b0 = 1.0, 0.0
        self._calibrate()

    # ----------------------------------------------------------------- spec parsing

    @classmethod
    def from_params(cls, params: dict[str, str], spec: str) -> SyntheticDataset:
        """Build from parsed `key=value` spec parameters (all strings)."""
        kwargs: dict[str, int | float] = {}
        for key, text in params.items():
            if key not in _DEFAULTS:
                raise DatasetError(
                    f"{spec}: unknown key {key!r}; expected some of {', '.join(_DEFAULTS)}"
                )
            kwargs[key] = _parse_number(spec, key, text, float_ok=isinstance(_DEFAULTS[key], float))
        return cls(**kwargs, spec=spec)  # type: ignore[arg-type]

    def _check(self) -> None:
        checks = [
            ("events", self.events >= 0, ">= 0"),
            ("fields", 1 <= self.num_fields < 1 << 20, "in [1, 2^20)"),
            ("vocab", 1 <= self.vocab < 1 << 31, "in [1, 2^31)"),
            ("zipf", 0.0 <= self.zipf <= 10.0, "in [0, 10]"),
            ("seed", 0 <= self.seed < 1 << 63, "in [0, 2^63)"),
            ("drift", 0.0 <= self.drift <= 1.0, "in [0, 1]"),
            ("dense", 0 <= self.num_dense <= 4096, "in [0, 4096]"),
            ("dim", 1 <= self.dim <= 1024, "in [1, 1024]"),
        ]
        for key, ok, want in checks:
            if not ok:
                raise DatasetError(f"{self.spec}: {key} must be {want}")

    # ----------------------------------------------------------------- ground truth

    def item_ids(self, field: int, items: np.ndarray) -> np.ndarray:
        """Raw IDs of items (= home popularity ranks, 0-based) of one field.

        item_ids(f, int[N]) -> int64[N]
        """
        x = np.asarray(items, dtype=np.uint64) + _U((field << 32) + self._id_key)
        return splitmix64(x).view(np.int64)

    def _decode(self, field: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw IDs int64[N] of one field -> (items int64[N], valid bool[N]); an ID is valid
        when it is one this data set makes for that field (unknown IDs get item 0)."""
        x = splitmix64_inverse(ids.view(np.uint64)) - _U((field << 32) + self._id_key)
        valid = x < _U(self.vocab)
        return np.where(valid, x, _U(0)).view(np.int64), valid

    def _field_terms(
        self, ids: np.ndarray, items: np.ndarray, valid: np.ndarray | None, dims: int | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Ground truth of one field's IDs, all derived from the hash of the ID.

        (ids int64[B], items int64[B]) -> (n_active int64[B], latents float32[B, dims or dim],
        squared latent norms float32[B], biases float32[B])
        """
        h = splitmix64(ids.view(np.uint64) ^ _U(self._prop_key))
        # bits 0-14: segment (fewer when dim > 32), 16-31: bias, 48-63: n_active noise / dead
        segment = (h & _U(self._segments - 1)).view(np.int64)
        bias = self._bias[((h >> _U(16)) & _U(0xFFFF)).view(np.int64)]
        scale = self._active_scale[items] * self._active_noise[(h >> _U(48)).view(np.int64)]
        n = np.minimum(scale, np.float32(self.dim), out=scale).astype(np.int64)
        if valid is not None:
            n[~valid] = 0
            bias[~valid] = 0.0
        k = self.dim
        latents = self._windows[segment * (2 * k) + (k - n)]
        tail = segment * (k + 1)
        sq = self._tail_sq[tail + n]
        if dims is not None and dims < k:
            # the first `dims` of a latent are the first of the last n normals of its segment
            latents = latents[:, :dims]
            sq -= self._tail_sq[tail + n - np.minimum(n, dims)]
        return n, latents, sq, bias

    def n_active(self, field: int, ids: np.ndarray) -> np.ndarray:
        """Number of non-zero leading latent dims of raw IDs of one field (0 for unknown IDs).

        n_active(f, int64[N]) -> int64[N]
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        items, valid = self._decode(field, ids)
        return self._field_terms(ids, items, valid, None)[0]

    def true_logits(
        self, ids: np.ndarray, dense: np.ndarray | None = None, dims: int | None = None
    ) -> np.ndarray:
        """Ground-truth logits of rows of raw IDs (unknown IDs contribute nothing); the dense
        term is added when `dense` is given. `dims` truncates every latent to its first `dims`
        dimensions: the oracle with a uniform embedding size.

        true_logits(int64[B, F], float32[B, Dn] | None) -> float32[B]
        """
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] != self.num_fields:
            raise ValueError(f"ids has shape {ids.shape}, expected (B, {self.num_fields})")
        if dims is not None and dims < 1:
            raise ValueError(f"dims must be >= 1, got {dims}")
        parts = _Parts(ids.shape[0], self.dim if dims is None else min(dims, self.dim))
        for f in range(self.num_fields):
            col = np.ascontiguousarray(ids[:, f])
            items, valid = self._decode(f, col)
            parts.add(*self._field_terms(col, items, valid, dims)[1:])
        return self._logit(parts, dense)

    def _logit(self, parts: _Parts, dense: np.ndarray | None) -> np.ndarray:
        """b0 + c * pairwise interaction + biases (+ dense term): float32[B]."""
        logit = np.float32(self._scale) * parts.pairs() + parts.bias
        logit += np.float32(self._b0)
        if dense is not None and self.num_dense:
            logit += np.asarray(dense, np.float32) @ self._dense_w
        return logit

    def _calibrate(self) -> None:
        """Set the interaction scale and the global bias on a sample of the stream without
        drift, so that the logit's spread and the base CTR do not depend on F, V, A or dim."""
        rng = np.random.default_rng([self.seed, 0, 0xCA1])
        _, parts = self._sample(rng, _CALIBRATION_ROWS, None)
        pairs = parts.pairs().astype(np.float64)
        std = float(pairs.std())
        # one field has no pairs: what std sees then is float rounding, not signal
        self._scale = INTERACTION_STD / std if self.num_fields > 1 and std > 1e-6 else 0.0
        rest = self._scale * pairs + parts.bias
        if self.num_dense:
            rest += DENSE_STD * rng.standard_normal(rest.shape[0])
        lo, hi = -30.0, 30.0
        for _ in range(40):  # bisection on the monotone mean CTR
            mid = 0.5 * (lo + hi)
            if np.mean(1.0 / (1.0 + np.exp(-(mid + rest)))) < TARGET_CTR:
                lo = mid
            else:
                hi = mid
        self._b0 = 0.5 * (lo + hi)

    # ----------------------------------------------------------------- the stream

    def _sample(
        self, rng: np.random.Generator, rows: int, perm: np.ndarray | None
    ) -> tuple[np.ndarray, _Parts]:
        """Draw `rows` events: field-major raw IDs int64[F, rows] and their logit parts.
        Works field by field so the working set stays in cache."""
        ids = np.empty((self.num_fields, rows), np.int64)
        parts = _Parts(rows, self.dim)
        for f in range(self.num_fields):
            items = self._ranks.sample(rng, rows)
            if perm is not None:
                items = perm[f, items].astype(np.int64)
            ids[f] = self.item_ids(f, items)
            parts.add(*self._field_terms(ids[f], items, None, None)[1:])
        return ids, parts

    def _blocks(self) -> Iterator[SparseBatch]:
        """The stream in blocks of BLOCK_ROWS rows; block j is seeded by (seed, j)."""
        perm = None
        if self.drift > 0:
            perm = np.tile(np.arange(self.vocab, dtype=np.int32), (self.num_fields, 1))
        for j, first in enumerate(range(0, self.events, BLOCK_ROWS)):
            rows = min(BLOCK_ROWS, self.events - first)
            rng = np.random.default_rng([self.seed, j + 1])
            ids, parts = self._sample(rng, rows, perm)
            dense = None
            if self.num_dense:
                dense = rng.standard_normal((rows, self.num_dense), dtype=np.float32)
            p = 1.0 / (1.0 + np.exp(-self._logit(parts, dense)))
            labels = (rng.random(rows, dtype=np.float32) < p).astype(np.float32)
            yield SparseBatch(
                self.schema,
                labels=labels,
                ids=ids.T,
                dense=dense,
                unit_ids=ids[0],
                timestamps=START_TIME + (first + np.arange(rows)) // EVENTS_PER_SECOND,
                extras={"p_true": p},
            )
            if perm is not None:
                drift_step(perm, np.random.default_rng([self.seed, j + 1, 0xD1]), self.drift)

    def batches(self, batch_size: int) -> Iterator[SparseBatch]:
        """The stream in batches of exactly `batch_size` rows (the last may be shorter); the
        rows do not depend on `batch_size`."""
        return rebatch(self._blocks(), batch_size)

    def __len__(self) -> int:
        return self.events


class _Parts:
    """Running sums over fields for a batch of B rows: the sum of latents float32[B, K], the
    sum of squared latent norms float32[B] and the sum of per-ID biases float32[B]."""

    def __init__(self, rows: int, width: int) -> None:
        self.total = np.zeros((rows, width), np.float32)
        self.sq = np.zeros(rows, np.float32)
        self.bias = np.zeros(rows, np.float32)

    def add(self, latents: np.ndarray, sq: np.ndarray, bias: np.ndarray) -> None:
        self.total += latents
        self.sq += sq
        self.bias += bias

    def pairs(self) -> np.ndarray:
        """sum_{f<g} <v_f, v_g> = (|sum_f v_f|^2 - sum_f |v_f|^2) / 2: float32[B]."""
        return 0.5 * (np.einsum("bk,bk->b", self.total, self.total) - self.sq)


def _parse_number(spec: str, key: str, text: str, float_ok: bool) -> int | float:
    """'1_000_000' / '1e6' -> 1000000 (int keys must be integral); DatasetError otherwise."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise DatasetError(f"{spec}: {key}={text!r} is not a number") from None
    if not np.isfinite(value):
        raise DatasetError(f"{spec}: {key}={text!r} is not finite")
    if float_ok:
        return value
    if not value.is_integer():
        raise DatasetError(f"{spec}: {key}={text!r} must be an integer")
    try:
        return int(text.replace("_", ""))
    except ValueError:
        return int(value)
