"""Decoding: a batch of raw frame records (binary or structured CloudEvents) into columnar
`Readings` without a Python loop per reading, each bad record dead-lettered with a reason."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt
import orjson

from pipeline.core.batch import DeadLetter, Frames, RawRecord, Readings
from pipeline.core.errors import DecodeError
from pipeline.core.events.encode import (
    _INT64_MAX,
    _INT64_MIN,
    _JSON_CT,
    BAD_CLOUDEVENT,
    BAD_JSON,
    EMPTY_VALUE,
    FRAME_KIND_OF_TYPE,
    FRAME_TYPES,
    JSON_CONTENT_TYPE,
    LENGTH_MISMATCH,
    MISSING_FIELD,
    NO_SAMPLES,
    OVERSIZED,
    SPECVERSION,
    STRUCTURED_CONTENT_TYPE,
    VIN_MISMATCH,
    WRONG_TYPE,
)

# --- decoding frames -----------------------------------------------------------------------


class _Reject(DecodeError):
    """A record that cannot be decoded; carries the field or signal at fault."""

    def __init__(self, reason: str, message: str, **detail: Any) -> None:
        super().__init__(reason, message)
        self.message = message
        self.detail = detail


_SPECVERSION_B: Final = SPECVERSION.encode()
_JSON_CONTENT_TYPE_B: Final = JSON_CONTENT_TYPE.encode()
_STRUCTURED_B: Final = STRUCTURED_CONTENT_TYPE.encode()
_STRUCTURED_LEN: Final = len(_STRUCTURED_B)
_FRAME_TYPES_B: Final = frozenset(t.encode() for t in FRAME_TYPES.values())


def _show(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _binary_envelope(headers: dict[str, bytes]) -> tuple[bytes | None, bytes | None]:
    """Check the `ce_*` headers of a binary-mode frame; returns (partitionkey, subject) bytes."""
    spec = headers.get("ce_specversion")
    if spec != _SPECVERSION_B:
        if spec is None:
            raise _Reject(BAD_CLOUDEVENT, "missing ce_specversion header", field="ce_specversion")
        raise _Reject(BAD_CLOUDEVENT, f"unsupported ce_specversion {_show(spec)!r}", field="ce_specversion")
    for name in ("ce_id", "ce_source"):
        hvalue = headers.get(name)
        if not hvalue:
            raise _Reject(BAD_CLOUDEVENT, f"missing or empty {name} header", field=name)
        try:
            hvalue.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject(BAD_CLOUDEVENT, f"header {name} is not UTF-8", field=name) from None
    ce_type = headers.get("ce_type")
    if ce_type not in _FRAME_TYPES_B:
        if not ce_type:
            raise _Reject(BAD_CLOUDEVENT, "missing or empty ce_type header", field="ce_type")
        raise _Reject(BAD_CLOUDEVENT, f"wrong ce_type {_show(ce_type)!r}; expected one of "
                      f"{', '.join(FRAME_KIND_OF_TYPE)}", field="ce_type")
    content_type = headers.get("content-type")
    if content_type is not None and content_type != _JSON_CONTENT_TYPE_B \
            and not _JSON_CT.match(_show(content_type)):
        raise _Reject(BAD_CLOUDEVENT, f"unsupported content-type {_show(content_type)!r}",
                      field="content-type")
    return headers.get("ce_partitionkey"), headers.get("ce_subject")


def _structured_envelope(value: bytes) -> tuple[Any, bytes | None, bytes | None]:
    """Parse a structured-mode CloudEvent; returns (data, partitionkey, subject)."""
    try:
        envelope = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _Reject(BAD_JSON, f"structured CloudEvent is not JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise _Reject(BAD_CLOUDEVENT, "structured CloudEvent is not a JSON object", field="data")
    for name in ("specversion", "id", "source", "type", "subject", "partitionkey", "datacontenttype"):
        if name in envelope and not isinstance(envelope[name], str):
            raise _Reject(BAD_CLOUDEVENT, f"attribute {name} must be a string", field=name)
    if "specversion" not in envelope:
        raise _Reject(BAD_CLOUDEVENT, "missing specversion", field="specversion")
    if envelope["specversion"] != SPECVERSION:
        raise _Reject(BAD_CLOUDEVENT, f"unsupported specversion {envelope['specversion']!r}",
                      field="specversion")
    for name in ("id", "source", "type"):
        if not envelope.get(name):
            raise _Reject(BAD_CLOUDEVENT, f"missing or empty {name}", field=name)
    if envelope["type"] not in FRAME_KIND_OF_TYPE:
        raise _Reject(BAD_CLOUDEVENT, f"wrong type {envelope['type']!r}; expected one of "
                      f"{', '.join(FRAME_KIND_OF_TYPE)}", field="type")
    content_type = envelope.get("datacontenttype")
    if content_type is not None and not _JSON_CT.match(content_type):
        raise _Reject(BAD_CLOUDEVENT, f"unsupported datacontenttype {content_type!r}",
                      field="datacontenttype")
    if "data" in envelope:
        data = envelope["data"]
    elif "data_base64" in envelope:
        try:
            data = orjson.loads(base64.b64decode(envelope["data_base64"], validate=True))
        except (ValueError, TypeError) as exc:
            raise _Reject(BAD_JSON, f"data_base64 is not base64-encoded JSON: {exc}") from None
    else:
        raise _Reject(MISSING_FIELD, "structured CloudEvent has no data", field="data")
    pk, subject = envelope.get("partitionkey"), envelope.get("subject")
    return (data, pk.encode("utf-8") if pk is not None else None,
            subject.encode("utf-8") if subject is not None else None)


def _envelope(record: RawRecord, value: bytes) -> tuple[Any, bytes | None, bytes | None]:
    """Data, partitionkey and subject of a frame record in binary or structured mode."""
    headers = dict(record.headers)
    if "ce_specversion" not in headers:  # names are case-insensitive; producers rarely differ
        headers = {name.lower(): hvalue for name, hvalue in record.headers}
    content_type = headers.get("content-type")
    if content_type is not None and content_type[:_STRUCTURED_LEN].lower() == _STRUCTURED_B:
        return _structured_envelope(value)
    pk, subject = _binary_envelope(headers)
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _Reject(BAD_JSON, f"frame data is not JSON: {exc}") from None
    return data, pk, subject


class _Batch:
    """Frames and samples of one batch, accumulated as flat Python lists (one extend per signal)."""

    def __init__(self) -> None:
        self.vins: dict[str, int] = {}
        self.signals: dict[str, int] = {}
        self.units: dict[str, int] = {"": 0}
        self.t: list[Any] = []
        self.v: list[Any] = []
        self.chunk_signal: list[int] = []
        self.chunk_unit: list[int] = []
        self.chunk_len: list[int] = []
        self.frame_record: list[int] = []
        self.frame_vehicle: list[int] = []
        self.frame_seq: list[int] = []
        self.frame_sent_at: list[int] = []
        self.frame_received_at: list[int] = []
        self.frame_readings: list[int] = []
        self.frame_chunks: list[int] = []

    def add(self, position: int, record: RawRecord, data: Any, pk: bytes | None,
            subject: bytes | None) -> None:
        """Check one frame's shape and append its samples; nothing is kept if it is rejected."""
        if type(data) is not dict:
            raise _Reject(WRONG_TYPE, f"frame data must be a JSON object, got {type(data).__name__}",
                          field="data")
        for name in ("vin", "seq", "sent_at", "samples"):
            if name not in data:
                raise _Reject(MISSING_FIELD, f"frame has no {name!r}", field=name)
        vin, seq, sent_at, samples = data["vin"], data["seq"], data["sent_at"], data["samples"]
        if type(vin) is not str or not vin:
            raise _Reject(WRONG_TYPE, f"vin must be a non-empty string, got {vin!r}", field="vin")
        for name, number in (("seq", seq), ("sent_at", sent_at)):
            if type(number) is not int or not _INT64_MIN <= number <= _INT64_MAX:
                raise _Reject(WRONG_TYPE, f"{name} must be a 64-bit integer, got {number!r}", field=name)
        if seq < 0:  # a vehicle counts its uploads from 0: a negative one is a broken sender
            raise _Reject(WRONG_TYPE, f"seq must not be negative, got {seq}", field="seq")
        if type(samples) is not dict:
            raise _Reject(WRONG_TYPE, f"samples must be an object, got {type(samples).__name__}",
                          field="samples")
        vin_b = vin.encode("utf-8")
        if record.key is not None and record.key != vin_b:
            raise _Reject(VIN_MISMATCH, f"record key {_show(record.key)!r} is not the frame's vin {vin!r}",
                          field="key")
        if pk is not None and pk != vin_b:
            raise _Reject(VIN_MISMATCH, f"partitionkey {_show(pk)!r} is not the frame's vin {vin!r}",
                          field="partitionkey")
        if subject is not None and subject != vin_b:
            raise _Reject(VIN_MISMATCH, f"subject {_show(subject)!r} is not the frame's vin {vin!r}",
                          field="subject")

        t_all, v_all, signals, units = self.t, self.v, self.signals, self.units
        chunk_signal, chunk_unit, chunk_len = self.chunk_signal, self.chunk_unit, self.chunk_len
        n_values, n_chunks = len(t_all), len(chunk_len)
        total = 0
        try:
            for name, sample in samples.items():
                if type(sample) is not dict:
                    raise _Reject(WRONG_TYPE, f"samples[{name!r}] must be an object", field="samples",
                                  signal=name)
                t: Any = sample.get("t")
                v: Any = sample.get("v")
                if type(t) is not list or type(v) is not list:
                    _sample_lists_error(name, t, v)
                n = len(t)
                if n != len(v):
                    raise _Reject(LENGTH_MISMATCH, f"samples[{name!r}] has {n} times and {len(v)} values",
                                  field="samples", signal=name)
                unit = sample.get("u")
                if unit is None:
                    uid = 0
                elif type(unit) is str:
                    uid = units.get(unit, -1)
                    if uid < 0:
                        uid = units[unit] = len(units)
                else:
                    raise _Reject(WRONG_TYPE, f"samples[{name!r}].u must be a string", field="samples.u",
                                  signal=name)
                if not n:
                    continue
                sid = signals.get(name, -1)
                if sid < 0:
                    sid = signals[name] = len(signals)
                t_all.extend(t)
                v_all.extend(v)
                chunk_signal.append(sid)
                chunk_unit.append(uid)
                chunk_len.append(n)
                total += n
            if not total:
                raise _Reject(NO_SAMPLES, "frame carries no samples", field="samples")
        except _Reject:
            del t_all[n_values:], v_all[n_values:]
            del chunk_signal[n_chunks:], chunk_unit[n_chunks:], chunk_len[n_chunks:]
            raise
        vehicle = self.vins.get(vin, -1)
        if vehicle < 0:
            vehicle = self.vins[vin] = len(self.vins)
        self.frame_record.append(position)
        self.frame_vehicle.append(vehicle)
        self.frame_seq.append(seq)
        self.frame_sent_at.append(sent_at)
        self.frame_received_at.append(record.timestamp_ms)
        self.frame_readings.append(total)
        self.frame_chunks.append(len(chunk_len) - n_chunks)


