"""Encoding: vehicle frames and derived events as CloudEvents 1.0 Kafka records (binary mode,
the SDK as reference encoder), reading one event back, and the frame types and dead-letter
reasons the decoder shares."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import numpy as np
import orjson
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from pipeline.core.batch import EventBatch, RawRecord, deterministic_id
from pipeline.core.errors import DecodeError

FrameKind = Literal["sensor", "gps"]

SPECVERSION: Final = "1.0"
JSON_CONTENT_TYPE: Final = "application/json"
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
FRAME_TYPES: Final[dict[str, str]] = {
    "sensor": "fleet.vehicle.sensor.frame",
    "gps": "fleet.vehicle.gps.frame",
}
FRAME_KIND_OF_TYPE: Final[dict[str, str]] = {v: k for k, v in FRAME_TYPES.items()}

# Reason codes of decode dead letters (stable: used in metrics and the DLQ).
EMPTY_VALUE: Final = "empty_value"
OVERSIZED: Final = "oversized"
BAD_JSON: Final = "bad_json"
BAD_CLOUDEVENT: Final = "bad_cloudevent"
MISSING_FIELD: Final = "missing_field"
WRONG_TYPE: Final = "wrong_type"
LENGTH_MISMATCH: Final = "length_mismatch"
VIN_MISMATCH: Final = "vin_mismatch"
NO_SAMPLES: Final = "no_samples"
DECODE_REASONS: Final = (EMPTY_VALUE, OVERSIZED, BAD_JSON, BAD_CLOUDEVENT, MISSING_FIELD,
                         WRONG_TYPE, LENGTH_MISMATCH, VIN_MISMATCH, NO_SAMPLES)

_ORJSON_OPTS: Final = orjson.OPT_SERIALIZE_NUMPY
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_JSON_CT: Final = re.compile(r"^(application|text)/([a-zA-Z0-9\-.]+\+)?json(;.*)?$")
_EXTENSION_NAME: Final = re.compile(r"^[a-z0-9]+$")
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_CORE_ATTRS: Final = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype",
                      "dataschema")


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """A Kafka record ready to produce: key, value, headers and record timestamp (epoch ms)."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int

    def to_raw(self, topic: str = "", partition: int = 0, offset: int = 0,
               timestamp_ms: int | None = None) -> RawRecord:
        """The record as a consumer would see it (for in-memory runs and tests)."""
        return RawRecord(topic, partition, offset, self.key, self.value, tuple(self.headers),
                         self.timestamp_ms if timestamp_ms is None else timestamp_ms)


# --- encoding ------------------------------------------------------------------------------


class _OrjsonFormat(JSONFormat):
    """The SDK's JSON format with data written and read by orjson (numpy arrays allowed)."""

    def write_data(self, data: dict[str, Any] | str | bytes | None, datacontenttype: str | None) -> bytes:
        if isinstance(data, dict):
            return orjson.dumps(data, option=_ORJSON_OPTS)
        return super().write_data(data, datacontenttype)

    def read_data(self, body: bytes, datacontenttype: str | None) -> dict[str, Any] | str | bytes | None:
        if body and _JSON_CT.match(datacontenttype or JSON_CONTENT_TYPE):
            try:
                parsed: dict[str, Any] = orjson.loads(body)
                return parsed
            except orjson.JSONDecodeError:
                pass
        return super().read_data(body, datacontenttype)


_FORMAT: Final = _OrjsonFormat()


_SECOND_TEXT: dict[int, str] = {}  # epoch second -> "YYYY-MM-DDTHH:MM:SS" (bounded, see rfc3339)


def rfc3339(epoch_ms: int) -> str:
    """Epoch milliseconds as an RFC 3339 UTC timestamp, the form the SDK writes (`...Z`).

    That is `datetime.isoformat` of the UTC time with `+00:00` written `Z`: no fraction on a
    whole second, else six digits (`.123000Z`). The date and time of day are formatted once
    per second and cached; encoders stamp many events within the same seconds.
    """
    seconds, ms = divmod(int(epoch_ms), 1000)
    head = _SECOND_TEXT.get(seconds)
    if head is None:
        head = (_EPOCH + timedelta(seconds=seconds)).replace(tzinfo=None).isoformat()
        if len(_SECOND_TEXT) >= 1 << 16:
            _SECOND_TEXT.clear()
        _SECOND_TEXT[seconds] = head
    return f"{head}.{ms:03d}000Z" if ms else head + "Z"


