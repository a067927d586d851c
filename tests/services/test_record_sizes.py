"""The publisher's books of record sizes against a dict kept by hand, over random publishes."""

from __future__ import annotations

import numpy as np

from services.trainer.record_sizes import RecordSizes


def test_books_match_a_dict_over_random_sets_and_deletes() -> None:
    rng = np.random.default_rng(0)
    books, truth = RecordSizes(), {}
    universe = rng.integers(-2**63, 2**63 - 1, 3000, dtype=np.int64)
    for _ in range(30):
        names = rng.choice(universe, 400, replace=False)
        sets, dels = names[:300], names[300:]
        sizes = rng.integers(8, 300, 300)
        delta, count = books.change(sets, sizes, dels)
        before_bytes, before_count = sum(truth.values()), len(truth)
        for n, z in zip(sets.tolist(), sizes.tolist(), strict=True):
            truth[n] = z
        for n in dels.tolist():
            truth.pop(n, None)
        assert (delta, count) == (sum(truth.values()) - before_bytes, len(truth) - before_count)
        books.apply(sets, sizes, dels)
        assert len(books) == len(truth) and books.total == sum(truth.values())
        assert books.names.tolist() == sorted(truth)
        probe = rng.choice(universe, 50)
        assert books.sizes_of(probe).tolist() == [truth.get(n, 0) for n in probe.tolist()]
    books.clear()
    assert len(books) == 0 and books.sizes_of(universe[:5]).tolist() == [0] * 5
