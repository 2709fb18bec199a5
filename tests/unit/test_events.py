"""CloudEvents codec: frames round-trip exactly, both encoders agree, bad records get their reason."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.batch import EventBatch, RawRecord
from pipeline.core.errors import DecodeError
from pipeline.core.events import (
    DECODE_REASONS,
    FRAME_TYPES,
    EncodedRecord,
    decode_records,
    encode_event,
    encode_events,
    encode_frame,
    frame_headers,
    frame_id,
    read_event,
    rfc3339,
)

VIN = "VF1AG000X12345678"
T0 = 1_700_000_000_000


def frame(vin: Any = VIN, seq: Any = 7, samples: Any = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "vin": vin, "seq": seq, "sent_at": T0 + 5_000,
        "samples": samples if samples is not None else {
            "Vehicle.Speed": {"t": [T0, T0 + 500, T0 + 1000], "v": [50.5, 51, 52.25]},
            "Vehicle.Powertrain.TractionBattery.Charging.IsCharging": {"t": [T0], "v": [False]},
            "Vehicle.Exterior.AirTemperature": {"t": [T0], "v": [68.0], "u": "degF"},
        },
    }
    out.update(extra)
    return out


def raw(encoded: EncodedRecord, offset: int = 0, topic: str = "vehicle.sensor.raw") -> RawRecord:
    return encoded.to_raw(topic, 0, offset, timestamp_ms=encoded.timestamp_ms + 250)


def structured(kind: str, data: dict[str, Any]) -> RawRecord:
    """The same frame as a structured-mode CloudEvent, built with the SDK's stock JSON format."""
    from datetime import UTC, datetime
    attrs = {"specversion": "1.0", "id": frame_id(data["vin"], data["seq"], kind),
             "source": f"/vehicles/{data['vin']}", "type": FRAME_TYPES[kind], "subject": data["vin"],
             "time": datetime.fromtimestamp(data["sent_at"] / 1000, tz=UTC),
             "datacontenttype": "application/json", "partitionkey": data["vin"]}
    message = ce_kafka.to_structured(CloudEvent(attrs, data), JSONFormat())
    key = message.key.encode() if isinstance(message.key, str) else message.key
    return RawRecord("vehicle.sensor.raw", 0, 0, key, message.value, tuple(message.headers.items()),
                     data["sent_at"] + 100)


def expected_columns(frames: list[dict[str, Any]]) -> tuple[list[str], list[int], list[float], list[str], list[int]]:
    """Names, times, values, units and frame rows in frame / signal / sample order."""
    names: list[str] = []
    times: list[int] = []
    values: list[float] = []
    units: list[str] = []
    rows: list[int] = []
    row = 0
    for f in frames:
        n_before = len(times)
        for name, s in f["samples"].items():
            names += [name] * len(s["t"])
            times += list(s["t"])
            values += [np.nan if x is None else float(x) for x in s["v"]]
            units += [s.get("u") or ""] * len(s["t"])
        rows += [row] * (len(times) - n_before)
        if len(times) > n_before:
            row += 1
    return names, times, values, units, rows


# --- round trip (property) -----------------------------------------------------------------

signal_names = st.one_of(
    st.sampled_from(["Vehicle.Speed", "Vehicle.CurrentLocation.Latitude", "Vehicle.Acceleration.Lateral"]),
    st.text(min_size=0, max_size=30),
)
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.booleans(),
    st.none(),
)


@st.composite
def samples_of(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 12))
    times = draw(st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n))
    values = draw(st.lists(numbers, min_size=n, max_size=n))
    sample: dict[str, Any] = {"t": times, "v": values}
    unit = draw(st.sampled_from([None, "", "mph", "degF", "psi"]))
    if unit is not None:
        sample["u"] = unit
    return sample