def epoch_ms(value: datetime) -> int:
    """A timezone-aware datetime as epoch milliseconds."""
    delta = value - _EPOCH
    return (delta.days * 86_400_000) + (delta.seconds * 1000) + (delta.microseconds // 1000)


def frame_id(vin: str, seq: int, kind: FrameKind | str) -> str:
    """Deterministic CloudEvent id of a frame: the same vehicle, kind and seq give the same id."""
    return deterministic_id("frame", kind, vin, int(seq))


def frame_source(vin: str) -> str:
    """CloudEvent source of a vehicle's frames."""
    return f"/vehicles/{vin}"


def _header_text(value: Any) -> str:
    """Header form of an attribute value (CloudEvents canonical string encoding)."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _frame_attributes(kind: str, frame: Mapping[str, Any]) -> list[tuple[str, str]]:
    try:
        ce_type = FRAME_TYPES[kind]
    except KeyError:
        raise ValueError(f"unknown frame kind {kind!r}; expected 'sensor' or 'gps'") from None
    vin, seq, sent_at = frame["vin"], frame["seq"], frame["sent_at"]
    if not isinstance(vin, str) or not vin:
        raise ValueError(f"frame vin must be a non-empty string, got {vin!r}")
    return [
        ("specversion", SPECVERSION),
        ("id", frame_id(vin, seq, kind)),
        ("source", frame_source(vin)),
        ("type", ce_type),
        ("subject", vin),
        ("time", rfc3339(sent_at)),
        ("datacontenttype", JSON_CONTENT_TYPE),
        ("partitionkey", vin),
    ]


_FrameHeader = tuple[str, bytes]
# (kind, vin) -> (ce_id hash prefix, the headers before ce_id, between ce_id and ce_time, after ce_time)
_FRAME_HEADERS: dict[tuple[str, str], tuple[bytes, tuple[_FrameHeader, ...], tuple[_FrameHeader, ...],
                                            tuple[_FrameHeader, ...]]] = {}


def frame_headers(kind: str, vin: str, seq: int, sent_at: int) -> tuple[tuple[str, bytes], ...]:
    """The binary-mode CloudEvent headers of a frame (what `encode_frame` sends).

    Only `ce_id` and `ce_time` change from frame to frame; the other headers of a vehicle's
    frames of one kind are encoded once and reused.
    """
    fixed = _FRAME_HEADERS.get((kind, vin)) if isinstance(vin, str) else None  # else: rejected below
    if fixed is None:
        attributes = dict(_frame_attributes(kind, {"vin": vin, "seq": 0, "sent_at": 0}))
        encoded = {name: text.encode("utf-8") for name, text in attributes.items()}
        fixed = (f"frame/{kind}/{vin}/".encode(),  # `frame_id` hashes "frame/<kind>/<vin>/<seq>"
                 (("ce_specversion", encoded["specversion"]),),
                 (("ce_source", encoded["source"]), ("ce_type", encoded["type"]), ("ce_subject", encoded["subject"])),
                 (("content-type", encoded["datacontenttype"]), ("ce_partitionkey", encoded["partitionkey"])))
        if len(_FRAME_HEADERS) >= 1 << 16:
            _FRAME_HEADERS.clear()
        _FRAME_HEADERS[(kind, vin)] = fixed
    id_prefix, before_id, before_time, after_time = fixed
    event_id = hashlib.blake2b(id_prefix + str(int(seq)).encode(), digest_size=16).hexdigest()
    return (*before_id, ("ce_id", event_id.encode()), *before_time,
            ("ce_time", rfc3339(sent_at).encode()), *after_time)


def _direct(attributes: Sequence[tuple[str, str]], data: Any, key: str, timestamp_ms: int) -> EncodedRecord:
    headers = [("content-type" if name == "datacontenttype" else "ce_" + name, text.encode("utf-8"))
               for name, text in attributes]
    return EncodedRecord(key.encode("utf-8"), orjson.dumps(data, option=_ORJSON_OPTS), headers,
                         int(timestamp_ms))


def _via_sdk(attributes: Sequence[tuple[str, str]], data: Any, timestamp_ms: int) -> EncodedRecord:
    attrs: dict[str, Any] = {}
    for name, text in attributes:
        attrs[name] = datetime.fromisoformat(text) if name == "time" else text
    message = ce_kafka.to_binary(CloudEvent(attrs, data), _FORMAT)
    key = message.key
    if key is None:
        raise ValueError("event has no partitionkey")
    return EncodedRecord(key.encode("utf-8") if isinstance(key, str) else bytes(key), message.value,
                         list(message.headers.items()), int(timestamp_ms))


def encode_frame(kind: FrameKind, frame: Mapping[str, Any], *, via_sdk: bool = False) -> EncodedRecord:
    """A vehicle frame as a binary-mode CloudEvent record; key and partitionkey are the VIN.

    `frame` is `{"vin", "seq", "sent_at", "samples": {name: {"t", "v", "u"?}}}`; lists or
    numpy arrays. The record timestamp is `sent_at` (replays may override it with `to_raw`).
    `via_sdk=True` builds the same record through the cloudevents SDK's Kafka binding.
    """
    data = frame if isinstance(frame, dict) else dict(frame)
    if via_sdk:
        return _via_sdk(_frame_attributes(kind, frame), data, frame["sent_at"])
    vin, sent_at = frame["vin"], frame["sent_at"]
    headers = frame_headers(kind, vin, frame["seq"], sent_at)
    return EncodedRecord(vin.encode("utf-8"), orjson.dumps(data, option=_ORJSON_OPTS), list(headers),
                         int(sent_at))


def _event_attributes(attrs: Mapping[str, Any]) -> tuple[list[tuple[str, str]], str, int]:
    """Attributes of a derived event in header form, its Kafka key and its time (epoch ms)."""
    for name in ("id", "type", "source", "time"):
        if attrs.get(name) is None:
            raise ValueError(f"event attribute {name!r} is required")
    time_value = attrs["time"]
    if isinstance(time_value, datetime):
        time_ms = epoch_ms(time_value)
    elif isinstance(time_value, int | np.integer) and not isinstance(time_value, bool):
        time_ms = int(time_value)
    else:
        raise ValueError(f"event time must be epoch ms (int) or an aware datetime, got {time_value!r}")
    key = attrs.get("partitionkey", attrs.get("subject"))
    if key is None:
        raise ValueError("event needs a partitionkey (or subject) for its Kafka key")
    out = [("specversion", SPECVERSION), ("id", _header_text(attrs["id"])),
           ("source", _header_text(attrs["source"])), ("type", _header_text(attrs["type"]))]
    if attrs.get("subject") is not None:
        out.append(("subject", _header_text(attrs["subject"])))
    out.append(("time", rfc3339(time_ms)))
    out.append(("datacontenttype", _header_text(attrs.get("datacontenttype") or JSON_CONTENT_TYPE)))
    if attrs.get("dataschema") is not None:
        out.append(("dataschema", _header_text(attrs["dataschema"])))
    out.append(("partitionkey", _header_text(key)))
    for name, value in attrs.items():
        if name in _CORE_ATTRS or name in ("partitionkey", "specversion") or value is None:
            continue
        if not _EXTENSION_NAME.match(name) or name == "data":
            raise ValueError(f"invalid CloudEvents extension name {name!r} (lowercase letters and digits)")
        out.append((name, _header_text(value)))
    return out, _header_text(key), time_ms


def encode_event(attrs: Mapping[str, Any], data: Mapping[str, Any], *, via_sdk: bool = False) -> EncodedRecord:
    """A derived or routed event as a binary-mode CloudEvent record.

    `attrs` needs `id`, `type`, `source` and `time` (epoch ms or aware datetime) and a
    `partitionkey` or `subject` (the Kafka key); other lowercase names become extensions.
    The record timestamp is the event time.
    """
    attributes, key, time_ms = _event_attributes(attrs)
    payload = data if isinstance(data, dict) else dict(data)
    if via_sdk:
        return _via_sdk(attributes, payload, time_ms)
    return _direct(attributes, payload, key, time_ms)


def encode_events(batch: EventBatch, *, via_sdk: bool = False) -> list[EncodedRecord]:
    """Every row of an event batch as a record (rows become individual events only here)."""
    return [encode_event(attrs, data, via_sdk=via_sdk) for attrs, data in batch.rows()]


# --- reading single events (edges, tests) --------------------------------------------------


def _kafka_message(record: RawRecord) -> ce_kafka.KafkaMessage:
    headers = {name: value for name, value in record.headers if value is not None}
    return ce_kafka.KafkaMessage(headers=headers, key=record.key, value=record.value or b"")


def read_event(record: RawRecord) -> tuple[dict[str, Any], Any]:
    """Attributes and data of any CloudEvent record (binary or structured), via the SDK.

    For the edges and tests (routed topics, the DLQ); the ingest path uses `decode_records`.
    Raises DecodeError(`bad_cloudevent`) if the record is not a valid CloudEvent.
    """
    try:
        event = ce_kafka.from_kafka(_kafka_message(record), _FORMAT, CloudEvent)
    except Exception as exc:  # the SDK raises several unrelated exception types
        raise DecodeError(BAD_CLOUDEVENT, f"{record.where}: {exc}") from exc
    return dict(event.get_attributes()), event.get_data()


