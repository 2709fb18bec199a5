"""Recordings: round trip, append, lazy reading across blocks, and damage detection."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.tools import recording
from pipeline.tools.recording import (
    MAGIC,
    Record,
    RecordingError,
    RecordingReader,
    RecordingWriter,
    iter_records,
    read_metadata,
    write_records,
)

RECORDS = [
    Record("vehicle.sensor.raw", b"VF1AB000000000001", b'{"vin":"VF1AB000000000001"}',
           (("ce_id", b"abc"), ("content-type", b"application/json")), 1_715_668_210_267),
    Record("vehicle.gps.raw", None, None, (), 0),
    Record("t", b"", b"", (("empty", b""),), -5),
    Record("vehicle.gps.raw", b"k", bytes(range(256)) * 40, (("bin", bytes(range(256))),), 2**62),
]


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "r.rec"
    assert write_records(path, RECORDS, metadata={"topics": {"sensor": "vehicle.sensor.raw"}}) == len(RECORDS)
    assert list(iter_records(path)) == RECORDS
    assert read_metadata(path) == {"topics": {"sensor": "vehicle.sensor.raw"}}
    assert path.read_bytes().startswith(MAGIC)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.builds(
    Record,
    topic=st.text(min_size=1, max_size=20),
    key=st.none() | st.binary(max_size=30),
    value=st.none() | st.binary(max_size=300),
    headers=st.lists(st.tuples(st.text(max_size=10), st.binary(max_size=20)), max_size=4).map(tuple),
    timestamp_ms=st.integers(min_value=-(2**63), max_value=2**63 - 1),
), max_size=20))
def test_round_trip_of_arbitrary_records(tmp_path_factory: pytest.TempPathFactory, records: list[Record]) -> None:
    path = tmp_path_factory.mktemp("rec") / "r.rec"
    write_records(path, records)
    assert list(iter_records(path)) == records


def test_write_and_write_many_frame_alike(tmp_path: Path) -> None:
    one, many = tmp_path / "one.rec", tmp_path / "many.rec"
    with RecordingWriter(one, {"m": 1}) as writer:
        for record in RECORDS:
            writer.write(record)
        assert writer.records == len(RECORDS)
    with RecordingWriter(many, {"m": 1}) as writer:
        assert writer.write_many(RECORDS) == len(RECORDS)
        assert writer.records == len(RECORDS)
        written = writer.bytes_written
    assert one.read_bytes() == many.read_bytes()
    assert written == sum(len(recording.encode_record(r)) for r in RECORDS)
    assert many.stat().st_size == RecordingReader(many)._data_start + written


def test_append_continues_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "a.rec"
    write_records(path, RECORDS[:2], metadata={"run": 1})
    with RecordingWriter(path, {"run": 2}, append=True) as writer:
        writer.write(RECORDS[2])
        assert writer.metadata == {"run": 1}
    assert list(iter_records(path)) == RECORDS[:3]
    assert read_metadata(path) == {"run": 1}


def test_reads_lazily_across_block_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recording, "_READ_BLOCK", 64)  # every record straddles several blocks
    path = tmp_path / "b.rec"
    records = [Record("topic", str(i).encode(), b"x" * (i * 37), (("h", b"y" * i),), i) for i in range(50)]
    write_records(path, records)
    reader = RecordingReader(path)
    seen = []
    for rec in reader:
        seen.append(rec)
        assert reader.bytes_read <= reader.size
    assert seen == records
    assert reader.bytes_read == reader.size


def test_truncated_tail_is_reported_or_skipped(tmp_path: Path) -> None:
    path = tmp_path / "t.rec"
    write_records(path, RECORDS)
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.raises(RecordingError, match="truncated"):
        list(iter_records(path))
    assert list(iter_records(path, strict=False)) == RECORDS[:-1]


def test_corruption_is_detected_by_crc(tmp_path: Path) -> None:
    path = tmp_path / "c.rec"
    write_records(path, RECORDS[:1])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match="CRC"):
        list(iter_records(path))


def test_other_files_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("Date,Time\n01/01/2021,00:00:00\n")
    with pytest.raises(RecordingError, match="not a recording"):
        list(iter_records(path))
    short = tmp_path / "short.rec"
    short.write_bytes(MAGIC[:3])
    with pytest.raises(RecordingError, match="too short"):
        read_metadata(short)