frames_st = st.fixed_dictionaries({
    "vin": st.text(alphabet="ABCDEFGHJKLMNPRSTUVWXYZ0123456789", min_size=1, max_size=17),
    "seq": st.integers(0, 2**63 - 1),
    "sent_at": st.integers(0, 2**45),
    "samples": st.dictionaries(signal_names, samples_of(), min_size=1, max_size=6),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(frames_st, min_size=1, max_size=6),
       kinds=st.lists(st.sampled_from(["sensor", "gps"]), min_size=6, max_size=6),
       mode=st.sampled_from(["direct", "sdk", "structured"]))
def test_round_trip_is_exact(frames: list[dict[str, Any]], kinds: list[str], mode: str) -> None:
    records = []
    for i, (f, kind) in enumerate(zip(frames, kinds, strict=False)):
        if mode == "structured":
            records.append(structured(kind, f))
        else:
            records.append(raw(encode_frame(kind, f, via_sdk=mode == "sdk"), offset=i))  # type: ignore[arg-type]
    readings, dead = decode_records(records)

    empty = [i for i, f in enumerate(frames) if not any(s["t"] for s in f["samples"].values())]
    assert [d.record for d in dead] == [records[i] for i in empty]
    assert {d.reason for d in dead} <= {"no_samples"}
    kept = [f for i, f in enumerate(frames) if i not in empty]
    kept_pos = [i for i in range(len(frames)) if i not in empty]

    names, times, values, units, rows = expected_columns(kept)
    assert [readings.signal_names[s] for s in readings.signal] == names
    assert readings.t.dtype == np.int64 and readings.t.tolist() == times
    assert readings.value.dtype == np.float64
    np.testing.assert_array_equal(readings.value, np.array(values, dtype=np.float64))
    assert [readings.unit_names[u] for u in readings.unit] == units
    assert readings.frame.tolist() == rows
    assert readings.unit_names[0] == ""

    fr = readings.frames
    assert fr.record.tolist() == kept_pos
    assert [readings.vins[v] for v in fr.vehicle] == [f["vin"] for f in kept]
    assert fr.seq.tolist() == [f["seq"] for f in kept]
    assert fr.sent_at.tolist() == [f["sent_at"] for f in kept]
    assert fr.received_at.tolist() == [records[i].timestamp_ms for i in kept_pos]
    assert fr.n_readings.sum() == len(readings)
    assert [readings.vins[v] for v in readings.vehicle] == [kept[r]["vin"] for r in rows]


@settings(max_examples=100, deadline=None)
@given(f=frames_st, kind=st.sampled_from(["sensor", "gps"]))
def test_direct_and_sdk_encoders_agree(f: dict[str, Any], kind: str) -> None:
    assert encode_frame(kind, f) == encode_frame(kind, f, via_sdk=True)  # type: ignore[arg-type]


def test_encoded_frame_is_a_binary_cloudevent() -> None:
    rec = encode_frame("gps", frame())
    headers = dict(rec.headers)
    assert rec.key == VIN.encode()
    assert rec.timestamp_ms == T0 + 5_000
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_type"] == b"fleet.vehicle.gps.frame"
    assert headers["ce_source"] == f"/vehicles/{VIN}".encode()
    assert headers["ce_subject"] == headers["ce_partitionkey"] == VIN.encode()
    assert headers["content-type"] == b"application/json"
    assert headers["ce_time"] == rfc3339(T0 + 5_000).encode()
    assert headers["ce_id"] == frame_id(VIN, 7, "gps").encode()
    assert orjson.loads(rec.value) == frame()
    attrs, data = read_event(raw(rec))  # the SDK reads what the direct path wrote
    assert attrs["type"] == "fleet.vehicle.gps.frame" and attrs["partitionkey"] == VIN
    assert data == frame()


def test_numpy_samples_are_serialised() -> None:
    t = np.arange(T0, T0 + 1000, 100, dtype=np.int64)
    v = np.linspace(0.1, 2.3, t.size)
    rec = encode_frame("sensor", frame(samples={"Vehicle.Acceleration.Lateral": {"t": t, "v": v}}))
    readings, dead = decode_records([raw(rec)])
    assert not dead
    assert np.array_equal(readings.t, t) and np.array_equal(readings.value, v)


def test_frame_id_is_deterministic_and_distinct() -> None:
    assert frame_id(VIN, 1, "sensor") == frame_id(VIN, 1, "sensor")
    ids = {frame_id(VIN, 1, "sensor"), frame_id(VIN, 2, "sensor"), frame_id(VIN, 1, "gps"),
           frame_id("OTHER", 1, "sensor")}
    assert len(ids) == 4


def test_rfc3339() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(T0 + 123) == "2023-11-14T22:13:20.123000Z"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999))
def test_rfc3339_is_the_utc_isoformat(ms: int) -> None:
    text = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).isoformat()
    assert rfc3339(ms) == text.removesuffix("+00:00") + "Z"
    assert rfc3339(ms - ms % 1000) == rfc3339(ms)[:19] + "Z"  # the same second, cached


