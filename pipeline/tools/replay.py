"""Replay vehicle traffic into Kafka: recordings, simulated fleets and real Twizy trips.

Everything that reaches the broker goes through `produce`: an aiokafka producer keyed by
VIN (so each vehicle's frames stay in order on one partition), with the record timestamp
taken from the source (sent_at plus upload latency, in recorded time), paced either by
those timestamps at a speed factor or by a target rate, or as fast as the broker takes
it.

Sources:
- a recording (`pipeline.tools.recording`), e.g. one written by `pipeline simulate --out`;
  its topics are mapped to the configured ingest topics by kind (sensor/gps);
- recorded trips from the "RSK Twizy EV Dataset" (Youssef Nait Malek et al., CC BY 4.0)
  in CSV, turned into frames through the column mapping `rules/replay/twizy.yaml`.

Twizy rows with a corrupted Date (e.g. 90/02/2032, 03/00/2000) are repaired, not
dropped: the Time column and the row order still hold, so such a row gets the file's
dominant date (with a day added after midnight rollovers). Rows whose Time is
unparseable or runs backwards are dropped; both are counted by reason and reported.
"""

from __future__ import annotations

import asyncio
import collections
import csv
import heapq
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.events import encode_frame
from pipeline.core.yamlfile import load_yaml
from pipeline.runtime.settings import REPO_ROOT, Settings, get_settings
from pipeline.tools.recording import Record, RecordingReader

DEFAULT_MAPPING = REPO_ROOT / "rules" / "replay" / "twizy.yaml"
TWIZY_CREDIT = ('"RSK Twizy EV Dataset" by Youssef Nait Malek et al. '
                "(github.com/NaitMalekYoussef/RSK_Twizy_EV_Dataset), CC BY 4.0")

Item = tuple[Record, int]  # a record and the readings it carries


