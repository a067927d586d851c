"""The wire formats between producers, the trainer, serving, the router and the joiner,
each defined once: every process that writes or reads Kafka or Redis imports this package;
nothing else spells a topic, a key or a byte layout.

One module per format, each opening with the format itself:

    events.py        Kafka `events`: click events (JSON arrays), their validation into an
                     EventBatch, the applied-events checksum
    arrow_events.py  Kafka `events` too: many events a message as Arrow IPC columns (what
                     replay sends), validated and decoded as columns
    dead_letters.py  Kafka `events.dlq`: the dead letter of an invalid event or message,
                     bounded in size
    exposures.py     Kafka `exposures` (router -> joiner): ExposureMsg / ShownMsg, typed and
                     read strictly; the joined event id
    feedback.py      Kafka `feedback` (router -> joiner): FeedbackMsg
    redis_keys.py    the Redis key layout for model M (embedding buckets, manifest, dense blob,
                     version record, version channel, owner lease and fence; hash tags)
    buckets.py       records grouped into bucket hashes; copy-on-write generations, manifests
    records.py       the packed embedding record (chunk mask + stored chunks' values)
    versions.py      the model version record (ModelVersion, JSON) and the dense blob
    names.py         the model-name rule (ModelName, check_model_name)

Callers use the package: `from services import wire; wire.dead_letters(...)`.
"""

from services.wire.arrow_events import MAX_ARROW_EVENTS, encode_arrow, is_arrow, read_arrow
from services.wire.buckets import (
    SENTINEL,
    bucket_count,
    bucket_of,
    changed_buckets,
    current_bucket_keys,
    generation,
    generation_version,
    hash_fields,
    manifest_from_bytes,
    manifest_to_bytes,
    read_current,
    sample_records,
)
from services.wire.dead_letters import (
    DLQ_RECORD_MAX_BYTES,
    DLQ_TOPIC,
    MAX_DLQ_ORIGINAL_BYTES,
    MAX_DLQ_REASON_CHARS,
    dead_letters,
    dlq_record,
    dlq_stub,
    parse_dlq_record,
)
from services.wire.events import (
    EVENTS_TOPIC,
    FLOAT32_MAX,
    INT64_MAX,
    INT64_MIN,
    MAX_EVENT_ID_CHARS,
    MAX_EVENTS_PER_MESSAGE,
    MAX_MESSAGE_BYTES,
    MAX_SCHEMA_CHARS,
    MAX_STRING_CHARS,
    MAX_TS_S,
    EventBatch,
    MessageError,
    add_checksums,
    batch_to_events,
    encode_events,
    event_id_checksum,
    event_id_hashes,
    parse_message,
    validate_events,
)
from services.wire.exposures import (
    EXPOSURES_TOPIC,
    ITEM_CHARS,
    MAX_SHOWN,
    REQUEST_ID_CHARS,
    UNIT_ID_CHARS,
    BadMessage,
    ExposureMsg,
    ShownMsg,
    joined_event_id,
    read_exposure,
)
from services.wire.feedback import FEEDBACK_TOPIC, FeedbackMsg, read_feedback
from services.wire.names import MODEL_NAME_PATTERN, ModelName, check_model_name
from services.wire.records import (
    BucketWrite,
    PackedBuckets,
    PackedExport,
    pack_buckets,
    pack_export,
    pack_records,
    record_masks,
    unpack_records,
)
from services.wire.redis_keys import (
    KEY_PREFIX,
    MODELS_SET,
    bucket_key,
    bucket_pattern,
    dense_key,
    fence_key,
    manifest_key,
    owner_key,
    version_key,
    versions_channel,
)
from services.wire.versions import (
    WIRE_VERSION,
    ModelVersion,
    dense_from_bytes,
    dense_to_bytes,
    finite_or_none,
)

__all__ = [
    # arrow events
    "MAX_ARROW_EVENTS", "encode_arrow", "is_arrow", "read_arrow",
    # events
    "EVENTS_TOPIC", "FLOAT32_MAX", "INT64_MAX", "INT64_MIN", "MAX_EVENT_ID_CHARS",
    "MAX_EVENTS_PER_MESSAGE", "MAX_MESSAGE_BYTES", "MAX_SCHEMA_CHARS", "MAX_STRING_CHARS",
    "MAX_TS_S", "EventBatch", "MessageError", "add_checksums", "batch_to_events",
    "encode_events", "event_id_checksum", "event_id_hashes", "parse_message", "validate_events",
    # dead letters
    "DLQ_RECORD_MAX_BYTES", "DLQ_TOPIC", "MAX_DLQ_ORIGINAL_BYTES", "MAX_DLQ_REASON_CHARS",
    "dead_letters", "dlq_record", "dlq_stub", "parse_dlq_record",
    # exposures and feedback
    "EXPOSURES_TOPIC", "ITEM_CHARS", "MAX_SHOWN", "REQUEST_ID_CHARS", "UNIT_ID_CHARS",
    "BadMessage", "ExposureMsg", "ShownMsg", "joined_event_id",
    "read_exposure", "FEEDBACK_TOPIC", "FeedbackMsg", "read_feedback",
    # names
    "MODEL_NAME_PATTERN", "ModelName", "check_model_name",
    # packed embedding records
    "BucketWrite", "PackedBuckets", "PackedExport", "pack_buckets", "pack_export",
    "pack_records", "record_masks", "unpack_records",
    # buckets and manifests
    "SENTINEL", "bucket_count", "bucket_of", "changed_buckets", "current_bucket_keys", "generation",
    "generation_version", "hash_fields", "manifest_from_bytes", "manifest_to_bytes",
    "read_current", "sample_records",
    # Redis keys
    "KEY_PREFIX", "MODELS_SET", "bucket_key", "bucket_pattern", "dense_key", "fence_key",
    "manifest_key", "owner_key", "version_key", "versions_channel",
    # version record
    "WIRE_VERSION", "ModelVersion", "dense_from_bytes", "dense_to_bytes", "finite_or_none",
]