def test_frame_headers_are_the_sdk_headers() -> None:
    for vin in (VIN, "OTHER"):
        for kind in FRAME_TYPES:
            for seq, sent_at in ((1, T0), (2, T0 + 1), (10**12, T0 + 86_400_123)):
                f = {"vin": vin, "seq": seq, "sent_at": sent_at, "samples": {}}
                headers = frame_headers(kind, vin, seq, sent_at)
                assert list(headers) == encode_frame(kind, f, via_sdk=True).headers  # type: ignore[arg-type]
                assert dict(headers)["ce_id"] == frame_id(vin, seq, kind).encode()


# --- derived events ------------------------------------------------------------------------


def event_attrs(**extra: Any) -> dict[str, Any]:
    attrs = {"id": "e1", "type": "fleet.driving.harsh_braking", "source": "/pipeline/functions/harsh",
             "subject": VIN, "partitionkey": VIN, "time": T0 + 42}
    attrs.update(extra)
    return attrs


def test_encode_event_binary_mode() -> None:
    data = {"vin": VIN, "accel_ms2": -6.5, "location": {"lat": 48.1, "lon": 11.5}}
    rec = encode_event(event_attrs(route="peak"), data)
    headers = dict(rec.headers)
    assert rec.key == VIN.encode() and rec.timestamp_ms == T0 + 42
    assert headers["ce_time"] == b"2023-11-14T22:13:20.042000Z"
    assert headers["ce_route"] == b"peak"
    assert orjson.loads(rec.value) == data
    assert rec == encode_event(event_attrs(route="peak"), data, via_sdk=True)


def test_encode_event_rejects_bad_attributes() -> None:
    with pytest.raises(ValueError, match="extension"):
        encode_event(event_attrs(**{"Bad-Name": 1}), {})
    with pytest.raises(ValueError, match="time"):
        encode_event(event_attrs(time="yesterday"), {})
    with pytest.raises(ValueError, match="partitionkey"):
        encode_event({k: v for k, v in event_attrs().items() if k not in ("subject", "partitionkey")}, {})


def test_encode_events_goes_through_rows() -> None:
    batch = EventBatch.build(
        type="fleet.grid.charging_demand", source="/pipeline/functions/grid",
        vin=["VIN_A", "VIN_B"], time=[T0, T0 + 1], origin=[0, 1], ids=["a", "b"],
        data={"expected_kw": np.array([11.0, np.nan]), "location.lat": np.array([1.5, 2.5])},
        present={"expected_kw": np.array([True, False])},
    )
    records = encode_events(batch)
    assert [r.key for r in records] == [b"VIN_A", b"VIN_B"]
    assert [dict(r.headers)["ce_id"] for r in records] == [b"a", b"b"]
    assert orjson.loads(records[0].value) == {"expected_kw": 11.0, "location": {"lat": 1.5}}
    assert orjson.loads(records[1].value) == {"location": {"lat": 2.5}}
    assert records == encode_events(batch, via_sdk=True)


def test_read_event_rejects_garbage() -> None:
    with pytest.raises(DecodeError) as info:
        read_event(RawRecord("t", 0, 0, None, b"{}", (("ce_type", b"x"),)))
    assert info.value.reason == "bad_cloudevent"


# --- malformed records ---------------------------------------------------------------------