def default_twizy_dir() -> Path:
    """`$TWIZY_DIR`, else `<repo>/../shared/data/twizy`."""
    env = os.environ.get("TWIZY_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "twizy"


# --- pacing and producing ------------------------------------------------------------------


@dataclass(slots=True)
class Pacer:
    """When to send each record: by record time at `speed`, and/or at a target rate.

    `speed=None` means as fast as possible. Gaps in record time longer than `max_gap_s`
    are shortened to it (days between recorded trips would otherwise stall a replay).
    """

    speed: float | None = None
    max_gap_s: float = 10.0
    readings_per_s: float | None = None
    frames_per_s: float | None = None
    clock: Callable[[], float] = time.monotonic
    _start: float | None = None
    _last_ts: int | None = None
    _virtual_s: float = 0.0
    _frames: int = 0
    _readings: int = 0

    def delay(self, timestamp_ms: int, readings: int) -> float:
        """Seconds to wait before sending this record (0 if it is due)."""
        now = self.clock()
        if self._start is None:
            self._start = now
        due = self._start
        if self.speed is not None:
            if self._last_ts is not None and timestamp_ms > self._last_ts:
                self._virtual_s += min((timestamp_ms - self._last_ts) / 1000.0, self.max_gap_s) / self.speed
            due = self._start + self._virtual_s
        if self._last_ts is None or timestamp_ms > self._last_ts:
            self._last_ts = timestamp_ms
        if self.readings_per_s:
            due = max(due, self._start + self._readings / self.readings_per_s)
        if self.frames_per_s:
            due = max(due, self._start + self._frames / self.frames_per_s)
        self._frames += 1
        self._readings += readings
        return max(0.0, due - now)


@dataclass(slots=True)
class ProduceStats:
    """What a produce run sent."""

    frames: int = 0
    readings: int = 0
    bytes: int = 0
    by_topic: dict[str, int] = field(default_factory=collections.Counter)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def rates(self) -> tuple[float, float]:
        """(frames/s, readings/s) so far."""
        el = max(self.elapsed_s, 1e-9)
        return self.frames / el, self.readings / el


@dataclass(frozen=True, slots=True)
class ProducerOptions:
    """Producer tuning: batching, compression and acknowledgements."""

    linger_ms: int = 20
    max_batch_bytes: int = 1 << 20
    compression: str | None = None  # None, gzip, lz4, snappy, zstd (lz4/snappy/zstd need cramjam)
    acks: int | str = 1
    max_in_flight: int = 50_000  # unacknowledged sends before waiting for the oldest


async def produce(items: Iterable[Item] | AsyncIterator[Item], settings: Settings | None = None, *,
                  pacer: Pacer | None = None, options: ProducerOptions | None = None,
                  on_progress: Callable[[ProduceStats], None] | None = None,
                  stats: ProduceStats | None = None) -> ProduceStats:
    """Send records to Kafka in order; returns what was sent once every send is acknowledged.

    Pass `stats` to watch the counts from outside (they stay valid if the run is interrupted).
    """
    from aiokafka import AIOKafkaProducer

    settings = settings or get_settings()
    options = options or ProducerOptions()
    pacer = pacer or Pacer()
    producer = AIOKafkaProducer(
        **settings.kafka_client_kwargs(), linger_ms=options.linger_ms,
        max_batch_size=options.max_batch_bytes, compression_type=options.compression, acks=options.acks,
    )
    stats = stats if stats is not None else ProduceStats()
    in_flight: collections.deque[asyncio.Future[Any]] = collections.deque()
    last_report = 0.0
    try:
        await producer.start()
    except BaseException:
        await producer.stop()  # a failed bootstrap leaves the client open
        raise
    try:
        async for record, readings in as_async(items):
            wait = pacer.delay(record.timestamp_ms, readings)
            if wait > 0.002:
                await asyncio.sleep(wait)
            fut = await producer.send(record.topic, record.value, key=record.key, headers=list(record.headers),
                                      timestamp_ms=record.timestamp_ms)
            in_flight.append(fut)
            stats.frames += 1
            stats.readings += readings
            stats.bytes += len(record.value or b"")
            stats.by_topic[record.topic] += 1
            while len(in_flight) > options.max_in_flight or (in_flight and in_flight[0].done()):
                await in_flight.popleft()
            if on_progress is not None:
                now = time.monotonic()
                if now - last_report > 0.2:
                    last_report = now
                    on_progress(stats)
        await producer.flush()
        while in_flight:
            await in_flight.popleft()
    finally:
        await producer.stop()
    stats.finished = time.monotonic()
    if on_progress is not None:
        on_progress(stats)
    return stats


async def as_async(items: Iterable[Item] | AsyncIterator[Item]) -> AsyncIterator[Item]:
    """Iterate sync or async sources alike, yielding to the loop now and then on long sync ones."""
    if hasattr(items, "__aiter__"):
        async for item in items:  # type: ignore[union-attr]
            yield item
        return
    for n, item in enumerate(items):  # type: ignore[union-attr]
        yield item
        if n % 512 == 511:
            await asyncio.sleep(0)  # let the producer's sender task run during long sources


# --- recordings ------------------------------------------------------------------------------


def count_readings(value: bytes | None) -> int:
    """Readings in a frame payload (0 if it is not a frame)."""
    if not value:
        return 0
    try:
        data = orjson.loads(value)
        samples = data["samples"]
        return sum(len(entry["t"]) for entry in samples.values())
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return 0


def recording_items(reader: RecordingReader, settings: Settings | None = None,
                    topics: dict[str, str] | None = None) -> Iterator[Item]:
    """Records of a recording with their topics mapped to this deployment's ingest topics.

    The recording's metadata names its topic per kind (`{"sensor": ..., "gps": ...}`);
    records on those topics go to `topics[kind]` (default: the settings' ingest topics).
    """
    settings = settings or get_settings()
    target = topics or {"sensor": settings.topic_sensor, "gps": settings.topic_gps}
    recorded = reader.metadata.get("topics") or {}
    remap = {recorded[k]: target[k] for k in target if k in recorded}
    for record in reader:
        topic = remap.get(record.topic, record.topic)
        if topic != record.topic:
            record = record._replace(topic=topic)
        yield record, count_readings(record.value)


# --- Twizy trips -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """One CSV column sent as one catalog signal."""

    column: str
    signal: str
    kind: str  # sensor | gps (from the catalog)
    scale: float = 1.0
    offset: float = 0.0
    to_canonical: tuple[float, float] = (1.0, 0.0)  # unit conversion after scale/offset
    values: dict[str, float] | None = None  # categorical columns (Mode N/D/R)
    integral: bool = False


@dataclass(frozen=True, slots=True)
class TwizyMapping:
    """How Twizy CSV rows become frames (see `rules/replay/twizy.yaml`)."""

    date_column: str
    date_format: str
    time_column: str
    time_format: str
    utc_offset_ms: int
    bad_dates: str  # repair | drop
    vin_prefix: str
    shift_s: float
    columns: tuple[ColumnMap, ...]
    pattern: str = "*.csv"


def load_mapping(path: Path | str | None = None, catalog: Catalog | None = None) -> TwizyMapping:
    """Read and validate the Twizy column mapping against the catalog."""
    path = Path(path or DEFAULT_MAPPING)
    if not path.exists():
        raise ConfigError("mapping file not found", file=str(path))
    parsed = load_yaml(path)
    file, doc = parsed.file, parsed.data
    if not isinstance(doc, dict):
        raise ConfigError("must be a mapping with 'time', 'vehicle' and 'columns'", file=file)
    catalog = catalog or load_catalog()
    clock = doc.get("time") or {}
    if not isinstance(clock, dict):
        raise ConfigError("must be a mapping", file=file, line=parsed.line("time"), field="time")
    offset = str(clock.get("utc_offset", "+00:00"))
    try:
        sign = -1 if offset.startswith("-") else 1
        hours, minutes = offset.lstrip("+-").split(":")
        offset_ms = sign * (int(hours) * 3600 + int(minutes) * 60) * 1000
    except ValueError as exc:
        raise ConfigError(f"must look like +01:00, got {offset!r}", file=file,
                          line=parsed.line("time", "utc_offset"), field="time.utc_offset") from exc
    bad_dates = str(clock.get("bad_dates", "repair"))
    if bad_dates not in ("repair", "drop"):
        raise ConfigError(f"must be repair or drop, got {bad_dates!r}", file=file,
                          line=parsed.line("time", "bad_dates"), field="time.bad_dates")
    vehicle = doc.get("vehicle") or {}
    if not isinstance(vehicle, dict):
        raise ConfigError("must be a mapping", file=file, line=parsed.line("vehicle"), field="vehicle")
    prefix = str(vehicle.get("vin_prefix", "VF1TWZ"))
    if not 3 <= len(prefix) <= 12 or any(c in "IOQ" for c in prefix.upper()):
        raise ConfigError("must be 3-12 VIN characters (no I, O or Q)", file=file,
                          line=parsed.line("vehicle", "vin_prefix"), field="vehicle.vin_prefix")
    shift = vehicle.get("shift_s", 97.0)
    if isinstance(shift, bool) or not isinstance(shift, int | float):
        raise ConfigError(f"must be a number of seconds, got {shift!r}", file=file,
                          line=parsed.line("vehicle", "shift_s"), field="vehicle.shift_s")
    raw_columns = doc.get("columns")
    if not isinstance(raw_columns, list) or not raw_columns:
        raise ConfigError("must be a non-empty list", file=file, line=parsed.line("columns"), field="columns")
    columns: list[ColumnMap] = []
    for i, raw in enumerate(raw_columns):
        line = parsed.line("columns", i)
        rule = f"key columns[{i}]"
        if not isinstance(raw, dict) or "column" not in raw or "signal" not in raw:
            raise ConfigError("needs 'column' and 'signal'", file=file, line=line, rule=rule)
        unknown = set(raw) - {"column", "signal", "unit", "scale", "offset", "values"}
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}", file=file, line=line, rule=rule)
        name = str(raw["signal"])
        if name not in catalog:
            raise ConfigError(f"signal {name!r} is not in the catalog", file=file, line=line, rule=rule,
                              field="signal")
        sig = catalog.signal(name)
        unit = str(raw.get("unit", sig.unit) or "")
        conv = sig.conversion(unit)
        if conv is None:
            raise ConfigError(f"unit {unit!r} is not accepted for {name} (canonical {sig.unit!r})",
                              file=file, line=line, rule=rule, field="unit")
        values = raw.get("values")
        if values is not None and (not isinstance(values, dict)
                                   or not all(isinstance(v, int | float) for v in values.values())):
            raise ConfigError("must map CSV text to numbers", file=file, line=line, rule=rule, field="values")
        for key in ("scale", "offset"):
            if key in raw and (isinstance(raw[key], bool) or not isinstance(raw[key], int | float)):
                raise ConfigError(f"must be a number, got {raw[key]!r}", file=file,
                                  line=parsed.line("columns", i, key), rule=rule, field=key)
        columns.append(ColumnMap(str(raw["column"]), name, sig.kind, float(raw.get("scale", 1.0)),
                                 float(raw.get("offset", 0.0)), (conv.scale, conv.offset),
                                 {str(k): float(v) for k, v in values.items()} if values else None,
                                 sig.is_integral))
    return TwizyMapping(str(clock.get("date_column", "Date")), str(clock.get("date_format", "%m/%d/%Y")),
                        str(clock.get("time_column", "Time")), str(clock.get("time_format", "%H:%M:%S")),
                        offset_ms, bad_dates, prefix, float(shift), tuple(columns),
                        str(doc.get("pattern", "*.csv")))


