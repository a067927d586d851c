import numpy as np
import pytest

import storage.vhpi.hash_index as hash_index
from storage.vhpi.hash_index import HashIndex


def _keys(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)
    fields = rng.integers(0, 26, size=n).astype(np.int16)
    return fields, keys


def test_insert_then_lookup_finds_every_key_and_only_those() -> None:
    idx = HashIndex(initial_capacity=16)  # forces many growths
    fields, keys = _keys(50_000)
    slots, new = idx.get_or_insert(fields, keys)
    assert new.all()
    assert len(np.unique(slots)) == 50_000
    assert idx.num_entries == 50_000
    np.testing.assert_array_equal(idx.lookup(fields, keys), slots)
    other_f, other_k = _keys(1000, seed=1)
    assert (idx.lookup(other_f, other_k) == -1).all()


def test_same_key_in_two_fields_is_two_entries_and_duplicates_share_one() -> None:
    idx = HashIndex()
    fields = np.array([0, 1, 0, 1, 0], dtype=np.int16)
    keys = np.array([7, 7, 7, 7, 8], dtype=np.int64)
    slots, new = idx.get_or_insert(fields, keys)
    assert slots[0] == slots[2] and slots[1] == slots[3]
    assert len({slots[0], slots[1], slots[4]}) == 3
    assert new.all()  # every occurrence of a key inserted by this call reports it
    again, new2 = idx.get_or_insert(fields, keys)
    np.testing.assert_array_equal(again, slots)
    assert not new2.any()


def test_colliding_hashes_stay_distinct(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every key hashes to the same value: probing and the key compare must keep them apart.
    monkeypatch.setattr(
        hash_index, "mix64", lambda f, k: np.full(np.shape(k), 12345, dtype=np.uint64)
    )
    idx = HashIndex()
    fields = np.zeros(200, dtype=np.int16)
    keys = np.arange(200, dtype=np.int64)
    slots, _ = idx.get_or_insert(fields, keys)
    assert len(np.unique(slots)) == 200
    np.testing.assert_array_equal(idx.lookup(fields, keys), slots)


def test_delete_removes_and_reuses_slots_and_survives_rebuild() -> None:
    idx = HashIndex()
    fields, keys = _keys(10_000)
    slots, _ = idx.get_or_insert(fields, keys)
    idx.delete(slots[:4000])  # enough tombstones to trigger a rebuild
    assert idx.num_entries == 6000
    assert (idx.lookup(fields[:4000], keys[:4000]) == -1).all()
    np.testing.assert_array_equal(idx.lookup(fields[4000:], keys[4000:]), slots[4000:])
    nf, nk = _keys(3000, seed=5)
    new_slots, _ = idx.get_or_insert(nf, nk)
    assert set(new_slots.tolist()) <= set(slots[:4000].tolist())  # freed slots reused
    assert idx.high_water == 10_000


def test_state_round_trip() -> None:
    idx = HashIndex()
    fields, keys = _keys(5000)
    slots, _ = idx.get_or_insert(fields, keys)
    idx.delete(slots[:10])
    back = HashIndex.from_state({k: v.copy() for k, v in idx.state().items()})
    np.testing.assert_array_equal(back.lookup(fields, keys), idx.lookup(fields, keys))
    assert back.num_entries == idx.num_entries