def with_headers(rec: EncodedRecord, **changes: bytes | None) -> RawRecord:
    headers = [(k, v) for k, v in rec.headers if k not in changes]
    headers += [(k, v) for k, v in changes.items() if v is not None]
    return RawRecord("vehicle.sensor.raw", 0, 1, rec.key, rec.value, tuple(headers), 5)


def with_value(value: bytes | None, key: bytes | None = VIN.encode()) -> RawRecord:
    rec = encode_frame("sensor", frame())
    return RawRecord("vehicle.sensor.raw", 0, 1, key, value, tuple(rec.headers), 5)


def with_data(data: Any) -> RawRecord:
    return with_value(json.dumps(data).encode())


def with_sample(name: str, sample: Any) -> RawRecord:
    return with_data(frame(samples={"Vehicle.Speed": {"t": [T0], "v": [1.0]}, name: sample}))


def good_frame() -> EncodedRecord:
    return encode_frame("sensor", frame())


BAD: list[tuple[str, Callable[[], RawRecord], str, dict[str, Any]]] = [
    ("none value", lambda: with_value(None), "empty_value", {}),
    ("empty value", lambda: with_value(b""), "empty_value", {}),
    ("oversized before parsing", lambda: with_value(b"{" * 2_000), "oversized", {"size": 2_000}),
    ("not json", lambda: with_value(b"{'vin': 1"), "bad_json", {}),
    ("no headers", lambda: RawRecord("t", 0, 1, VIN.encode(), good_frame().value), "bad_cloudevent",
     {"field": "ce_specversion"}),
    ("old specversion", lambda: with_headers(good_frame(), ce_specversion=b"0.3"), "bad_cloudevent",
     {"field": "ce_specversion"}),
    ("no id", lambda: with_headers(good_frame(), ce_id=None), "bad_cloudevent", {"field": "ce_id"}),
    ("empty source", lambda: with_headers(good_frame(), ce_source=b""), "bad_cloudevent",
     {"field": "ce_source"}),
    ("no type", lambda: with_headers(good_frame(), ce_type=None), "bad_cloudevent", {"field": "ce_type"}),
    ("wrong type", lambda: with_headers(good_frame(), ce_type=b"fleet.trip.started"), "bad_cloudevent",
     {"field": "ce_type"}),
    ("non-json content", lambda: with_headers(good_frame(), **{"content-type": b"application/avro"}),
     "bad_cloudevent", {"field": "content-type"}),
    ("binary header", lambda: with_headers(good_frame(), ce_id=b"\xff\xfe"), "bad_cloudevent",
     {"field": "ce_id"}),
    ("data is a list", lambda: with_data([1, 2]), "wrong_type", {"field": "data"}),
    ("no vin", lambda: with_data({k: v for k, v in frame().items() if k != "vin"}), "missing_field",
     {"field": "vin"}),
    ("no seq", lambda: with_data({k: v for k, v in frame().items() if k != "seq"}), "missing_field",
     {"field": "seq"}),
    ("no sent_at", lambda: with_data({k: v for k, v in frame().items() if k != "sent_at"}),
     "missing_field", {"field": "sent_at"}),
    ("no samples", lambda: with_data({k: v for k, v in frame().items() if k != "samples"}),
     "missing_field", {"field": "samples"}),
    ("sample without v", lambda: with_sample("Vehicle.Bad", {"t": [T0]}), "missing_field",
     {"field": "samples.v", "signal": "Vehicle.Bad"}),
    ("vin not a string", lambda: with_value(orjson.dumps(frame(vin=17)), key=None), "wrong_type",
     {"field": "vin"}),
    ("seq a string", lambda: with_data(frame(seq="1")), "wrong_type", {"field": "seq"}),
    ("seq a bool", lambda: with_data(frame(seq=True)), "wrong_type", {"field": "seq"}),
    ("sent_at a float", lambda: with_data(frame(sent_at=1.5)), "wrong_type", {"field": "sent_at"}),
    ("seq beyond int64", lambda: with_data(frame(seq=2**64)), "wrong_type", {"field": "seq"}),
    ("seq negative", lambda: with_data(frame(seq=-5)), "wrong_type", {"field": "seq"}),
    ("samples a list", lambda: with_data(frame(samples=[1])), "wrong_type", {"field": "samples"}),
    ("sample a list", lambda: with_sample("Vehicle.Bad", [1, 2]), "wrong_type",
     {"field": "samples", "signal": "Vehicle.Bad"}),
    ("t not a list", lambda: with_sample("Vehicle.Bad", {"t": T0, "v": [1]}), "wrong_type",
     {"field": "samples.t", "signal": "Vehicle.Bad"}),
    ("t of floats", lambda: with_sample("Vehicle.Bad", {"t": [T0 + 0.5], "v": [1]}), "wrong_type",
     {"field": "samples.t", "signal": "Vehicle.Bad"}),
    ("t of strings", lambda: with_sample("Vehicle.Bad", {"t": ["2024-01-01"], "v": [1]}), "wrong_type",
     {"field": "samples.t", "signal": "Vehicle.Bad"}),
    ("t beyond int64", lambda: with_sample("Vehicle.Bad", {"t": [2**64 - 1], "v": [1]}), "wrong_type",
     {"field": "samples.t", "signal": "Vehicle.Bad"}),
    ("v with a string", lambda: with_sample("Vehicle.Bad", {"t": [T0, T0 + 1], "v": [1.0, "2.0"]}),
     "wrong_type", {"field": "samples.v", "signal": "Vehicle.Bad"}),
    ("v with a string and null", lambda: with_sample("Vehicle.Bad", {"t": [T0, T0 + 1], "v": [None, "2"]}),
     "wrong_type", {"field": "samples.v", "signal": "Vehicle.Bad"}),
    ("v nested", lambda: with_sample("Vehicle.Bad", {"t": [T0, T0 + 1], "v": [[1], [2]]}), "wrong_type",
     {"field": "samples.v", "signal": "Vehicle.Bad"}),
    ("v ragged", lambda: with_sample("Vehicle.Bad", {"t": [T0, T0 + 1], "v": [1, [2, 3]]}), "wrong_type",
     {"field": "samples.v", "signal": "Vehicle.Bad"}),
    ("v an object", lambda: with_sample("Vehicle.Bad", {"t": [T0], "v": [{"x": 1}]}), "wrong_type",
     {"field": "samples.v", "signal": "Vehicle.Bad"}),
    ("unit a number", lambda: with_sample("Vehicle.Bad", {"t": [T0], "v": [1], "u": 5}), "wrong_type",
     {"field": "samples.u", "signal": "Vehicle.Bad"}),
    ("lengths differ", lambda: with_sample("Vehicle.Bad", {"t": [T0, T0 + 1, T0 + 2], "v": [1, 2]}),
     "length_mismatch", {"signal": "Vehicle.Bad"}),
    ("key is another vin", lambda: with_value(good_frame().value, key=b"OTHERVIN"), "vin_mismatch",
     {"field": "key"}),
    ("partitionkey is another vin", lambda: with_headers(good_frame(), ce_partitionkey=b"OTHERVIN"),
     "vin_mismatch", {"field": "partitionkey"}),
    ("subject is another vin", lambda: with_headers(good_frame(), ce_subject=b"OTHERVIN"),
     "vin_mismatch", {"field": "subject"}),
    ("empty samples", lambda: with_data(frame(samples={})), "no_samples", {}),
    ("only empty lists", lambda: with_data(frame(samples={"Vehicle.Speed": {"t": [], "v": []}})),
     "no_samples", {}),
    ("structured not json", lambda: RawRecord("t", 0, 1, None, b"{oops",
                                              (("content-type", b"application/cloudevents+json"),)),
     "bad_json", {}),
    ("structured without data", lambda: RawRecord(
        "t", 0, 1, None, orjson.dumps({"specversion": "1.0", "id": "x", "source": "/v", "type": FRAME_TYPES["gps"]}),
        (("content-type", b"application/cloudevents+json"),)), "missing_field", {"field": "data"}),
    ("structured wrong type", lambda: RawRecord(
        "t", 0, 1, None, orjson.dumps({"specversion": "1.0", "id": "x", "source": "/v", "type": "other",
                                       "data": frame()}),
        (("content-type", b"application/cloudevents+json"),)), "bad_cloudevent", {"field": "type"}),
]