def _sample_lists_error(name: str, t: Any, v: Any) -> None:
    for column, value, what in (("t", t, "integers"), ("v", v, "numbers")):
        if value is None:
            raise _Reject(MISSING_FIELD, f"samples[{name!r}] has no {column!r}", field=f"samples.{column}",
                          signal=name)
        if type(value) is not list:
            raise _Reject(WRONG_TYPE, f"samples[{name!r}].{column} must be a list of {what}",
                          field=f"samples.{column}", signal=name)


def _times(values: list[Any]) -> npt.NDArray[np.int64] | None:
    """Times as int64; None unless every element is an integer within int64."""
    try:
        arr = np.asarray(values)
    except (ValueError, OverflowError):
        return None
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        return None
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > _INT64_MAX:
        return None
    return arr.astype(np.int64, copy=False)


def _values(values: list[Any], *, allow_null: bool = True) -> npt.NDArray[np.float64] | None:
    """Values as float64 (bools as 0/1, null as NaN); None if any is not a number.

    With `allow_null=False` a list holding nulls also gives None (the caller retries per chunk,
    so the element-wise check below runs only over the chunks that need it).
    """
    try:
        arr = np.asarray(values)
    except (ValueError, OverflowError):
        return None
    if arr.ndim != 1:
        return None
    if arr.dtype.kind in "fiub":
        return arr.astype(np.float64, copy=False)
    if arr.dtype.kind != "O" or not allow_null:
        return None
    for x in values:  # only chunks with nulls or huge integers come here
        if x is not None and not isinstance(x, int | float):
            return None
    try:
        return np.array(values, dtype=np.float64)
    except (ValueError, OverflowError, TypeError):
        return None


