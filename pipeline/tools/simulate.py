"""Fleet simulator: realistic vehicle traffic with injected faults and exact ground truth.

`FleetSimulator` drives N vehicles (EVs and combustion cars) around a city's road network
(`pipeline.tools.sim.city`, `pipeline.tools.sim.fleet`), samples every catalog signal at its own
interval (`pipeline.tools.sim.signals`), groups samples into one sensor frame and one GPS
frame per vehicle every `frame_seconds`, corrupts some of them (`pipeline.tools.sim.faults`)
and emits the frames in arrival order, window by window, so memory stays bounded for
any duration. The same seed gives the same bytes.

Frames leave as dicts (`SimFrame`, samples as numpy arrays); `encode_frame` turns them
into Kafka records only at the output edge (`to_record`), where malformed payloads are
also made. `record_windows` makes the same records without the dicts: it serializes each
signal's samples of a window once and cuts the frames' JSON out of that text. Outputs: a recording file (`pipeline.tools.recording`) with its truth file beside it
(`pipeline.tools.sim.truth`, read back with `load_truth`), or Kafka (`pipeline.tools.replay`).

Conventions a consumer can rely on:
- `seq` counts every frame a vehicle uploads, sensor and GPS alike, so (vin, seq) names
  one frame; within one topic a vehicle's seq increases with gaps.
- The record timestamp is the arrival (ingest) time: equal to `sent_at`, except for late,
  out-of-order and resent frames (arrival = sent_at + delay) and for clock skew (the
  vehicle's `sent_at` and sample times are shifted, the arrival is not).
- Sample times lie on per-vehicle grids `start + phase + k * interval_ms` (phase under a
  quarter of a frame), and a frame holds the samples of its `frame_seconds` window.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.errors import InputError
from pipeline.core.events import encode_frame, frame_headers
from pipeline.tools.recording import Record, RecordingWriter
from pipeline.tools.sim.city import CITIES, RoadNetwork
from pipeline.tools.sim.faults import (
    FAULT_CODE,
    FAULT_NAMES,
    FAULTS,
    FaultInjector,
    FrameTable,
    parse_fault_rates,
)
from pipeline.tools.sim.fleet import CHARGING, DRIVING, FleetModel
from pipeline.tools.sim.signals import LAT, LON, SampleGrid, plan_signals, sample
from pipeline.tools.sim.truth import (
    Truth,
    TruthRows,
    TruthWriter,
    frame_rows,
    load_truth,
    reading_rows,
    truth_path,
)

__all__ = ["DEFAULT_START", "FleetSimulator", "SimConfig", "SimFrame", "Truth", "load_truth",
           "simulate_to_recording", "to_record", "truth_path"]

DEFAULT_START = "2024-05-14T07:30:00+01:00"  # a Tuesday, morning rush in Rabat
KINDS = ("sensor", "gps")
_CODE_NAME = {code: name for name, code in FAULT_CODE.items()}
_SKEW = FAULT_CODE["clock_skew"]
_DUP = FAULT_CODE["duplicate"]
_MALFORMED = frozenset({"missing_field", "wrong_type", "oversized", "bad_json"})  # payloads broken on the way out
_BROKEN_FROM_DICT = _MALFORMED - {"bad_json"}  # built by editing the frame dict (bad_json cuts the bytes)
_COMMA, _CUT = ord(","), ord("|")  # "|" never occurs in JSON numbers


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector around bulk allocation of acyclic containers.

    Assembling a window allocates hundreds of thousands of small dicts and lists that
    never form cycles; generational collections triggered by them only rescan live data.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_start(text: str) -> int:
    """An ISO 8601 time (UTC if no offset) as epoch milliseconds."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"start must be an ISO 8601 time like 2024-05-01T08:00:00, got {text!r}") from exc
    return int((value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What to simulate; every field has a default, so `SimConfig()` is a small run."""

    vehicles: int = 1000
    duration_s: float = 600.0
    seed: int = 7
    start: str = DEFAULT_START
    ev_share: float = 0.6
    frame_seconds: float = 5.0
    fault_rates: dict[str, float] = field(default_factory=lambda: parse_fault_rates(None))
    city: str = "rabat"
    sensor_topic: str = "vehicle.sensor.raw"
    gps_topic: str = "vehicle.gps.raw"
    max_frame_bytes: int = 1_000_000
    window_s: float | None = None  # simulated seconds per generation window (default: by fleet size)

    def __post_init__(self) -> None:
        for wrong, message in ((self.vehicles < 1, "vehicles must be at least 1"),
                               (not 0.0 <= self.ev_share <= 1.0, "ev_share must be between 0 and 1"),
                               (self.duration_s <= 0, "duration must be positive"),
                               (self.frame_seconds < 1 or (self.frame_seconds * 1000) % 1000,
                                "frame_seconds must be a whole number of seconds, at least 1"),
                               (self.city not in CITIES, f"unknown city {self.city!r}; known: {', '.join(CITIES)}")):
            if wrong:
                raise InputError(message)
        parse_start(self.start)

    @property
    def frame_ms(self) -> int:
        return int(self.frame_seconds * 1000)

    @property
    def start_ms(self) -> int:
        return parse_start(self.start)

    def as_dict(self) -> dict[str, Any]:
        return {"vehicles": self.vehicles, "duration_s": self.duration_s, "seed": self.seed,
                "start": self.start, "ev_share": self.ev_share, "frame_seconds": self.frame_seconds,
                "fault_rates": dict(self.fault_rates), "city": self.city,
                "topics": {"sensor": self.sensor_topic, "gps": self.gps_topic},
                "max_frame_bytes": self.max_frame_bytes}


@dataclass(slots=True)
class SimFrame:
    """One frame on its way out: what to send, when it arrives, and how it is broken."""

    arrival_ms: int  # Kafka record timestamp
    kind: str  # sensor | gps
    frame: dict[str, Any]  # empty for frames encoded straight to bytes, unless a fault edits it
    n_readings: int
    vehicle: int  # index of the vehicle in the fleet (ordering ties)
    seq: int
    fault: str = ""  # frame-level fault name, "" if none
    detail: str = ""
    copy: int = 0  # 1 for the resend of a duplicated frame
    record: Record | None = None  # the encoded record, when encoding at generation time


@dataclass(frozen=True, slots=True)
class _Encoding:
    """Where and how `FleetSimulator._window` encodes its frames as records."""

    topics: dict[str, str]
    max_frame_bytes: int


@dataclass(slots=True)
class Stats:
    """Running totals of a simulation."""

    frames: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    readings: int = 0
    sim_ms: int = 0
    windows: int = 0

    @property
    def total_frames(self) -> int:
        return sum(self.frames.values())


def _slot_sums(sent: npt.NDArray[np.bool_], slot_of_col: npt.NDArray[np.intp], n_slots: int) -> npt.NDArray[np.int64]:
    """Sent readings per (row, slot)."""
    out = np.zeros((sent.shape[0], n_slots), dtype=np.int64)
    if sent.shape[1] == 0:
        return out
    slots, starts = np.unique(slot_of_col, return_index=True)
    out[:, slots] = np.add.reduceat(sent.astype(np.int64), starts, axis=1)
    return out


class FleetSimulator:
    """Generates the frames of a fleet window by window (see module docstring)."""

    def __init__(self, config: SimConfig, catalog: Catalog | None = None) -> None:
        self.config = config
        self.catalog = catalog or load_catalog()
        self.network = RoadNetwork(CITIES[config.city], config.seed)
        self.model = FleetModel(self.network, config.vehicles, config.ev_share, config.start_ms, config.seed)
        self.injector = FaultInjector(dict(config.fault_rates), self.catalog, config.vehicles,
                                      config.frame_ms, config.seed)
        self.vins = self.model.vehicles.vins
        self._vin_arr = np.asarray(self.vins, dtype=object)
        self._vin_keys = [vin.encode("utf-8") for vin in self.vins]  # Kafka keys
        self._vin_json = [orjson.dumps(vin).decode() for vin in self.vins]  # as JSON strings
        frame_rng = np.random.default_rng([config.seed, 0xF4A3E])
        self.phase_ms = frame_rng.integers(0, max(config.frame_ms // 4, 1), config.vehicles).astype(np.int64)
        self._frame_rng = frame_rng
        self._signal_rng = np.random.default_rng([config.seed, 0x5164A1])
        self._unknown_rng = np.random.default_rng([config.seed, 0x0B5C])
        self.seq_next = np.zeros(config.vehicles, dtype=np.int64)
        self.stats = Stats()
        self._pending: list[tuple[int, int, int, int, SimFrame]] = []
        self._kind_of = np.array([s.kind == "gps" for s in self.catalog.signals], dtype=np.int8)
        self._names = list(self.catalog.names)
        self._integral = [s.is_integral for s in self.catalog.signals]
        self._lat = self.catalog.index.get(LAT, -1)
        self._lon = self.catalog.index.get(LON, -1)
        frame_ms = config.frame_ms
        if config.window_s:
            window_ms = int(config.window_s * 1000)
        else:
            window_ms = int(60_000 * min(1.0, 2000 / config.vehicles))
        self.window_ms = max(frame_ms, window_ms // frame_ms * frame_ms)
        total = math.ceil(config.duration_s * 1000 / frame_ms) * frame_ms
        self.end_ms = config.start_ms + total

    @property
    def tally(self) -> dict[str, dict[str, int]]:
        t = self.injector.tally
        return {"injected": dict(t.injected), "opportunities": dict(t.opportunities)}

    # --- generation ------------------------------------------------------------------------

    def windows(self) -> Iterator[tuple[list[SimFrame], list[TruthRows]]]:
        """(frames in arrival order, truth rows) per window, until the end of the run."""
        return self._windows(None)

    def record_windows(self, topics: dict[str, str]) -> Iterator[tuple[list[tuple[Record, int]], list[TruthRows]]]:
        """Like `windows`, with each frame already encoded: ((record, readings), truth rows).

        The records equal `to_record` of the frames `windows` gives, but the JSON payloads
        are assembled from each signal's serialized samples (`_json_frames`); a frame dict
        is built only for the frames whose malformed payload is made from one. Encoding
        happens inside the window's garbage-collector pause (see `gc_paused`).
        """
        return self._windows(_Encoding(dict(topics), self.config.max_frame_bytes))

    def _windows(self, encoding: _Encoding | None) -> Iterator[tuple[list[Any], list[TruthRows]]]:
        start = self.config.start_ms
        ws = start
        while ws < self.end_ms:
            length = min(self.window_ms, self.end_ms - ws)
            last = ws + length >= self.end_ms
            with gc_paused():
                frames, truth = self._window(ws, length, encoding)
                out = self._release(frames, None if last else ws + length + self.config.frame_ms)
                del frames
                for f in out:
                    self.stats.frames[f.kind] += 1
                    self.stats.readings += f.n_readings
                self.stats.sim_ms = ws + length - start
                self.stats.windows += 1
                result: list[Any] = out if encoding is None else [(f.record, f.n_readings) for f in out]
                del out
            yield result, truth
            ws += length

    def frames(self) -> Iterator[SimFrame]:
        """Every frame of the run in arrival order (truth rows discarded)."""
        for out, _ in self.windows():
            yield from out

    def _release(self, frames: list[SimFrame], cutoff: int | None) -> list[SimFrame]:
        """Frames that arrive before `cutoff` (all if None), merged with earlier delayed ones."""
        for f in frames:
            heapq.heappush(self._pending, (f.arrival_ms, f.vehicle, f.seq, f.copy, f))
        out: list[SimFrame] = []
        pending = self._pending
        while pending and (cutoff is None or pending[0][0] < cutoff):
            out.append(heapq.heappop(pending)[4])
        return out

    def _window(self, ws: int, length: int, encoding: _Encoding | None = None
                ) -> tuple[list[SimFrame], list[TruthRows]]:
        cfg = self.config
        frame_ms = cfg.frame_ms
        n_slots = length // frame_ms
        trace = self.model.run_window(length // 1000)
        awake = (trace.mode[:-1] == DRIVING) | (trace.mode[:-1] == CHARGING)
        active = np.flatnonzero(awake.any(axis=0))
        if active.size == 0:
            return [], []
        n_active = active.size
        phase = self.phase_ms[active]
        plans = plan_signals(self.catalog, length, frame_ms)
        # signals on the global grid t = start + phase + m * interval
        for p in plans:
            first = (-(ws - cfg.start_ms)) % p.signal.interval_ms
            p.offsets_ms = np.arange(first, length, p.signal.interval_ms, dtype=np.int64)
            p.slot_of_col = (p.offsets_ms // frame_ms).astype(np.intp)

        grids: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]] = []
        slot_counts = np.zeros((n_active, n_slots, 2), dtype=np.int64)
        veh = self.model.vehicles
        for p in plans:
            grid = SampleGrid(trace, veh, self.network, active, p.offsets_ms, self._signal_rng,
                              ws - cfg.start_ms)
            values, sent = sample(p, grid)
            slot_counts[:, :, self._kind_of[p.index]] += _slot_sums(sent, p.slot_of_col, n_slots)
            grids.append((values, sent))

        exists = slot_counts > 0
        flat = np.flatnonzero(exists)
        n_frames = flat.size
        a_idx, slot, kind = np.unravel_index(flat, exists.shape)
        frame_map = np.full(exists.shape, -1, dtype=np.intp)
        frame_map.reshape(-1)[flat] = np.arange(n_frames)
        vehicle = active[a_idx]
        per_row = exists.reshape(n_active, -1).sum(axis=1)
        first_of_row = np.cumsum(per_row) - per_row
        seq = self.seq_next[vehicle] + (np.arange(n_frames) - first_of_row[a_idx])
        self.seq_next[active] += per_row
        upload = self._frame_rng.integers(20, max(frame_ms // 4, 21), (n_active, n_slots))
        sent_true = ws + phase[a_idx] + (slot + 1) * frame_ms + upload[a_idx, slot] + kind
        nxt = np.minimum(slot + 1, n_slots - 1)
        has_next = (slot + 1 < n_slots) & exists[a_idx, nxt, kind]
        next_index = frame_map[a_idx, nxt, kind]
        table = FrameTable(vehicle, slot, kind.astype(np.int8), seq, sent_true, has_next, next_index)
        ff = self.injector.frame_faults(table)
        frame_ok = ~ff.malformed
        skewed = ff.code == _SKEW
        duplicated = ff.code == _DUP

        # GPS position faults on the paired latitude/longitude grids
        pre_code: dict[int, npt.NDArray[np.int8]] = {}
        pre_true: dict[int, npt.NDArray[np.float64]] = {}
        if self._lat >= 0 and self._lon >= 0:
            (lat_v, lat_s), (lon_v, lon_s) = grids[self._lat], grids[self._lon]
            if lat_v.shape == lon_v.shape:
                fid = frame_map[:, plans[self._lat].slot_of_col, 1]
                ok = lat_s & lon_s & frame_ok[np.where(lat_s, fid, 0)]
                new_lat, new_lon, gcode = self.injector.gps_faults(lat_v, lon_v, ok)
                pre_true[self._lat], pre_true[self._lon] = lat_v, lon_v
                grids[self._lat] = (new_lat, lat_s)
                grids[self._lon] = (new_lon, lon_s)
                pre_code[self._lat], pre_code[self._lon] = gcode, gcode.copy()

        truth: list[TruthRows] = []
        col_names: list[str] = []  # per signal with samples in this window: flat t and v arrays
        col_t: list[npt.NDArray[np.int64]] = []
        col_v: list[npt.NDArray[Any]] = []
        col_counts: list[npt.NDArray[np.int64]] = []  # samples per frame
        unit_blocks: dict[int, list[tuple[str, str]]] = {}
        extra: dict[int, tuple[str, dict[str, Any]]] = {}
        n_readings = np.zeros(n_frames, dtype=np.int64)
        kinds_obj = np.asarray(KINDS, dtype=object)
        for p, (values, sent) in zip(plans, grids, strict=True):
            k = int(self._kind_of[p.index])
            fid = frame_map[:, p.slot_of_col, k]
            t_true = ws + phase[:, None] + p.offsets_ms[None, :]
            rf = self.injector.reading_faults(p.index, active, values, sent, t_true, fid, frame_ok,
                                              pre_code.get(p.index), pre_true.get(p.index))
            safe_fid = np.where(sent, fid, 0)
            t_emit = t_true + np.where(sent, ff.skew_ms[safe_fid], 0)
            name = p.signal.name
            # truth: reading faults, then readings of skewed and resent frames
            bad = rf.code != 0
            if bad.any():
                rows, cols = np.nonzero(bad)
                f_of = fid[rows, cols]
                codes = rf.code[rows, cols]
                detail = np.asarray([rf.units.get(f) for f in f_of.tolist()], dtype=object)
                truth.append(reading_rows(
                    self._vin_arr[active[rows]], np.full(rows.size, name, dtype=object), t_emit[rows, cols],
                    seq[f_of], kinds_obj[np.full(rows.size, k)],
                    np.asarray([_CODE_NAME[c] for c in codes.tolist()], dtype=object),
                    np.where(codes == FAULT_CODE["dropout"], np.nan, rf.values[rows, cols]),
                    rf.true_values[rows, cols], detail))
            emitted = rf.sent
            for mask_frames, fault, only_clean in ((skewed, "clock_skew", True), (duplicated, "duplicate", False)):
                if not mask_frames.any():
                    continue
                sel = emitted & mask_frames[safe_fid]
                if only_clean:
                    sel &= rf.code == 0
                if sel.any():
                    rows, cols = np.nonzero(sel)
                    f_of = fid[rows, cols]
                    truth.append(reading_rows(
                        self._vin_arr[active[rows]], np.full(rows.size, name, dtype=object), t_emit[rows, cols],
                        seq[f_of], kinds_obj[np.full(rows.size, k)], np.full(rows.size, fault, dtype=object),
                        rf.values[rows, cols], rf.true_values[rows, cols]))
            # this signal's samples, flat in (vehicle, time) order: each frame's are contiguous
            if not emitted.any():
                continue
            f_flat = fid[emitted]
            values_out = rf.values[emitted]
            if self._integral[p.index] and not rf.units and not np.isnan(values_out).any():
                values_out = values_out.astype(np.int64)
            counts = np.bincount(f_flat, minlength=n_frames)
            n_readings += counts
            col_names.append(name)
            col_t.append(t_emit[emitted])
            col_v.append(values_out)
            col_counts.append(counts)
            for f, unit in rf.units.items():
                unit_blocks.setdefault(f, []).append((name, unit))

        # readings of signals the catalog does not know
        for f in np.flatnonzero(ff.unknown_signal).tolist():
            rng = self._unknown_rng
            names = self.injector.unknown_signal_names[KINDS[int(kind[f])]]
            name = names[int(rng.integers(0, len(names)))]
            n = int(rng.integers(1, min(5, frame_ms // 1000) + 1))  # 1 Hz, inside the frame's window
            base = int(ws + phase[a_idx[f]] + slot[f] * frame_ms + ff.skew_ms[f])
            ts = [base + i * 1000 for i in range(n)]
            vals = np.round(rng.uniform(0.0, 100.0, n), 2).tolist()
            extra[f] = (name, {"t": ts, "v": vals})
            n_readings[f] += n
            truth.append(reading_rows(
                np.full(n, self.vins[int(vehicle[f])], dtype=object), np.full(n, name, dtype=object),
                np.asarray(ts, dtype=np.int64), np.full(n, seq[f], dtype=np.int64),
                np.full(n, KINDS[int(kind[f])], dtype=object), np.full(n, "unknown_signal", dtype=object),
                np.asarray(vals), np.asarray(vals)))

        # frames out: (frame, signal) pairs with samples, in frame order, index the flat columns
        if col_counts:
            counts_m = np.stack(col_counts, axis=1)  # (frames, signals)
            starts_m = np.cumsum(counts_m, axis=0) - counts_m
            pair_frame, pair_col = np.nonzero(counts_m)
            pair_start = starts_m[pair_frame, pair_col].tolist()
            pair_n = counts_m[pair_frame, pair_col].tolist()
            bounds = np.searchsorted(pair_frame, np.arange(n_frames + 1)).tolist()
            pair_cols = pair_col.tolist()
        else:
            pair_start, pair_n, pair_cols, bounds = [], [], [], [0] * (n_frames + 1)
        out: list[SimFrame] = []
        sent_at = sent_true + ff.skew_ms
        vins = self.vins

        def frame_dict(i: int, v: int, s: int, sa: int) -> dict[str, Any]:
            samples: dict[str, Any] = {}
            lo, hi = bounds[i], bounds[i + 1]
            for j, o, n in zip(pair_cols[lo:hi], pair_start[lo:hi], pair_n[lo:hi], strict=True):
                samples[col_names[j]] = {"t": col_t[j][o:o + n], "v": col_v[j][o:o + n]}
            if i in unit_blocks:
                for name, unit in unit_blocks[i]:
                    samples[name]["u"] = unit
            if i in extra:
                samples[extra[i][0]] = extra[i][1]
            return {"vin": vins[v], "seq": s, "sent_at": sa, "samples": samples}

        payloads: list[bytes] = []
        if encoding is not None:
            payloads = self._payloads(vehicle.tolist(), seq.tolist(), sent_at.tolist(), col_names, col_t, col_v,
                                      pair_cols, pair_n, bounds, unit_blocks, extra)
        for i, (v, s, kd, sa, arr, c, nr) in enumerate(zip(
                vehicle.tolist(), seq.tolist(), kind.tolist(), sent_at.tolist(), ff.arrival.tolist(),
                ff.code.tolist(), n_readings.tolist(), strict=True)):
            fault = _CODE_NAME[c] if c and c != _DUP else ""
            # encoded frames carry their payload bytes; the dict is built only where a fault needs it
            frame = frame_dict(i, v, s, sa) if encoding is None or fault in _BROKEN_FROM_DICT else {}
            kind_name = KINDS[kd]
            sim = SimFrame(arr, kind_name, frame, nr, v, s, fault, ff.detail[i])
            if encoding is not None:  # what `to_record` makes of the frame
                value = payloads[i]
                if fault in _MALFORMED:
                    value = _malformed(sim, value, encoding.max_frame_bytes)
                sim.record = Record(encoding.topics[kind_name], self._vin_keys[v], value,
                                    frame_headers(kind_name, vins[v], s, sa), arr)
            out.append(sim)
            if c == _DUP:
                resend = SimFrame(int(ff.dup_arrival[i]), kind_name, frame, nr, v, s, "duplicate",
                                  ff.detail[i], copy=1)
                if sim.record is not None:
                    resend.record = sim.record._replace(timestamp_ms=resend.arrival_ms)
                out.append(resend)
        bad_frames = np.flatnonzero(ff.code != 0)
        if bad_frames.size:
            stamps = np.where(duplicated, ff.dup_arrival, ff.arrival)[bad_frames]
            detail = np.asarray([ff.detail[i] or self._delay_detail(ff, table, i) for i in bad_frames.tolist()],
                                dtype=object)
            truth.append(frame_rows(
                self._vin_arr[vehicle[bad_frames]], seq[bad_frames], kinds_obj[kind[bad_frames]],
                np.asarray([_CODE_NAME[c] for c in ff.code[bad_frames].tolist()], dtype=object),
                sent_at[bad_frames], stamps, n_readings[bad_frames], detail))
        return out, truth

    def _payloads(self, vehicle: list[int], seq: list[int], sent_at: list[int], col_names: list[str],
                  col_t: list[npt.NDArray[np.int64]], col_v: list[npt.NDArray[Any]], pair_cols: list[int],
                  pair_n: list[int], bounds: list[int],
                  unit_blocks: dict[int, list[tuple[str, str]]], extra: dict[int, tuple[str, dict[str, Any]]],
                  ) -> list[bytes]:
        """The JSON payload of every frame of the window, byte for byte what orjson makes of its dict.

        `{"vin":..,"seq":..,"sent_at":..,"samples":{..}}` with, per (frame, signal) pair in order,
        `"name":{"t":[..],"v":[..]}` (plus `"u"` for a unit block), then the unknown signal, if any.
        """
        heads = [f'{{"vin":{self._vin_json[v]},"seq":{s},"sent_at":{sa},"samples":{{'.encode()
                 for v, s, sa in zip(vehicle, seq, sent_at, strict=True)]
        tails = [b"}}"] * len(heads)
        for i, (name, entry) in extra.items():  # not a catalog signal, so never a column's name
            lead = b"," if bounds[i + 1] > bounds[i] else b""
            tails[i] = lead + orjson.dumps({name: entry})[1:-1] + b"}}"
        pair_unit: dict[int, bytes] = {}
        if unit_blocks:
            col_of = {name: j for j, name in enumerate(col_names)}
            for i, blocks in unit_blocks.items():
                for name, unit in blocks:
                    pair = pair_cols.index(col_of[name], bounds[i], bounds[i + 1])
                    pair_unit[pair] = b'],"u":' + orjson.dumps(unit) + b"}"
        return _json_frames(heads, tails, col_names, col_t, col_v, np.asarray(pair_cols, dtype=np.int64),
                           np.asarray(pair_n, dtype=np.int64), np.asarray(bounds, dtype=np.int64), pair_unit)

    @staticmethod
    def _delay_detail(ff: Any, table: FrameTable, i: int) -> str:
        arrival = ff.dup_arrival[i] if ff.code[i] == _DUP else ff.arrival[i]
        delay = int(arrival - table.sent_true[i])
        return f"delay_ms={delay}" if delay else ""

    # --- summary ---------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Configuration, totals and per-fault counts (stored in the truth file)."""
        tally = self.injector.tally
        faults = {}
        for f in FAULTS:
            opp = tally.opportunities[f.name]
            faults[f.name] = {"level": f.level, "unit": f.unit, "rate": self.config.fault_rates[f.name],
                              "injected": tally.injected[f.name], "opportunities": opp,
                              "achieved": (tally.injected[f.name] / opp) if opp else 0.0}
        return {
            "config": self.config.as_dict(),
            "vins": len(self.vins),
            "ev": int(self.model.vehicles.is_ev.sum()),
            "frames": dict(self.stats.frames),
            "readings": self.stats.readings,
            "sim_seconds": self.stats.sim_ms / 1000.0,
            "faults": faults,
        }


# --- output edge ------------------------------------------------------------------------------


def _json_frames(heads: list[bytes], tails: list[bytes], col_names: list[str], col_t: list[npt.NDArray[np.int64]],
                col_v: list[npt.NDArray[Any]], pair_col: npt.NDArray[np.int64], pair_n: npt.NDArray[np.int64],
                bounds: npt.NDArray[np.int64], pair_end: dict[int, bytes]) -> list[bytes]:
    """JSON objects of many frames whose samples are consecutive runs of shared columns.

    Frame f is `heads[f]`, then its pairs `bounds[f]:bounds[f + 1]`, comma-separated, then
    `tails[f]`. Pair p is `"<col_names[c]>":{"t":[..],"v":[..]}` for column c = `pair_col[p]`,
    its closing `]}` replaced by `pair_end[p]` if given; a column's pairs take its numbers
    in order, `pair_n[p]` each. The bytes equal orjson's for the same frames as dicts of
    numpy slices: orjson writes a number the same way whatever array holds it, so each
    column is serialized once and cut into runs, and frames are joined from the pieces.
    That avoids a dict, two arrays and orjson's per-array work for every pair.
    """
    n_cols, n_pairs = len(col_names), len(pair_col)
    order = np.argsort(pair_col, kind="stable")  # pairs column by column, each column in frame order
    col_end = np.cumsum(np.bincount(pair_col, minlength=n_cols)).tolist()
    runs_n = pair_n[order]
    t_runs: list[bytes] = []
    v_runs: list[bytes] = []
    lo = 0
    for j, hi in enumerate(col_end):
        t_runs += _json_runs(col_t[j], runs_n[lo:hi])
        v_runs += _json_runs(col_v[j], runs_n[lo:hi])
        lo = hi
    t_text = np.empty(n_pairs, dtype=object)
    t_text[order] = t_runs
    v_text = np.empty(n_pairs, dtype=object)
    v_text[order] = v_runs

    keys = [orjson.dumps(name) + b':{"t":[' for name in col_names]
    key_table = np.asarray([*keys, *(b"," + key for key in keys)], dtype=object)
    first = np.zeros(n_pairs, dtype=bool)
    first[bounds[:-1][bounds[1:] > bounds[:-1]]] = True
    opening: list[bytes] = key_table[np.where(first, pair_col, pair_col + n_cols)].tolist()
    closing = [b"]}"] * n_pairs
    for pair, text in pair_end.items():
        closing[pair] = text
    edges = bounds.tolist()
    for f, (lo, hi) in enumerate(itertools.pairwise(edges)):  # the frame's head and tail around its pairs
        if hi > lo:
            opening[lo] = heads[f] + opening[lo]
            closing[hi - 1] += tails[f]
    parts: list[bytes] = [b""] * (5 * n_pairs)
    parts[0::5] = opening
    parts[1::5] = t_text.tolist()
    parts[2::5] = [b'],"v":['] * n_pairs
    parts[3::5] = v_text.tolist()
    parts[4::5] = closing
    return [b"".join(parts[5 * lo:5 * hi]) if hi > lo else heads[f] + tails[f]
            for f, (lo, hi) in enumerate(itertools.pairwise(edges))]


def _json_runs(column: npt.NDArray[Any], lengths: npt.NDArray[np.int64]) -> list[bytes]:
    """orjson's text of `column` cut into consecutive runs of `lengths` numbers: `["1,2", "3"]`."""
    raw = np.frombuffer(orjson.dumps(column, option=orjson.OPT_SERIALIZE_NUMPY), dtype=np.uint8).copy()
    if lengths.size > 1:  # numbers hold no commas: mark the ones between runs, then split there
        commas = np.flatnonzero(raw == _COMMA)
        raw[commas[np.cumsum(lengths[:-1]) - 1]] = _CUT
    runs = raw[1:-1].tobytes().split(bytes([_CUT]))
    if len(runs) != lengths.size:
        raise RuntimeError(f"a column of {column.dtype} did not serialize as a flat JSON array")
    return runs


def to_record(sim: SimFrame, topics: dict[str, str], max_frame_bytes: int = 1_000_000) -> Record:
    """Encode a frame as the Kafka record it is sent as, breaking the payload if it is faulty."""
    encoded = encode_frame(sim.kind, sim.frame)  # type: ignore[arg-type]
    value = encoded.value
    if sim.fault in _MALFORMED:
        value = _malformed(sim, value, max_frame_bytes)
    return Record(topics[sim.kind], encoded.key, value, tuple(encoded.headers), sim.arrival_ms)


def _malformed(sim: SimFrame, value: bytes, max_frame_bytes: int) -> bytes:
    frame = dict(sim.frame)
    if sim.fault == "bad_json":
        cut = float(sim.detail.partition("@")[2] or 0.5)
        return value[:max(1, int(len(value) * cut))]
    if sim.fault == "missing_field":
        frame.pop(sim.detail or "samples", None)
    elif sim.fault == "wrong_type":
        what = sim.detail or "seq:str"
        samples = frame.get("samples") or {}
        first = next(iter(samples), None)
        if what == "seq:str":
            frame["seq"] = str(frame["seq"])
        elif what == "sent_at:str":
            frame["sent_at"] = datetime.fromtimestamp(frame["sent_at"] / 1000, UTC).isoformat()
        elif what == "samples:list":
            frame["samples"] = list(samples)
        elif first is not None:
            entry = dict(samples[first])
            key = what.partition(":")[0]
            entry[key] = [str(x) for x in entry[key]]
            frame["samples"] = {**samples, first: entry}
        else:
            frame["seq"] = str(frame["seq"])
    elif sim.fault == "oversized":
        pad = max_frame_bytes + 4096 - len(value)
        frame["diagnostics"] = {"dump": "0" * max(pad, 16)}
    return orjson.dumps(frame, option=orjson.OPT_SERIALIZE_NUMPY)


def simulate_to_recording(config: SimConfig, path: Path | str, *, catalog: Catalog | None = None,
                          progress: Callable[[FleetSimulator], None] | None = None) -> dict[str, Any]:
    """Run a simulation into a recording file and its truth file; returns the summary.

    `progress`, if given, is called after each window with the simulator.
    """
    sim = FleetSimulator(config, catalog)
    topics = {"sensor": config.sensor_topic, "gps": config.gps_topic}
    meta = {"created_by": "pipeline simulate", "topics": topics, "config": config.as_dict(),
            "fault_names": list(FAULT_NAMES)}
    path = Path(path)
    truth = TruthWriter(truth_path(path))
    try:
        with RecordingWriter(path, meta) as writer:
            for records, rows in sim.record_windows(topics):
                writer.write_many(record for record, _ in records)
                truth.write(rows)
                if progress is not None:
                    progress(sim)
    finally:
        summary = sim.summary()
        truth.close(summary)
    return {**summary, "recording": str(path), "truth": str(truth_path(path))}