@pytest.mark.parametrize(("case", "make", "reason", "detail"), BAD, ids=[b[0] for b in BAD])
def test_malformed_record_is_dead_lettered_and_neighbours_decode(
        case: str, make: Callable[[], RawRecord], reason: str, detail: dict[str, Any]) -> None:
    assert reason in DECODE_REASONS
    bad = make()
    good_a = raw(encode_frame("sensor", frame(vin="GOODVIN0000000001")), offset=0)
    good_b = raw(encode_frame("sensor", frame(vin="GOODVIN0000000002", samples={
        "Vehicle.Speed": {"t": [T0, T0 + 1], "v": [None, 3]}})), offset=2)
    readings, dead = decode_records([good_a, bad, good_b], max_frame_bytes=1_500)
    assert len(dead) == 1, [d.reason for d in dead]
    letter = dead[0]
    assert (letter.stage, letter.reason) == ("decode", reason)
    assert letter.record is bad
    assert letter.error
    for key, value in detail.items():
        assert letter.detail.get(key) == value, (key, letter.detail)
    if "signal" in detail:
        assert detail["signal"] in letter.error
    assert readings.frames.record.tolist() == [0, 2]
    assert readings.vins == ["GOODVIN0000000001", "GOODVIN0000000002"]
    assert len(readings) == 5 + 2
    assert "Vehicle.Bad" not in readings.signal_names
    assert np.isnan(readings.value[-2]) and readings.value[-1] == 3.0


