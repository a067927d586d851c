"""Arrow IPC event messages (services/wire/arrow_events.py): the same events as the JSON form,
validated as columns; a bad row dead-letters alone with its reason, a message that does not
fit is refused whole, and no byte string makes reading raise anything but a dead letter."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services import wire
from services.wire.arrow_events import SCHEMA_KEY
from storage.batch import MISSING_ID, DatasetSchema, SparseBatch, hash_raw

SCHEMA = DatasetSchema("toy", fields=("user", "item"), dense=("age",))


def _batch(n: int = 50, seed: int = 0) -> tuple[SparseBatch, list[str]]:
    rng = np.random.default_rng(seed)
    batch = SparseBatch(SCHEMA, labels=rng.integers(0, 2, n).astype(np.float32),
                        ids=rng.integers(-(1 << 62), 1 << 62, (n, 2)),
                        dense=rng.normal(size=(n, 1)).astype(np.float32),
                        unit_ids=rng.integers(0, 1000, n),
                        timestamps=1_700_000_000 + np.arange(n))
    return batch, [f"toy:{i}" for i in range(n)]


def _message(cols: dict[str, pa.Array], schema_name: str = "toy",
             compression: str | None = None) -> bytes:
    table = pa.table(cols).replace_schema_metadata({SCHEMA_KEY: schema_name.encode()})
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _good_cols(n: int = 4) -> dict[str, pa.Array]:
    return {"event_id": pa.array([f"e{i}" for i in range(n)]),
            "ts": pa.array([1.7e9 + i for i in range(n)]),
            "label": pa.array([i % 2 for i in range(n)], pa.int8()),
            "unit_id": pa.array([f"u{i}" if i % 2 else None for i in range(n)]),
            "features.user": pa.array([str(100 + i) for i in range(n)]),
            "features.item": pa.array(list(range(n)), pa.int64()),
            "dense.age": pa.array([0.5] * n, pa.float32())}


def test_arrow_and_json_messages_of_one_batch_give_the_same_events() -> None:
    batch, ids = _batch()
    as_json = wire.dead_letters(wire.encode_events(wire.batch_to_events(batch, ids)), SCHEMA,
                                "events", 0, 0)
    as_arrow = wire.dead_letters(wire.encode_arrow(batch, ids), SCHEMA, "events", 0, 1)
    assert as_json[1] == [] and as_arrow[1] == []
    a, b = as_json[0], as_arrow[0]
    assert a.event_ids == b.event_ids == ids
    np.testing.assert_array_equal(a.batch.ids, b.batch.ids)
    np.testing.assert_array_equal(a.batch.labels, b.batch.labels)
    np.testing.assert_array_equal(a.batch.dense, b.batch.dense)
    np.testing.assert_array_equal(a.batch.unit_ids, b.batch.unit_ids)
    np.testing.assert_array_equal(a.ts, b.ts)
    assert wire.event_id_checksum(a.event_ids) == wire.event_id_checksum(b.event_ids)


def test_raw_feature_and_unit_columns_hash_like_json_events() -> None:
    got, bad = wire.read_arrow(_message(_good_cols()), SCHEMA)
    assert bad == []
    np.testing.assert_array_equal(got.batch.ids[:, 0], hash_raw([str(100 + i) for i in range(4)]))
    np.testing.assert_array_equal(got.batch.ids[:, 1], hash_raw([0, 1, 2, 3]))  # ints: "0"..
    assert got.batch.unit_ids[0] == MISSING_ID and got.batch.unit_ids[2] == MISSING_ID
    assert got.batch.unit_ids[1] == hash_raw(["u1"])[0]


@pytest.mark.parametrize(("column", "value", "reason"), [
    ("label", pa.array([0, 2, 1, 0], pa.int8()), "label: expected 0 or 1"),
    ("label", pa.array([0, None, 1, 0], pa.int8()), "label: expected 0 or 1"),
    ("event_id", pa.array(["e0", "", "e2", "e3"]), "event_id: expected a string"),
    ("event_id", pa.array(["e0", "x" * 257, "e2", "e3"]), "event_id: expected a string"),
    ("ts", pa.array([1.0, float("nan"), 2.0, 3.0]), "ts: expected finite epoch seconds"),
    ("ts", pa.array([1.0, -1.0, 2.0, 3.0]), "ts: expected finite epoch seconds"),
    ("features.user", pa.array(["a", None, "c", "d"]), "features.user: expected a string"),
    ("features.user", pa.array(["a", "x" * 1025, "c", "d"]), "features.user: expected"),
    ("features.item", pa.array([0, 1, 2, 3], pa.uint64()), None),
    ("dense.age", pa.array([0.5, float("inf"), 0.5, 0.5]), "dense.age: expected a finite"),
    ("dense.age", pa.array([0.5, 1e39, 0.5, 0.5]), "dense.age: expected a finite"),
    ("unit_id", pa.array([1, None, 3, 4], pa.int64()), None),
])
def test_a_bad_row_is_dead_lettered_alone_with_its_reason(column: str, value: pa.Array,
                                                          reason: str | None) -> None:
    cols = _good_cols() | {column: value}
    batch, letters = wire.dead_letters(_message(cols), SCHEMA, "events", 3, 42)
    if reason is None:
        assert letters == [] and len(batch) == 4
        return
    assert len(batch) == 3 and batch.event_ids == ["e0", "e2", "e3"]
    (letter,) = [wire.parse_dlq_record(v) for v in letters]
    assert letter["reason"].startswith(reason), letter["reason"]
    assert (letter["partition"], letter["offset"], letter["event_index"]) == (3, 42, 1)
    assert orjson.loads(letter["original"])["ts"] == cols["ts"][1].as_py() or column == "ts"


def test_ids_beyond_int64_are_refused_per_row() -> None:
    cols = _good_cols() | {"features.item": pa.array([0, 1, 2, (1 << 64) - 1], pa.uint64())}
    batch, letters = wire.dead_letters(_message(cols), SCHEMA, "events", 0, 0)
    assert len(batch) == 3
    assert wire.parse_dlq_record(letters[0])["reason"].startswith("features.item: expected")


def _without(cols: dict[str, pa.Array], name: str) -> dict[str, pa.Array]:
    return {k: v for k, v in cols.items() if k != name}


@pytest.mark.parametrize(("value", "reason"), [
    (_message(_good_cols(), schema_name="other"), "schema: expected 'toy', got 'other'"),
    (_message(_without(_good_cols(), "label")), "columns: missing ['label']"),
    (_message(_good_cols() | {"extra": pa.array([1, 2, 3, 4])}), "unknown ['extra']"),
    (_message(_good_cols() | {"ids.user": pa.array([1, 2, 3, 4])}),
     "columns: expected exactly one of ids.user and features.user"),
    (_message(_without(_good_cols(), "features.user") | {"ids.user": pa.array(["1"] * 4)}),
     "ids.user: column of type string not accepted"),
    (_message(_good_cols() | {"label": pa.array([0.0, 1.0, 0.0, 1.0])}),
     "label: column of type double not accepted"),
    (_message(_good_cols(), compression="zstd"), "compressed Arrow buffers are not accepted"),
    (_message(_good_cols(), compression="lz4"), "compressed Arrow buffers are not accepted"),
    (_message(_good_cols())[:200], "not an Arrow IPC stream"),
    (_message(_good_cols()) + b"\x00" * 8, "bytes after the Arrow stream's end"),
    (b"\xff\xff\xff\xff" + b"\x00" * 3, "not an Arrow IPC stream"),
])
def test_a_message_that_does_not_fit_is_refused_whole(value: bytes, reason: str) -> None:
    batch, letters = wire.dead_letters(value, SCHEMA, "events", 1, 7)
    assert len(batch) == 0
    (letter,) = [wire.parse_dlq_record(v) for v in letters]
    assert reason in letter["reason"], letter["reason"]
    assert letter["event_index"] is None and letter["original_bytes"] == len(value)


def test_too_many_rows_are_refused_before_decoding() -> None:
    n = wire.MAX_ARROW_EVENTS + 1
    batch = SparseBatch(DatasetSchema("one", fields=("f",)), labels=np.zeros(n, np.float32),
                        ids=np.zeros((n, 1), np.int64), timestamps=np.zeros(n, np.int64))
    value = wire.encode_arrow(batch, ["e"] * n)
    with pytest.raises(wire.MessageError, match="more than 65536 events"):
        wire.read_arrow(value, batch.schema)


def test_a_dictionary_column_is_refused() -> None:
    cols = _good_cols() | {"features.user": pa.array(["a", "b", "a", "b"]).dictionary_encode()}
    with pytest.raises(wire.MessageError):
        wire.read_arrow(_message(cols), SCHEMA)


_VALID = _message(_good_cols(8))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)),
                min_size=1, max_size=6),
       st.integers(4, len(_VALID)))
def test_corrupted_arrow_bytes_never_raise(flips: list[tuple[int, int]], cut: int) -> None:
    """Bytes of a valid message with some flipped and its tail cut: a dead letter or events,
    never an exception, and never more events than rows sent."""
    value = bytearray(_VALID[:cut])
    for pos, byte in flips:
        if pos < len(value):
            value[pos] = byte
    batch, letters = wire.dead_letters(bytes(value), SCHEMA, "events", 0, 0)
    assert len(batch) + len(letters) <= 8 + 1
    assert all(wire.parse_dlq_record(v)["reason"] for v in letters)


def test_replay_sends_arrow_by_default_and_json_on_request() -> None:
    """encode_arrow from a reader's batch is what replay sends: readable back with the
    event ids replay gives (`spec:row`)."""
    from services.stack.replay import _messages

    batch, _ = _batch(10)
    ids = [f"toy:{i}" for i in range(10)]
    arrow = list(_messages(batch, ids, per_msg=4, fmt="arrow"))
    assert [n for _, n in arrow] == [4, 4, 2] and all(wire.is_arrow(v) for v, _ in arrow)
    got = [e for v, _ in arrow for e in wire.read_arrow(v, SCHEMA)[0].event_ids]
    assert got == ids
    json_msgs = list(_messages(batch, ids, per_msg=4, fmt="json"))
    assert [len(orjson.loads(v)) for v, _ in json_msgs] == [4, 4, 2]
    assert not any(wire.is_arrow(v) for v, _ in json_msgs)