def decode_records(records: Sequence[RawRecord], *,
                   max_frame_bytes: int = 1_000_000) -> tuple[Readings, list[DeadLetter]]:
    """Decode a batch of raw frame records into columnar readings plus dead letters.

    Every record either becomes one row of `Readings.frames` or one dead letter (stage
    `decode`) with a reason in `DECODE_REASONS`. Signal names and units are kept as sent
    (dictionaries built per batch); cleaning maps them to the catalog. Readings keep the
    order of frames, signals within a frame and samples within a signal.
    """
    batch = _Batch()
    rejected: dict[int, DeadLetter] = {}
    for position, record in enumerate(records):
        value = record.value
        try:
            if not value:
                raise _Reject(EMPTY_VALUE, "record has no value")
            if len(value) > max_frame_bytes:
                raise _Reject(OVERSIZED, f"value is {len(value)} bytes, limit {max_frame_bytes}",
                              size=len(value), limit=max_frame_bytes)
            data, pk, subject = _envelope(record, value)
            batch.add(position, record, data, pk, subject)
        except _Reject as exc:
            rejected[position] = DeadLetter(record, "decode", exc.reason, exc.message, dict(exc.detail))
    readings = _assemble(records, batch, rejected)
    return readings, [rejected[p] for p in sorted(rejected)]