def test_unknown_signals_are_not_a_decode_error() -> None:
    rec = raw(encode_frame("sensor", frame(samples={"Vehicle.NotInCatalog": {"t": [T0], "v": [1]}})))
    readings, dead = decode_records([rec])
    assert not dead and readings.signal_names == ["Vehicle.NotInCatalog"]


def test_several_bad_frames_in_one_batch_keep_order_and_columns_consistent() -> None:
    frames = [frame(vin=f"V{i}", samples={"Vehicle.Speed": {"t": [T0 + i], "v": [float(i)]},
                                           f"S{i}": {"t": [T0, T0 + 1], "v": [i, None]}})
              for i in range(6)]
    frames[1]["samples"]["Vehicle.Speed"]["v"] = ["x"]
    frames[4]["samples"][f"S{4}"]["t"] = [1.5, 2.5]
    records = [raw(encode_frame("sensor", f), offset=i) for i, f in enumerate(frames)]
    readings, dead = decode_records(records)
    assert [(d.record.offset, d.reason) for d in dead] == [(1, "wrong_type"), (4, "wrong_type")]
    assert readings.frames.record.tolist() == [0, 2, 3, 5]
    assert readings.vins == ["V0", "V2", "V3", "V5"]
    assert "S1" not in readings.signal_names and "S4" not in readings.signal_names
    names = [readings.signal_names[s] for s in readings.signal]
    assert names == ["Vehicle.Speed", "S0", "S0", "Vehicle.Speed", "S2", "S2",
                     "Vehicle.Speed", "S3", "S3", "Vehicle.Speed", "S5", "S5"]
    assert [readings.vins[v] for v in readings.vehicle] == [v for v in ("V0", "V2", "V3", "V5") for _ in range(3)]
    assert readings.frame.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert readings.value[::3].tolist() == [0.0, 2.0, 3.0, 5.0]


def test_structured_and_binary_decode_alike() -> None:
    f = frame()
    binary, _ = decode_records([raw(encode_frame("sensor", f))])
    struct, dead = decode_records([structured("sensor", f)])
    assert not dead
    for column in ("signal", "unit", "t", "value", "frame", "vehicle"):
        assert np.array_equal(getattr(binary, column), getattr(struct, column)), column
    assert struct.signal_names == binary.signal_names and struct.unit_names == binary.unit_names