@dataclass(slots=True)
class Trip:
    """One CSV file as columns: kept rows' timestamps and each mapped signal's values (NaN = skipped)."""

    name: str
    t_ms: npt.NDArray[np.int64]
    values: dict[str, npt.NDArray[np.float64]]
    counts: collections.Counter[str]


def _parse_time(text: str, fmt: str) -> int | None:
    """Seconds since midnight, None if the text does not match the format."""
    text = text.strip()
    if fmt == "%H:%M:%S":  # fast path for the common format (same validation as strptime)
        parts = text.split(":")
        if len(parts) == 3 and all(p.isdigit() and 1 <= len(p) <= 2 for p in parts):
            h, m, s = (int(p) for p in parts)
            if h < 24 and m < 60 and s < 62:
                return h * 3600 + m * 60 + min(s, 59)
        return None
    try:
        t = datetime.strptime(text, fmt)
    except ValueError:
        return None
    return t.hour * 3600 + t.minute * 60 + t.second


def _date_parser(fmt: str) -> Callable[[str], date | None]:
    """A cached date parser: trip files repeat the same few date strings."""
    cache: dict[str, date | None] = {}

    def parse(text: str) -> date | None:
        if text not in cache:
            try:
                cache[text] = datetime.strptime(text.strip(), fmt).date()
            except ValueError:
                cache[text] = None
        return cache[text]

    return parse


