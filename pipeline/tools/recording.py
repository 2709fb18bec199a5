"""Recordings: an append-only binary file of Kafka records, replayed later at any speed.

A recording holds exactly what a producer would send (topic, key, value, headers and
record timestamp), so a replay puts the same bytes on the wire as the original run.
The file streams in both directions: writers append record by record, readers decode
lazily in large blocks, so neither side holds the file in memory.

Layout (integers little-endian)::

    header  MAGIC (8 bytes, b"VTREC\\r\\n\\x1a")  u16 version (=1)
            u32 metadata length, metadata (UTF-8 JSON object, written once at creation)
    record  u32 body length, u32 CRC-32 of the body, body:
            i64 timestamp_ms
            u16 topic length, topic (UTF-8)
            i32 key length (-1 = null key), key
            i32 value length (-1 = null value), value
            u16 header count, then per header: u16 name length, name (UTF-8),
                                                u32 value length, value

The magic's CR LF and ^Z catch files mangled by text-mode transfers; the per-record CRC
catches torn or corrupted records. A crash while appending leaves a truncated last
record, which readers report (or, with `strict=False`, stop before).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple

from pipeline.core.errors import PipelineError

MAGIC = b"VTREC\r\n\x1a"
VERSION = 1

_FILE_HEADER = struct.Struct("<8sHI")  # magic, version, metadata length
_RECORD_PREFIX = struct.Struct("<II")  # body length, crc32
_TS_TOPIC = struct.Struct("<qH")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_READ_BLOCK = 1 << 22


class RecordingError(PipelineError):
    """A recording file is not in this format, is corrupted, or ends in a torn record."""


class Record(NamedTuple):
    """One Kafka record as produced: topic, key, value, headers and record timestamp."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 0


_I64 = struct.Struct("<q")
_NULL = _I32.pack(-1)
_name_cache: dict[str, bytes] = {}


def _prefixed(text: str) -> bytes:
    """`u16 length + UTF-8` of a topic or header name (cached: a recording repeats a few)."""
    out = _name_cache.get(text)
    if out is None:
        raw = text.encode()
        out = _U16.pack(len(raw)) + raw
        if len(_name_cache) < 4096:
            _name_cache[text] = out
    return out


def _framed(record: Record) -> tuple[bytes, bytes]:
    """The record's length-and-CRC prefix and its body (kept apart to spare a copy of the body)."""
    topic, key, value, headers, timestamp_ms = record
    names = _name_cache
    parts: list[bytes] = [_I64.pack(timestamp_ms), names.get(topic) or _prefixed(topic),
                          _NULL if key is None else _I32.pack(len(key)), key or b"",
                          _NULL if value is None else _I32.pack(len(value)), value or b"",
                          _U16.pack(len(headers))]
    for name, header_value in headers:
        parts += (names.get(name) or _prefixed(name), _U32.pack(len(header_value)), header_value)
    body = b"".join(parts)
    return _RECORD_PREFIX.pack(len(body), zlib.crc32(body)), body


def encode_record(record: Record) -> bytes:
    """The framed bytes of one record (length, CRC and body)."""
    prefix, body = _framed(record)
    return prefix + body


def _decode_body(body: memoryview) -> Record:
    timestamp_ms, topic_len = _TS_TOPIC.unpack_from(body, 0)
    pos = _TS_TOPIC.size
    topic = bytes(body[pos:pos + topic_len]).decode()
    pos += topic_len
    blobs: list[bytes | None] = []
    for _ in range(2):
        (length,) = _I32.unpack_from(body, pos)
        pos += 4
        if length < 0:
            blobs.append(None)
        else:
            blobs.append(bytes(body[pos:pos + length]))
            pos += length
    (n_headers,) = _U16.unpack_from(body, pos)
    pos += 2
    headers: list[tuple[str, bytes]] = []
    for _ in range(n_headers):
        (name_len,) = _U16.unpack_from(body, pos)
        pos += 2
        name = bytes(body[pos:pos + name_len]).decode()
        pos += name_len
        (value_len,) = _U32.unpack_from(body, pos)
        pos += 4
        headers.append((name, bytes(body[pos:pos + value_len])))
        pos += value_len
    if pos != len(body):
        raise RecordingError(f"record body has {len(body) - pos} unexpected trailing bytes")
    return Record(topic, blobs[0], blobs[1], tuple(headers), timestamp_ms)