_IndexArray = TypeVar("_IndexArray", npt.NDArray[np.int32], npt.NDArray[np.int16])


def _compact(names: list[str], codes: _IndexArray, *, keep_first: bool = False) -> tuple[list[str], _IndexArray]:
    """Drop dictionary entries no code uses (order kept); `keep_first` keeps entry 0 ("")."""
    used = np.zeros(len(names), dtype=bool)
    used[codes] = True
    if keep_first and names:
        used[0] = True
    if used.all():
        return names, codes
    remap = np.cumsum(used, dtype=np.int64) - 1
    return [n for n, u in zip(names, used, strict=True) if u], remap[codes].astype(codes.dtype)


def _assemble(records: Sequence[RawRecord], batch: _Batch, rejected: dict[int, DeadLetter]) -> Readings:
    """Turn the accumulated lists into columns; a non-numeric value dead-letters its frame."""
    n_frames = len(batch.frame_record)
    lengths = np.asarray(batch.chunk_len, dtype=np.int64)
    chunk_signal = np.asarray(batch.chunk_signal, dtype=np.int32)
    chunk_unit = np.asarray(batch.chunk_unit, dtype=np.int16)
    chunk_frame = np.repeat(np.arange(n_frames, dtype=np.int32),
                            np.asarray(batch.frame_chunks, dtype=np.int64))
    keep_frame = np.ones(n_frames, dtype=bool)

    # Fast path: one conversion per column for the whole batch.
    t_all = _times(batch.t)
    v_all = _values(batch.v, allow_null=False)
    if t_all is None or v_all is None:
        t_all, v_all = _convert_by_frame(records, batch, keep_frame, rejected, t_all, v_all)
        if not keep_frame.all():
            keep_chunk = keep_frame[chunk_frame]
            lengths, chunk_signal, chunk_unit = lengths[keep_chunk], chunk_signal[keep_chunk], chunk_unit[keep_chunk]
            frame_rows = np.flatnonzero(keep_frame)
            new_index = np.full(n_frames, -1, dtype=np.int32)
            new_index[frame_rows] = np.arange(frame_rows.size, dtype=np.int32)
            chunk_frame = new_index[chunk_frame[keep_chunk]]

    frame_vehicle = np.asarray(batch.frame_vehicle, dtype=np.int32)[keep_frame]
    vins, vehicle_codes = _compact(list(batch.vins), frame_vehicle)
    signal_names, chunk_signal = _compact(list(batch.signals), chunk_signal)
    unit_names, chunk_unit = _compact(list(batch.units), chunk_unit, keep_first=True)
    frame_readings = np.asarray(batch.frame_readings, dtype=np.int64)[keep_frame]
    frames = Frames(
        record=np.asarray(batch.frame_record, dtype=np.int64)[keep_frame],
        vehicle=vehicle_codes,
        seq=np.asarray(batch.frame_seq, dtype=np.int64)[keep_frame],
        sent_at=np.asarray(batch.frame_sent_at, dtype=np.int64)[keep_frame],
        received_at=np.asarray(batch.frame_received_at, dtype=np.int64)[keep_frame],
        n_readings=frame_readings,
    )
    return Readings(
        vehicle=np.repeat(vehicle_codes, frame_readings),
        signal=np.repeat(chunk_signal, lengths),
        unit=np.repeat(chunk_unit, lengths),
        t=t_all,
        value=v_all,
        frame=np.repeat(chunk_frame, lengths),
        vins=vins,
        signal_names=signal_names,
        unit_names=unit_names,
        frames=frames,
    )


