"""Wire formats: packed embedding records, event validation, dead letters, version records."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from models.policy import EmbeddingExport
from services import wire
from storage.batch import DatasetSchema, SparseBatch, hash_values

SCHEMA = DatasetSchema("toy", fields=("user", "item"), dense=("age",))
WIDTHS = (2, 2, 4, 8)  # narrow first chunks, D = 16


def _event(**over: object) -> dict[str, object]:
    ev: dict[str, object] = {"event_id": "e1", "ts": 1.5, "label": 1, "unit_id": 7,
                             "ids": {"user": 3, "item": -4}, "dense": {"age": 0.5},
                             "schema": "toy"}
    ev.update(over)
    return {k: v for k, v in ev.items() if v is not _DROP}


_DROP = object()


def _read(value: bytes | None) -> tuple[wire.EventBatch, list[tuple[str, bytes]]]:
    """One events message as the trainer reads it: (valid events, [(reason, original)] from
    its dead letters)."""
    batch, letters = wire.dead_letters(value, SCHEMA, "events", 0, 0)
    docs = [wire.parse_dlq_record(v) for v in letters]
    return batch, [(d["reason"], d["original"]) for d in docs]


# ------------------------------------------------------------------ packed records


def test_pack_unpack_round_trip_with_pruned_chunks() -> None:
    rng = np.random.default_rng(0)
    masks = np.array([0b0001, 0b0011, 0b1111, 0b0101, 0b1000], np.uint32)  # any masks
    values = rng.standard_normal((5, 16)).astype(np.float32)
    records = wire.pack_records(masks, values, WIDTHS)
    stored = np.array([2, 4, 16, 6, 8])
    assert [len(r) for r in records] == list(4 + 4 * stored)
    assert [int.from_bytes(r[:4], "little") for r in records] == masks.tolist()
    # the float32 values of the stored chunks, in position order, little-endian
    assert np.frombuffer(records[3][4:], "<f4").tolist() == np.r_[values[3, :2],
                                                                   values[3, 4:8]].tolist()
    out, found = wire.unpack_records(records[:2] + [None] + records[2:], WIDTHS, 16)
    assert found.tolist() == [True, True, False, True, True, True]
    expected = np.where(np.repeat((masks[:, None] >> np.arange(4)) & 1, WIDTHS, 1) > 0,
                        values, 0.0)
    np.testing.assert_array_equal(out[[0, 1, 3, 4, 5]], expected)
    assert not out[2].any()
    np.testing.assert_array_equal(wire.record_masks(records + [None]), np.r_[masks, 0])


def test_unpack_rejects_corrupt_records() -> None:
    good = wire.pack_records(np.array([0b11], np.uint32), np.ones((1, 16), np.float32),
                             WIDTHS)[0]
    with pytest.raises(ValueError, match="does not match"):
        wire.unpack_records([good[:-4]], WIDTHS)
    with pytest.raises(ValueError, match="beyond"):
        wire.unpack_records([(1 << 7).to_bytes(4, "little")], WIDTHS)
    with pytest.raises(ValueError, match="multiple of 4"):
        wire.unpack_records([b"\x01\x00"], WIDTHS)


def test_pack_export_groups_sets_and_deletes_by_bucket() -> None:
    values = np.arange(3 * 16, dtype=np.float32).reshape(3, 16)
    export = EmbeddingExport(
        fields=np.array([0, 1, 1], np.int16), keys=np.array([5, -9, 2**62], np.int64),
        masks=np.array([0b1, 0, 0b11], np.uint32), values=values, widths=WIDTHS,
        deleted_fields=np.array([0], np.int16), deleted_keys=np.array([77], np.int64))
    packed = wire.pack_export(export, 4)
    assert (packed.entries_written, packed.entries_deleted) == (2, 2)
    assert packed.record_bytes == (4 + 8) + (4 + 16) == 12 + packed.max_record_bytes
    sets = {n: r for w in packed.buckets for n, r in zip(w.names, w.records, strict=True)}
    deletes = {n for w in packed.buckets for n in w.deletes}
    user5, item_big = wire.hash_fields(np.array([0, 1]), np.array([5, 2**62]))
    assert set(sets) == {user5, item_big}
    assert deletes == set(wire.hash_fields(np.array([1, 0]), np.array([-9, 77])))
    where = {n: w.bucket for w in packed.buckets for n in w.names + w.deletes}
    pairs = (np.array([0, 1, 1, 0]), np.array([5, -9, 2**62, 77]))
    names = wire.hash_fields(*pairs)  # every name sits in the bucket bucket_of says
    assert [where[n] for n in names] == wire.bucket_of(*pairs, 4).tolist()
    assert len(set(names)) == 4 and all(int(n) for n in names)  # decimal integers
    out, _ = wire.unpack_records([sets[item_big]], WIDTHS)
    np.testing.assert_array_equal(out[0, :4], values[2, :4])


def _random_export(n: int, seed: int) -> EmbeddingExport:
    rng = np.random.default_rng(seed)
    keys = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64)
    keys[:min(n, 3)] = (0, -2**63, 2**63 - 1)[:n]  # the longest decimals and zero
    return EmbeddingExport(
        fields=rng.integers(0, 26, n).astype(np.int16), keys=keys,
        masks=rng.integers(0, 16, n).astype(np.uint32),
        values=rng.normal(size=(n, 16)).astype(np.float32), widths=WIDTHS,
        deleted_fields=rng.integers(0, 26, 40).astype(np.int16),
        deleted_keys=rng.integers(-2**63, 2**63 - 1, 40, dtype=np.int64))


def test_pack_buckets_holds_what_pack_export_holds_as_byte_strings() -> None:
    export = _random_export(3000, 1)
    old, new = wire.pack_export(export, 64), wire.pack_buckets(export, 64)
    assert [w.bucket for w in old.buckets] == new.buckets
    for i, w in enumerate(old.buckets):
        assert new.names[i] == b"".join(n + b" " for n in w.names)
        assert new.lengths[i] == np.array([len(r) for r in w.records], "<u4").tobytes()
        assert new.records[i] == b"".join(w.records)
        assert sorted(new.deletes[i].split()) == sorted(w.deletes)
        assert new.changes[i] == len(w.names) + len(w.deletes)
    assert (new.entries_written, new.entries_deleted, new.record_bytes,
            new.max_record_bytes) == (old.entries_written, old.entries_deleted,
                                      old.record_bytes, old.max_record_bytes)
    names = [n for b in new.names for n in b.split()]
    assert [int(n) for n in names] == new.set_numbers.tolist()
    assert new.set_sizes.tolist() == [len(r) for w in old.buckets for r in w.records]
    assert wire.pack_records(np.zeros(0, np.uint32), np.zeros((0, 16), np.float32),
                             WIDTHS) == []
    assert wire.pack_export(_random_export(0, 2), 64).entries_written == 0
    only_deletes = wire.pack_buckets(_random_export(0, 2), 64)  # no set: deletes alone
    assert (only_deletes.entries_written, only_deletes.entries_deleted) == (0, 40)
    assert set(only_deletes.names) == {b""} and set(only_deletes.records) == {b""}


def test_an_id_evicted_and_admitted_again_is_set_not_deleted() -> None:
    """The store lists an ID evicted since the last export among the deleted even when it was
    admitted again (and is live, in the export): its record must be written, not deleted."""
    export = EmbeddingExport(
        fields=np.array([0, 1], np.int16), keys=np.array([5, 6], np.int64),
        masks=np.array([0b1, 0b1], np.uint32), values=np.ones((2, 16), np.float32),
        widths=WIDTHS, deleted_fields=np.array([0, 1], np.int16),
        deleted_keys=np.array([5, 7], np.int64))
    gone = wire.hash_fields(np.array([1]), np.array([7]))
    for packed in (wire.pack_export(export, 1), wire.pack_buckets(export, 1)):
        assert packed.entries_written == 2 and packed.entries_deleted == 1
    assert wire.pack_export(export, 1).buckets[0].deletes == gone
    assert wire.pack_buckets(export, 1).deletes[0].split() == gone


def test_buckets_spread_ids_and_manifests_round_trip() -> None:
    keys = np.arange(100_000, dtype=np.int64)  # sequential IDs: the worst case for a modulo
    counts = np.bincount(wire.bucket_of(np.zeros_like(keys), keys, 1024), minlength=1024)
    assert counts.min() > 50 and counts.max() < 150  # ~97.7 each, Poisson-like spread
    assert wire.bucket_count(3000, 64) == 64 and wire.bucket_count(0, 64) == 1
    m = np.array([0, wire.generation(7, 3), wire.generation(8, 2**20 + 5), 0], np.uint64)
    assert wire.manifest_from_bytes(wire.manifest_to_bytes(m)).tolist() == m.tolist()
    assert wire.generation_version(int(m[2])) == 8
    assert wire.changed_buckets(m, m[::-1]).tolist() == [False, True, True, False]
    with pytest.raises(ValueError):
        wire.manifest_from_bytes(b"\0" * 24)  # 3 buckets: not a power of two


def test_key_layout() -> None:
    assert wire.dense_key("m", 3) == "chunkrec:{m}:dense:3"
    assert wire.manifest_key("m", 3) == "chunkrec:{m}:manifest:3"
    assert wire.version_key("m") == "chunkrec:{m}:version"
    assert wire.owner_key("m") == "chunkrec:{m}:owner"
    assert wire.bucket_key("m", 7, 9) == "chunkrec:{m:7}:emb:9"
    assert wire.versions_channel("m") == "chunkrec:m:versions"
    assert wire.MODELS_SET == "chunkrec:models"
    with pytest.raises(ValueError):
        wire.check_model_name("bad:name")
    with pytest.raises(ValueError):
        wire.check_model_name("bad{tag}")


# ------------------------------------------------------------------ events


def test_batch_to_events_round_trips_through_validation() -> None:
    batch = SparseBatch(SCHEMA, labels=np.array([1, 0], np.float32),
                        ids=np.array([[1, 2], [-(2**63), 2**63 - 1]]),
                        dense=np.array([[0.25], [1.5]], np.float32),
                        unit_ids=np.array([10, 11]), timestamps=np.array([100, 101]))
    events = wire.batch_to_events(batch, ["a:0", "a:1"])
    got, bad = _read(wire.encode_events(events))
    assert bad == []
    assert got.event_ids == ["a:0", "a:1"]
    for name in ("labels", "ids", "dense", "unit_ids", "timestamps"):
        np.testing.assert_array_equal(getattr(got.batch, name), getattr(batch, name))


def test_raw_features_hash_like_the_readers() -> None:
    ev = _event(ids=_DROP, features={"user": "196", "item": 242}, unit_id="alice")
    got, bad = _read(orjson.dumps([ev]))
    assert bad == []
    np.testing.assert_array_equal(got.batch.ids[0], hash_values(np.array(["196", "242"],
                                                                         dtype=object)))
    assert got.batch.unit_ids[0] == hash_values(np.array(["alice"], dtype=object))[0]


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"label": 2}, "label"),
        ({"label": True}, "label"),
        ({"ts": math.inf}, "ts"),
        ({"ts": "yesterday"}, "ts"),
        ({"event_id": ""}, "event_id"),
        ({"event_id": "x" * 300}, "event_id"),
        ({"ids": {"user": 1}}, "missing fields"),
        ({"ids": {"user": 1, "item": 2, "shop": 3}}, "unknown fields"),
        ({"ids": {"user": 1, "item": 2**63}}, "ids.item"),
        ({"ids": {"user": 1.5, "item": 2}}, "ids.user"),
        ({"features": {"user": "a", "item": "b"}}, "exactly one"),
        ({"ids": _DROP}, "exactly one"),
        ({"ids": _DROP, "features": {"user": "a" * 2000, "item": "b"}}, "features.user"),
        ({"dense": {"age": math.nan}}, "dense.age"),
        ({"dense": _DROP}, "dense"),
        ({"schema": "other"}, "schema"),
        ({"extra": 1}, "unknown keys"),
        ({"label": _DROP}, "missing keys"),
        ({"unit_id": [1]}, "unit_id"),
    ],
)
def test_invalid_events_are_reported_with_their_reason(over: dict[str, object],
                                                       reason: str) -> None:
    good = _event(event_id="good")
    bad_ev = _event(**over)
    value = orjson.dumps([good, bad_ev])
    got, bad = _read(value)
    assert got.event_ids == ["good"]
    assert len(bad) == 1 and reason in bad[0][0]
    assert isinstance(bad[0][1], bytes)


@pytest.mark.parametrize(
    "value", [b"\xff\xfe not json", b"{\"a\": ", b"42", b"", None, b"[{\"ts\": 1e999}]"])
def test_malformed_messages_dead_letter_whole(value: bytes | None) -> None:
    got, bad = _read(value)
    assert len(got) == 0 and len(bad) == 1
    assert bad[0][0].startswith("message:")
    assert bad[0][1] == (value or b"")


def test_dlq_record_keeps_the_original_bytes() -> None:
    _, letters = wire.dead_letters(b"\xff\x00 binary", SCHEMA, "events", 1, 99)
    doc = wire.parse_dlq_record(letters[0])
    assert doc["original"] == b"\xff\x00 binary" and doc["original_encoding"] == "base64"
    assert (doc["topic"], doc["partition"], doc["offset"], doc["event_index"]) == (
        "events", 1, 99, None)
    _, letters = wire.dead_letters(orjson.dumps([_event(), _event(label=5)]), SCHEMA,
                                   "events", 0, 3)
    doc = wire.parse_dlq_record(letters[0])
    assert doc["event_index"] == 1 and "label" in doc["reason"]
    assert orjson.loads(doc["original"])["label"] == 5


def test_event_checksum_is_order_independent_and_mod_2_64() -> None:
    ids = [f"d:{i}" for i in range(1000)]
    whole = wire.event_id_checksum(ids)
    parts = wire.add_checksums(wire.event_id_checksum(ids[500:]),
                               wire.event_id_checksum(ids[:500][::-1]))
    assert whole == parts and 0 <= whole < 2**64
    assert wire.event_id_checksum(ids[:-1]) != whole


def test_version_record_round_trip() -> None:
    rec = wire.ModelVersion(
        model="m", version=4, created_at=1.0, policy="fiited:dim=16", schema="toy",
        fields=["user", "item"], dense_names=["age"], arch="dlrm", dim=16,
        widths=list(WIDTHS), dense_key=wire.dense_key("m", 4), full=False, entries_written=3,
        entries_deleted=1, embedding_bytes=1000, embedding_value_bytes=600,
        redis_embedding_bytes=700, redis_embedding_records=3, events_applied=10,
        events_checksum=str(2**64 - 1), events_invalid=2, offsets={"events:0": 5},
        metrics={"auc": 0.7, "logloss": None})
    back = wire.ModelVersion.from_json(rec.to_json())
    assert back == rec
    assert back.schema_obj == SCHEMA


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_record_holding_a_non_finite_value_is_corrupt(bad: float) -> None:
    """No trainer writes one; serving would score NaN with it (and the router and joiner
    would carry a null score on): it reads as corrupt, hence as missing in serving."""
    values = np.zeros(WIDTHS[0], np.float32)
    values[-1] = bad
    record = (1).to_bytes(4, "little") + values.tobytes()
    with pytest.raises(ValueError, match="not finite"):
        wire.unpack_records([record], WIDTHS)


def test_dense_weights_that_are_not_finite_do_not_load() -> None:
    import torch

    from models.networks import build_model
    from services.serving.registry import build_loaded_model

    schema = DatasetSchema("toy", fields=("user", "item"), dense=("age",))
    net = build_model("dlrm", schema, dim=16)
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] = float("nan")
    record = wire.ModelVersion(
        model="nan", version=1, created_at=0.0, policy="fixed:16", schema="toy",
        fields=["user", "item"], dense_names=["age"], arch="dlrm", dim=16, widths=[16],
        dense_key="", full=True, entries_written=0, entries_deleted=0, embedding_bytes=0,
        embedding_value_bytes=0, redis_embedding_bytes=0, redis_embedding_records=0,
        events_applied=0, events_checksum="0", events_invalid=0, offsets={})
    with pytest.raises(ValueError, match="not finite"):
        build_loaded_model(record, wire.dense_to_bytes(net.state_dict()), bytes(8), 100)


# ------------------------------------------------------------------ names, exposures, feedback


@pytest.mark.parametrize("name", ["m", "fiited-v2.1_a", "x" * 64, "", "x" * 65, "bad:name",
                                  "a b", "é"])
def test_model_name_type_and_check_agree(name: str) -> None:
    from pydantic import TypeAdapter, ValidationError

    try:
        wire.check_model_name(name)
        ok = True
    except ValueError:
        ok = False
    try:
        TypeAdapter(wire.ModelName).validate_python(name)
        typed = True
    except ValidationError:
        typed = False
    assert ok == typed == (name in ("m", "fiited-v2.1_a", "x" * 64))


def test_exposure_string_bounds_are_the_database_columns() -> None:
    from storage.db.models import Exposure, Outcome

    def chars(column: object) -> int:
        return int(column.property.columns[0].type.length)  # type: ignore[attr-defined]

    assert wire.REQUEST_ID_CHARS == chars(Exposure.request_id)
    assert wire.UNIT_ID_CHARS == chars(Exposure.unit_id)
    assert wire.ITEM_CHARS == chars(Outcome.item)


def test_typed_exposure_and_feedback_round_trip() -> None:
    shown = [wire.ShownMsg.model_construct(item=str(k), position=k, score=0.5,
                                           features={"user": "u", "item": k}) for k in range(3)]
    exp = wire.ExposureMsg.model_construct(
        request_id="r1", experiment_id=1, phase=1, arm="a", arm_id=2, model="m",
        model_version=3, unit_id="u", ts=10.0, latency_ms=1.5, shown=shown)
    doc, repeats = wire.read_exposure(orjson.dumps(exp.model_dump()))
    assert repeats == 0 and doc == exp.model_dump()
    fb = wire.FeedbackMsg.model_construct(request_id="r1", item="2", clicked=True, ts=11.0)
    assert wire.read_feedback(orjson.dumps(fb.model_dump())) == fb.model_dump()


def test_raw_ids_are_one_conversion_for_events_and_serving() -> None:
    from services.serving.scorer import RawIdHasher
    from storage.batch import hash_raw

    raw: list[str | int] = ["196", 196, "", "alice", -(2**63)]
    want = hash_values(np.array(["196", "196", "", "alice", str(-(2**63))], dtype=object))
    np.testing.assert_array_equal(hash_raw(raw), want)
    np.testing.assert_array_equal(RawIdHasher().hash(raw), want)
    ev = _event(ids=_DROP, features={"user": 196, "item": "alice"})
    got, _ = _read(orjson.dumps([ev]))
    np.testing.assert_array_equal(got.batch.ids[0], want[[0, 3]])