def _read_header(fh: IO[bytes], path: Path) -> dict[str, Any]:
    head = fh.read(_FILE_HEADER.size)
    if len(head) < _FILE_HEADER.size:
        raise RecordingError(f"{path}: too short to be a recording")
    magic, version, meta_len = _FILE_HEADER.unpack(head)
    if magic != MAGIC:
        raise RecordingError(f"{path}: not a recording (bad magic {magic!r})")
    if version != VERSION:
        raise RecordingError(f"{path}: unsupported recording version {version} (this reads {VERSION})")
    raw = fh.read(meta_len)
    if len(raw) < meta_len:
        raise RecordingError(f"{path}: truncated metadata")
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise RecordingError(f"{path}: metadata is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise RecordingError(f"{path}: metadata must be a JSON object")
    return meta


class RecordingWriter:
    """Appends records to a recording; creates the file (with metadata) if it is new.

    Use as a context manager. `append=True` continues an existing recording after
    checking its header (its metadata is kept; the `metadata` argument is then ignored).
    """

    def __init__(self, path: Path | str, metadata: Mapping[str, Any] | None = None, *,
                 append: bool = False, buffer_bytes: int = 1 << 20) -> None:
        self.path = Path(path)
        self.records = 0
        self.bytes_written = 0
        if append and self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb") as fh:
                self.metadata = _read_header(fh, self.path)
            self._fh: IO[bytes] = self.path.open("ab", buffering=buffer_bytes)
            return
        self.metadata = dict(metadata or {})
        raw = json.dumps(self.metadata, sort_keys=True, separators=(",", ":")).encode()
        self._fh = self.path.open("wb", buffering=buffer_bytes)
        self._fh.write(_FILE_HEADER.pack(MAGIC, VERSION, len(raw)) + raw)

    def write(self, record: Record) -> None:
        """Append one record."""
        framed = encode_record(record)
        self._fh.write(framed)
        self.records += 1
        self.bytes_written += len(framed)

    def write_many(self, records: Iterable[Record]) -> int:
        """Append records in order; returns how many were written."""
        chunks: list[bytes] = []
        for record in records:
            chunks += _framed(record)
        n = len(chunks) // 2
        size = n * _RECORD_PREFIX.size + sum(map(len, chunks[1::2]))
        self._fh.write(b"".join(chunks))
        self.records += n
        self.bytes_written += size
        return n

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def write_records(path: Path | str, records: Iterable[Record], *,
                  metadata: Mapping[str, Any] | None = None, append: bool = False) -> int:
    """Write (or append) records to a recording file; returns how many were written."""
    with RecordingWriter(path, metadata, append=append) as writer:
        return writer.write_many(records)


class RecordingReader:
    """Lazily iterates the records of a recording, one read block at a time.

    `metadata` is available after construction; `bytes_read` tracks progress through
    the file (for progress bars) while iterating.
    """

    def __init__(self, path: Path | str, *, strict: bool = True) -> None:
        self.path = Path(path)
        self.strict = strict
        with self.path.open("rb") as fh:
            self.metadata = _read_header(fh, self.path)
            self._data_start = fh.tell()
        self.size = self.path.stat().st_size
        self.bytes_read = self._data_start

    def __iter__(self) -> Iterator[Record]:
        with self.path.open("rb") as fh:
            fh.seek(self._data_start)
            offset = self._data_start  # file offset of buf[0]
            buf = b""
            while True:
                block = fh.read(_READ_BLOCK)
                if block:
                    buf = buf + block if buf else block
                view = memoryview(buf)
                pos = 0
                end = len(buf)
                while end - pos >= _RECORD_PREFIX.size:
                    body_len, crc = _RECORD_PREFIX.unpack_from(view, pos)
                    start = pos + _RECORD_PREFIX.size
                    if end - start < body_len:
                        break
                    body = view[start:start + body_len]
                    if zlib.crc32(body) != crc:
                        raise RecordingError(f"{self.path}: CRC mismatch in record at byte {offset + pos}")
                    record = _decode_body(body)
                    pos = start + body_len
                    self.bytes_read = offset + pos
                    yield record
                view.release()
                buf = buf[pos:]
                offset += pos
                if not block:
                    if buf and self.strict:
                        raise RecordingError(
                            f"{self.path}: truncated record at byte {offset} ({len(buf)} trailing bytes)")
                    return


def iter_records(path: Path | str, *, strict: bool = True) -> Iterator[Record]:
    """The records of a recording in file order, decoded lazily."""
    return iter(RecordingReader(path, strict=strict))


def read_metadata(path: Path | str) -> dict[str, Any]:
    """The JSON metadata written when the recording was created."""
    with Path(path).open("rb") as fh:
        return _read_header(fh, Path(path))