def _convert_by_frame(records: Sequence[RawRecord], batch: _Batch, keep_frame: npt.NDArray[np.bool_],
                      rejected: dict[int, DeadLetter], t_all: npt.NDArray[np.int64] | None,
                      v_all: npt.NDArray[np.float64] | None,
                      ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Slow path when a column holds a null or a non-number: convert it frame by frame.

    Nulls become NaN. A frame with a non-numeric value is dead-lettered (`keep_frame`
    cleared) naming the signal; the returned columns hold only the readings of kept frames.
    """
    frame_bounds = np.concatenate(([0], np.cumsum(batch.frame_readings, dtype=np.int64))).tolist()
    chunk_first = np.concatenate(([0], np.cumsum(batch.frame_chunks, dtype=np.int64))).tolist()
    t_parts: list[npt.NDArray[np.int64]] = []
    v_parts: list[npt.NDArray[np.float64]] = []
    for f in range(len(batch.frame_record)):
        start, end = frame_bounds[f], frame_bounds[f + 1]
        tp = _times(batch.t[start:end]) if t_all is None else None
        vp = _values(batch.v[start:end]) if v_all is None else None
        if (t_all is None and tp is None) or (v_all is None and vp is None):
            position = batch.frame_record[f]
            rejected[position] = _bad_values(records[position], batch, chunk_first[f], chunk_first[f + 1], start)
            keep_frame[f] = False
            continue
        if tp is not None:
            t_parts.append(tp)
        if vp is not None:
            v_parts.append(vp)
    keep_reading = None if keep_frame.all() else np.repeat(keep_frame, batch.frame_readings)
    if t_all is None:
        t_all = np.concatenate(t_parts) if t_parts else np.empty(0, np.int64)
    elif keep_reading is not None:
        t_all = t_all[keep_reading]
    if v_all is None:
        v_all = np.concatenate(v_parts) if v_parts else np.empty(0, np.float64)
    elif keep_reading is not None:
        v_all = v_all[keep_reading]
    return t_all, v_all


def _bad_values(record: RawRecord, batch: _Batch, first_chunk: int, end_chunk: int, start: int) -> DeadLetter:
    """The dead letter of a frame with a non-numeric value, naming the first bad signal."""
    names = list(batch.signals)
    for c in range(first_chunk, end_chunk):
        end = start + batch.chunk_len[c]
        column = ""
        if _times(batch.t[start:end]) is None:
            column, what = "t", "integers (epoch ms)"
        elif _values(batch.v[start:end]) is None:
            column, what = "v", "numbers or null"
        if column:
            name = names[batch.chunk_signal[c]]
            return DeadLetter(record, "decode", WRONG_TYPE, f"samples[{name!r}].{column} must hold only {what}",
                              {"field": f"samples.{column}", "signal": name})
        start = end
    return DeadLetter(record, "decode", WRONG_TYPE, "samples hold a value that is not a number",
                      {"field": "samples"})
