"""One generation window of the fleet simulator: its frames and their ground truth.

`WindowBuilder._window` advances the fleet model by one window, samples every catalog
signal on its per-vehicle grid, groups the samples into one sensor and one GPS frame per
vehicle and frame interval, injects frame, GPS and reading faults, writes the truth rows
of every fault, and, when asked (`_Encoding`), encodes the frames as records at once
(payloads from `_payloads`). `FleetSimulator` (`pipeline.tools.simulate`) inherits it and
orders the frames of successive windows by arrival.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from pipeline.core.catalog import Catalog
from pipeline.core.events import frame_headers
from pipeline.tools.recording import Record
from pipeline.tools.sim.city import RoadNetwork
from pipeline.tools.sim.config import SimConfig
from pipeline.tools.sim.faults import FAULT_CODE, FaultInjector, FrameTable
from pipeline.tools.sim.fleet import FleetModel
from pipeline.tools.sim.frames import (
    _BROKEN_FROM_DICT,
    _MALFORMED,
    KINDS,
    SimFrame,
    _json_frames,
    _malformed,
)
from pipeline.tools.sim.signals import SampleGrid, plan_signals, sample
from pipeline.tools.sim.truth import TruthRows, frame_rows, reading_rows
from pipeline.tools.sim.vehicles import CHARGING, DRIVING

_CODE_NAME = {code: name for name, code in FAULT_CODE.items()}
_SKEW = FAULT_CODE["clock_skew"]
_DUP = FAULT_CODE["duplicate"]


@dataclass(frozen=True, slots=True)
class _Encoding:
    """Where and how `FleetSimulator._window` encodes its frames as records."""

    topics: dict[str, str]
    max_frame_bytes: int


def _slot_sums(sent: npt.NDArray[np.bool_], slot_of_col: npt.NDArray[np.intp], n_slots: int) -> npt.NDArray[np.int64]:
    """Sent readings per (row, slot)."""
    out = np.zeros((sent.shape[0], n_slots), dtype=np.int64)
    if sent.shape[1] == 0:
        return out
    slots, starts = np.unique(slot_of_col, return_index=True)
    out[:, slots] = np.add.reduceat(sent.astype(np.int64), starts, axis=1)
    return out


class WindowBuilder:
    """The frames of one window, for `FleetSimulator` (whose `__init__` sets what it uses)."""

    config: SimConfig
    catalog: Catalog
    network: RoadNetwork
    model: FleetModel
    injector: FaultInjector
    vins: list[str]
    phase_ms: npt.NDArray[np.int64]
    seq_next: npt.NDArray[np.int64]
    _vin_arr: npt.NDArray[Any]
    _vin_keys: list[bytes]
    _vin_json: list[str]
    _frame_rng: np.random.Generator
    _signal_rng: np.random.Generator
    _unknown_rng: np.random.Generator
    _kind_of: npt.NDArray[np.int8]
    _integral: list[bool]
    _lat: int
    _lon: int

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