def load_trip(path: Path, mapping: TwizyMapping) -> Trip:
    """Read one trip, repairing or dropping rows per the mapping's policy (counted by reason)."""
    counts: collections.Counter[str] = collections.Counter()
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        rows = [r for r in reader if r]
    counts["rows"] = len(rows)
    position = {name.strip(): i for i, name in enumerate(header)}
    for name in (mapping.date_column, mapping.time_column, *(c.column for c in mapping.columns)):
        if name not in position:
            raise PipelineError(f"{path}: no column {name!r} (header: {', '.join(header)})")
    di, ti = position[mapping.date_column], position[mapping.time_column]
    parse_date = _date_parser(mapping.date_format)
    dates = [parse_date(r[di]) if len(r) > di else None for r in rows]
    valid = [d for d in dates if d is not None]
    if not valid:
        counts["dropped.no_valid_date"] = len(rows)
        return Trip(path.stem, np.zeros(0, dtype=np.int64), {}, counts)
    dominant = collections.Counter(valid).most_common(1)[0][0]
    base_ms = int(datetime(dominant.year, dominant.month, dominant.day, tzinfo=UTC).timestamp() * 1000)
    base_ms -= mapping.utc_offset_ms
    kept: list[int] = []
    stamps: list[int] = []
    day = 0
    prev_tod: int | None = None
    prev_ms: int | None = None
    for i, row in enumerate(rows):
        tod = _parse_time(row[ti], mapping.time_format) if len(row) > ti else None
        if tod is None:
            counts["dropped.bad_time"] += 1
            continue
        if prev_tod is not None and tod < prev_tod - 12 * 3600:
            day += 1  # the trip ran past midnight
        if dates[i] != dominant + timedelta(days=day):
            if mapping.bad_dates == "drop":
                counts["dropped.bad_date"] += 1
                continue
            counts["repaired.bad_date"] += 1
        ms = base_ms + day * 86_400_000 + tod * 1000
        if prev_ms is not None and ms <= prev_ms:
            counts["dropped.time_backwards"] += 1
            continue
        prev_tod, prev_ms = tod, ms
        kept.append(i)
        stamps.append(ms)
    values: dict[str, npt.NDArray[np.float64]] = {}
    for col in mapping.columns:
        ci = position[col.column]
        cells = [rows[i][ci].strip() if len(rows[i]) > ci else "" for i in kept]
        if col.values is not None:
            lookup = col.values
            out = np.array([lookup.get(c, np.nan) for c in cells], dtype=np.float64)
        else:
            try:
                out = np.asarray(cells, dtype=np.float64)
            except ValueError:
                out = np.array([_float_or_nan(c) for c in cells], dtype=np.float64)
            out = (out * col.scale + col.offset) * col.to_canonical[0] + col.to_canonical[1]
        missing = int(np.isnan(out).sum())
        if missing:
            counts[f"skipped.{col.column}"] += missing
        values[col.signal] = out
    counts["kept"] = len(kept)
    return Trip(path.stem, np.asarray(stamps, dtype=np.int64), values, counts)