def test_structured_data_base64() -> None:
    import base64
    f = frame()
    envelope = {"specversion": "1.0", "id": "x", "source": f"/vehicles/{VIN}", "type": FRAME_TYPES["sensor"],
                "data_base64": base64.b64encode(json.dumps(f).encode()).decode()}
    rec = RawRecord("t", 0, 0, VIN.encode(), orjson.dumps(envelope),
                    (("content-type", b"application/cloudevents+json; charset=utf-8"),), 1)
    readings, dead = decode_records([rec])
    assert not dead and len(readings) == 5


def test_values_become_float64() -> None:
    rec = raw(encode_frame("sensor", frame(samples={"Vehicle.IsMoving": {"t": [1, 2, 3, 4], "v": [True, 0, 2.5, None]}})))
    readings, _ = decode_records([rec])
    np.testing.assert_array_equal(readings.value, [1.0, 0.0, 2.5, np.nan])


def test_empty_batch() -> None:
    readings, dead = decode_records([])
    assert len(readings) == 0 and not dead and len(readings.frames) == 0
    assert readings.unit_names == [""]


def test_bad_times_without_nulls_take_the_slow_path_for_times_only() -> None:
    frames = [frame(vin=f"V{i}", samples={"Vehicle.Speed": {"t": [T0, T0 + 1], "v": [1.0, 2.0 + i]}})
              for i in range(3)]
    frames[1]["samples"]["Vehicle.Speed"]["t"] = [T0, "later"]
    readings, dead = decode_records([raw(encode_frame("sensor", f), offset=i) for i, f in enumerate(frames)])
    assert [(d.record.offset, d.detail["field"]) for d in dead] == [(1, "samples.t")]
    assert readings.value.tolist() == [1.0, 2.0, 1.0, 4.0]
    assert readings.t.tolist() == [T0, T0 + 1, T0, T0 + 1]
    assert readings.vins == ["V0", "V2"] and readings.frame.tolist() == [0, 0, 1, 1]


def test_header_names_are_case_insensitive() -> None:
    rec = encode_frame("sensor", frame())
    upper = RawRecord("t", 0, 0, rec.key, rec.value, tuple((k.upper(), v) for k, v in rec.headers), 1)
    readings, dead = decode_records([upper])
    assert not dead and len(readings) == 5


def _event_part(draw: Any, n: int, fields: list[str]) -> EventBatch:
    """A batch of n events of one type with some of the given data fields, some values absent."""
    kinds = {"count": np.int64, "ratio": np.float64, "label": object, "flag": np.bool_}
    data: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for name in fields:
        kind = kinds[name.split(".")[0]]
        if kind is object:
            data[name] = np.array([f"s{i}" for i in range(n)], dtype=object)
        else:
            data[name] = np.arange(n).astype(kind)
        if draw(st.booleans()):
            present[name] = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    return EventBatch.build(type=f"t.{len(fields)}", source="/s", vin=[f"V{i}" for i in range(n)],
                            time=np.arange(n, dtype=np.int64), origin=np.arange(n), ids=[""] * n,
                            data=data, present=present)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_concat_keeps_every_row_its_fields_and_their_types(data: Any) -> None:
    """Concatenating batches with different fields: each row reads as in its own batch, fields a
    batch lacks are absent in its rows, and a column takes the common type of its parts."""
    names = ["count.a", "count.b", "ratio.a", "label.a", "flag.a"]
    sizes = data.draw(st.lists(st.integers(0, 4), min_size=1, max_size=5))
    parts = [_event_part(data.draw, n, data.draw(st.lists(st.sampled_from(names), unique=True, max_size=4)))
             for n in sizes]
    out = EventBatch.concat(parts)
    assert len(out) == sum(sizes)
    assert out.rows() == [row for p in parts for row in p.rows()]
    assert out.origin.tolist() == [o for p in parts for o in p.origin.tolist()]
    for name, col in out.data.items():
        dtypes = {p.data[name].dtype for p in parts if len(p) and name in p.data}
        assert col.dtype == (dtypes.pop() if len(dtypes) == 1 else np.result_type(*dtypes))
