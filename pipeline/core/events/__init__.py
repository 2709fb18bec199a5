"""CloudEvents codec: vehicle frames and derived events to Kafka records, and raw records to columns.

Frames are produced as CloudEvents 1.0 in Kafka binary content mode (attributes in `ce_*`
headers, data as JSON via orjson); structured mode (`application/cloudevents+json`) is
accepted on input. `decode_records` turns a batch of raw records into columnar `Readings`
without a Python loop per reading, and dead-letters each bad record with a stable reason.

The `cloudevents` SDK's Kafka binding is the reference encoder (`via_sdk=True`, and
`read_event` for the edges). The default encode path writes the same headers directly and
the decoder reads the few `ce_*` headers itself: on the hot path the SDK's per-event
validation and object building add a third or more to each record's cost
(scripts/benchmarks/decode.py). Unit tests keep both paths in agreement.

Modules: `encode` (frames and derived events to Kafka records, reading single events, and
the names and reasons they share), `decode` (a batch of raw frame records to columns, with
dead letters). Import from this package; the single dead-letter reasons and content types
are named in `encode` (`DECODE_REASONS` here lists them all).
"""

from pipeline.core.events.decode import decode_records
from pipeline.core.events.encode import (
    DECODE_REASONS,
    FRAME_KIND_OF_TYPE,
    FRAME_TYPES,
    EncodedRecord,
    FrameKind,
    encode_event,
    encode_events,
    encode_frame,
    epoch_ms,
    frame_headers,
    frame_id,
    frame_source,
    read_event,
    rfc3339,
)

__all__ = [
    "DECODE_REASONS", "FRAME_KIND_OF_TYPE", "FRAME_TYPES", "EncodedRecord", "FrameKind", "decode_records",
    "encode_event", "encode_events", "encode_frame", "epoch_ms", "frame_headers", "frame_id", "frame_source",
    "read_event", "rfc3339",
]