def _float_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def load_trips(directory: Path | str, mapping: TwizyMapping) -> list[Trip]:
    """Every trip file of the dataset directory, in chronological order."""
    directory = Path(directory)
    files = sorted(directory.glob(mapping.pattern))
    if not files:
        raise PipelineError(f"no {mapping.pattern} files in {directory} (set TWIZY_DIR or --twizy-dir)")
    trips = [load_trip(p, mapping) for p in files]
    return sorted((t for t in trips if t.t_ms.size), key=lambda t: int(t.t_ms[0]))


def twizy_vin(prefix: str, index: int) -> str:
    """A deterministic 17-character VIN-like id for derived vehicle `index`."""
    return f"{prefix}{index:0{17 - len(prefix)}d}"


@dataclass(slots=True)
class TwizyFrame:
    """A frame built from Twizy rows, before encoding."""

    timestamp_ms: int
    vehicle: int
    kind: str
    frame: dict[str, Any]
    n_readings: int


def twizy_frames(trips: list[Trip], mapping: TwizyMapping, *, vehicle: int, frame_seconds: float = 5.0
                 ) -> Iterator[TwizyFrame]:
    """Frames of one derived vehicle: every trip, time-shifted by `vehicle * shift_s`.

    Rows are grouped into windows of `frame_seconds` (aligned to the epoch); each window
    gives a sensor frame and a GPS frame with the rows' values as recorded (GPS held
    between fixes, as the logger wrote it). sent_at = end of the window.
    """
    vin = twizy_vin(mapping.vin_prefix, vehicle)
    shift = int(round(vehicle * mapping.shift_s * 1000))
    frame_ms = int(frame_seconds * 1000)
    seq = 0
    by_kind = {k: [c for c in mapping.columns if c.kind == k] for k in ("sensor", "gps")}
    for trip in trips:
        t = trip.t_ms + shift
        window = t // frame_ms
        bounds = np.flatnonzero(np.diff(window)) + 1
        starts = np.concatenate([[0], bounds])
        per_signal: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[Any], list[int]]] = {}
        for col in mapping.columns:
            v = trip.values[col.signal]
            ok = ~np.isnan(v)
            vals: npt.NDArray[Any] = v[ok].astype(np.int64) if col.integral else v[ok]
            # first valid row of each window (and the end), found in the valid rows
            rows = np.flatnonzero(ok)
            first = np.searchsorted(rows, starts).tolist() + [int(rows.size)]
            per_signal[col.signal] = (t[ok], vals, first)
        for w, sent_window in enumerate((window[starts] + 1).tolist()):
            sent_at = sent_window * frame_ms
            for kind in ("sensor", "gps"):
                samples: dict[str, Any] = {}
                n = 0
                for col in by_kind[kind]:
                    ts, vals, first = per_signal[col.signal]
                    a, b = first[w], first[w + 1]
                    if b > a:
                        samples[col.signal] = {"t": ts[a:b], "v": vals[a:b]}
                        n += b - a
                if not samples:
                    continue
                frame = {"vin": vin, "seq": seq, "sent_at": sent_at, "samples": samples}
                seq += 1
                yield TwizyFrame(sent_at, vehicle, kind, frame, n)


def twizy_items(trips: list[Trip], mapping: TwizyMapping, *, vehicles: int = 1, frame_seconds: float = 5.0,
                settings: Settings | None = None, topics: dict[str, str] | None = None) -> Iterator[Item]:
    """Encoded records of `vehicles` derived vehicles, merged in timestamp order."""
    settings = settings or get_settings()
    target = topics or {"sensor": settings.topic_sensor, "gps": settings.topic_gps}
    streams = [twizy_frames(trips, mapping, vehicle=v, frame_seconds=frame_seconds) for v in range(vehicles)]
    merged = heapq.merge(*streams, key=lambda f: (f.timestamp_ms, f.vehicle))
    for f in merged:
        enc = encode_frame(f.kind, f.frame)  # type: ignore[arg-type]
        yield Record(target[f.kind], enc.key, enc.value, tuple(enc.headers), f.timestamp_ms), f.n_readings


def twizy_totals(trips: list[Trip]) -> collections.Counter[str]:
    """Row counts of all trips by outcome (rows, kept, repaired.*, dropped.*, skipped.*)."""
    total: collections.Counter[str] = collections.Counter()
    for trip in trips:
        total.update(trip.counts)
    return total
