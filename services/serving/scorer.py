"""The scoring path of one request: items -> IDs -> embeddings from cache / Redis -> network.

    ids, dense = items_to_arrays(model, items, request_dense, hasher)  # int64[B, F], [B, Dn]
    emb, unseen, hits, misses = await gather_embeddings(model, ids, redis)  # [B, F, D]
    probs = model.predict(emb, dense)                             # float32[B]

This module: the loaded version (LoadedModel), raw values -> IDs (RawIdHasher), items ->
arrays; embedding_reads.py: the embeddings (cache, then Redis through the version's manifest).
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter

import numpy as np
import torch

from services import wire
from services.serving.embedding_cache import EmbeddingCache
from services.serving.schemas import Item
from storage.batch import DatasetSchema, hash_raw

log = logging.getLogger("chunkrec.serving")

MAX_CORRUPT_LOGGED = 1000  # corrupt record keys logged per model version


@dataclass
class LoadedModel:
    """One model version, immutable once built: what a request reads from start to end.
    A new version is a new LoadedModel swapped in by reference (registry.py)."""

    record: wire.ModelVersion
    net: torch.nn.Module
    cache: EmbeddingCache  # moves to the next version (embedding_cache.py: invalidation)
    loaded_at: float
    manifest: np.ndarray = field(default_factory=lambda: np.zeros(1, np.uint64))  # uint64[n]
    schema: DatasetSchema = field(init=False)
    widths: tuple[int, ...] = field(init=False)
    stored_dim: int = field(init=False)  # sum(widths): what a record unpacks to (<= dim)

    def __post_init__(self) -> None:
        self._traced: torch.jit.ScriptModule | None = None
        self._corrupt_logged: set[str] = set()
        self.schema = self.record.schema_obj
        self.widths = tuple(int(w) for w in self.record.widths)
        self.stored_dim = sum(self.widths)
        self._field_set = frozenset(self.schema.fields)
        self._dense_set = frozenset(self.schema.dense)

    @property
    def name(self) -> str:
        return self.record.model

    @property
    def version(self) -> int:
        return self.record.version

    def note_corrupt(self, key: str, exc: Exception) -> None:
        """Log a corrupt embedding record's key, once per key and version, for at most
        MAX_CORRUPT_LOGGED keys (a version with corrupt records everywhere would otherwise
        keep a set of every key and flood the log)."""
        logged = self._corrupt_logged
        if key in logged or len(logged) > MAX_CORRUPT_LOGGED:
            return
        logged.add(key)
        if len(logged) > MAX_CORRUPT_LOGGED:
            log.error("%s v%d: more than %d corrupt embedding records; not logging further "
                      "keys (chunkrec_serving_corrupt_records_total counts them)", self.name,
                      self.version, MAX_CORRUPT_LOGGED)
            return
        log.error("%s v%d: corrupt embedding record %s (%s); read as missing", self.name,
                  self.version, key, exc)

    def predict(self, emb: np.ndarray, dense: np.ndarray | None) -> np.ndarray:
        """float32[B, F, D], float32[B, Dn] | None -> click probabilities float32[B]."""
        with torch.inference_mode():
            e = torch.from_numpy(emb)
            if self._traced is not None:
                args = (e,) if dense is None else (e, torch.from_numpy(dense))
                return torch.sigmoid(self._traced(*args)).numpy()
            d = torch.from_numpy(dense) if dense is not None else None
            return torch.sigmoid(self.net(e, d)).numpy()

    def compile(self, check_rows: tuple[int, ...] = (1, 3, 64)) -> bool:
        """Swap in a traced, frozen copy of the network for `predict` (a quarter less time per
        request than eager: no per-module Python calls). Kept only if it gives the eager
        network's outputs on random batches of `check_rows` rows; returns whether it was."""
        nf, dn = self.schema.num_fields, self.schema.num_dense
        dim = int(self.record.dim)

        def example(rows: int, seed: int) -> tuple[torch.Tensor, ...]:
            g = torch.Generator().manual_seed(seed)
            e = torch.randn(rows, nf, dim, generator=g)
            return (e,) if not dn else (e, torch.randn(rows, dn, generator=g))

        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings about shapes, checked below
                traced = torch.jit.freeze(torch.jit.trace(self.net, example(8, 0),
                                                          check_trace=False))
                for k, rows in enumerate(check_rows):
                    args = example(rows, k + 1)
                    if not torch.allclose(traced(*args), self.net(*args), rtol=1e-5,
                                          atol=1e-6):
                        return False
        except (RuntimeError, TypeError, ValueError):
            return False
        self._traced = traced
        return True


class RawIdHasher:
    """Raw feature value -> int64 ID, exactly `hash_raw` (storage/batch.py: the events' own
    conversion, an int hashing as its decimal string), memoised by the value itself: the
    mapping never changes, so entries never go stale. A request whose values are all known is
    one pass of dict lookups; its new distinct values are hashed in one vectorised call.

    The memo is bounded in bytes (`max_bytes`, the values' own sizes plus a per-entry
    allowance) and in entries (`capacity`); past either it starts over. A byte bound, because
    clients choose the values: 1 KB strings would make an entry bound of a million a gigabyte.
    Starting over rather than evicting keeps the warm path a plain dict lookup (an LRU, e.g.
    cachetools', costs a Python call per value).

    hash(["196", "242", 196]) -> int64[3] (the first and last equal)
    """

    # a dict entry (hash, key and value pointers, index slot, with the table's growth slack)
    # plus the int object of the ID; the key's own size is counted by sys.getsizeof
    ENTRY_BYTES = 100

    def __init__(self, capacity: int = 1 << 20, max_bytes: int = 32 << 20) -> None:
        self.capacity = max(1, capacity)
        self.max_bytes = max(1, max_bytes)
        self.nbytes = 0  # of the entries memoised now
        self._d: dict[str | int, int] = {}

    def __len__(self) -> int:
        return len(self._d)

    def hash(self, raw: list[str | int]) -> np.ndarray:
        d = self._d
        try:
            return np.fromiter(map(d.__getitem__, raw), np.int64, len(raw))
        except KeyError:
            pass
        new = [v for v in dict.fromkeys(raw) if v not in d]
        size = sum(map(sys.getsizeof, new)) + self.ENTRY_BYTES * len(new)
        if len(d) + len(new) > self.capacity or self.nbytes + size > self.max_bytes:
            d.clear()
            self.nbytes = 0
            new = list(dict.fromkeys(raw))
            size = sum(map(sys.getsizeof, new)) + self.ENTRY_BYTES * len(new)
        ids = hash_raw(new)
        if size <= self.max_bytes:  # one request larger than the whole memo is not kept
            d.update(zip(new, ids.tolist(), strict=True))
            self.nbytes += size
            return np.fromiter(map(d.__getitem__, raw), np.int64, len(raw))
        lookup = dict(zip(new, ids.tolist(), strict=True))
        return np.fromiter(map(lookup.__getitem__, raw), np.int64, len(raw))


class FieldError(ValueError):
    """Items that do not fit the model's schema: errors in pydantic's shape, for a 422."""

    def __init__(self, errors: list[dict[str, object]]) -> None:
        super().__init__(errors[0]["msg"] if errors else "invalid items")
        self.errors = errors


def _field_error(loc: list[object], msg: str) -> dict[str, object]:
    return {"type": "value_error", "loc": ["body", *loc], "msg": msg}


def _check_keys(got: set[str] | dict[str, object], want: frozenset[str], what: str) -> str | None:
    keys = got.keys() if isinstance(got, dict) else got
    if keys == want:
        return None
    missing = sorted(want - keys)
    unknown = sorted(keys - want)
    parts = []
    if missing:
        parts.append(f"missing {what} {missing}")
    if unknown:
        parts.append(f"unknown {what} {unknown}")
    return f"{', '.join(parts)}; expected exactly {sorted(want)}"


def items_to_arrays(model: LoadedModel, items: list[Item],
                    request_dense: dict[str, float] | None, hasher: RawIdHasher,
                    max_errors: int = 20) -> tuple[np.ndarray, np.ndarray | None]:
    """Items -> (ids int64[B, F], dense float32[B, Dn] | None). Raw feature values are hashed
    by `hasher` (the events' hashing, memoised). Raises FieldError naming each wrong item and
    field (at most `max_errors` of them)."""
    schema = model.schema
    fields, fset, dset = schema.fields, model._field_set, model._dense_set
    n, nf = len(items), len(fields)
    ids = np.empty((n, nf), np.int64)
    errors: list[dict[str, object]] = []
    raw_rows: list[int] = []
    raw: list[str | int] = []
    id_rows: list[int] = []
    id_vals: list[int] = []
    pick = itemgetter(*fields) if nf > 1 else (lambda d: (d[fields[0]],))  # values in field order
    features = [it.features for it in items]
    all_raw = None not in features and all(v.keys() == fset for v in features)
    if all_raw:  # the common request: raw values of exactly the model's fields, one pass
        raw = list(chain.from_iterable(map(pick, features)))
    for i, it in enumerate(() if all_raw else items):
        if it.features is not None:
            values, where = it.features, "features"
        else:
            values, where = it.ids, "ids"  # type: ignore[assignment]
        if values.keys() != fset:
            errors.append(_field_error(["items", i, where],
                                       _check_keys(values, fset, "fields") or ""))
            if len(errors) >= max_errors:
                break
            continue
        if where == "features":
            raw_rows.append(i)
            raw.extend(pick(values))
        else:
            id_rows.append(i)
            id_vals.extend(pick(values))
    dense = None
    if schema.num_dense:
        dense = np.empty((n, schema.num_dense), np.float32)
        for i, it in enumerate(items):
            vals = it.dense if it.dense is not None else request_dense
            loc = ["items", i, "dense"] if it.dense is not None else ["dense"]
            if vals is None:
                errors.append(_field_error(["items", i, "dense"],
                                           f"model {model.name} needs dense values "
                                           f"{sorted(dset)} (per item or for the request)"))
            elif (msg := _check_keys(vals, dset, "dense names")) is not None:
                errors.append(_field_error(loc, msg))
            else:
                dense[i] = [vals[k] for k in schema.dense]
            if len(errors) >= max_errors:
                break
    elif any(it.dense for it in items):
        i = next(i for i, it in enumerate(items) if it.dense)
        errors.append(_field_error(["items", i, "dense"],
                                   f"model {model.name} has no dense features"))
    if not schema.num_dense and request_dense:
        errors.append(_field_error(["dense"], f"model {model.name} has no dense features"))
    if errors:
        raise FieldError(errors[:max_errors])
    if all_raw:
        return hasher.hash(raw).reshape(n, nf), dense
    if raw_rows:
        ids[raw_rows] = hasher.hash(raw).reshape(len(raw_rows), nf)
    if id_rows:
        ids[id_rows] = np.array(id_vals, np.int64).reshape(len(id_rows), nf)
    return ids, dense
