"""Fault injection with exact ground truth: what real fleets send besides clean data.

Rates are fractions of the unit each fault hits (see `FAULTS`): readings, GPS fixes or
frames. Episodic faults (dropouts, stuck sensors, clock skew, multipath) start with a
probability chosen so the expected share of affected units equals the rate. Every
reading carries at most one reading-level fault and every frame at most one frame-level
fault, drawn from what is still clean, so each truth row names one cause.

The injector is stateful across windows (an episode started near the end of a window
continues into the next); all randomness comes from its own generator, so the clean
traces do not change when fault rates do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipeline.core.catalog import Catalog, Signal
from pipeline.core.errors import InputError
from pipeline.tools.sim.signals import LAT, LON

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
BoolA = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class FaultKind:
    """One fault type: where it lives, what its rate counts, its default rate."""

    name: str
    level: str  # reading | frame
    unit: str  # readings | fixes | frames
    default: float
    description: str


FAULTS: tuple[FaultKind, ...] = (
    FaultKind("spike", "reading", "readings", 1e-4, "one reading jumps by 25-60% of the signal's range, staying in range"),
    FaultKind("stuck", "reading", "readings", 2e-4, "the sensor repeats one value for its next 5-50 samples (rows: every reading it repeats, also where it equals the truth)"),
    FaultKind("dropout", "reading", "readings", 2e-4, "3-30 consecutive samples of a signal are missing (rows: the readings that were not sent)"),
    FaultKind("nan", "reading", "readings", 5e-5, "the value is NaN (null in JSON)"),
    FaultKind("out_of_range", "reading", "readings", 5e-5, "the value lies 5-100% of the range beyond min or max"),
    FaultKind("wrong_unit", "reading", "readings", 1e-4, "a frame's block of a signal is sent in another accepted unit, labelled with it (u)"),
    FaultKind("unknown_unit", "reading", "readings", 2e-5, "a frame's block of a signal is labelled with a unit the catalog does not accept for it"),
    FaultKind("gps_jump", "reading", "fixes", 2e-4, "multipath: 1-4 consecutive fixes displaced 60-400 m (rows for latitude and longitude)"),
    FaultKind("teleport", "reading", "fixes", 2e-5, "one fix 30-600 km away"),
    FaultKind("null_island", "reading", "fixes", 2e-5, "one fix at latitude 0, longitude 0"),
    FaultKind("unknown_signal", "reading", "frames", 1e-4, "a frame carries 1-5 readings of a signal that is not in the catalog"),
    FaultKind("clock_skew", "frame", "frames", 1e-4, "the vehicle clock is off by 3 s to 3 h for 10-60 s: t and sent_at shifted (readings also listed)"),
    FaultKind("duplicate", "frame", "frames", 1e-3, "the frame is sent again 0.5-30 s later (the resend; its readings also listed)"),
    FaultKind("out_of_order", "frame", "frames", 5e-4, "the frame arrives just after the vehicle's next frame of the same kind"),
    FaultKind("late", "frame", "frames", 2e-4, "the frame arrives 1-15 min after it was sent"),
    FaultKind("bad_json", "frame", "frames", 5e-5, "the payload is truncated JSON"),
    FaultKind("missing_field", "frame", "frames", 5e-5, "a required field (vin, seq, sent_at, samples) is absent"),
    FaultKind("wrong_type", "frame", "frames", 5e-5, "a field has the wrong JSON type (detail names it)"),
    FaultKind("oversized", "frame", "frames", 1e-5, "the payload is larger than the worker's max_frame_bytes"),
)
FAULT_NAMES: tuple[str, ...] = tuple(f.name for f in FAULTS)
FAULT_CODE: dict[str, int] = {name: i + 1 for i, name in enumerate(FAULT_NAMES)}  # 0 = clean
BY_NAME: dict[str, FaultKind] = {f.name: f for f in FAULTS}
MALFORMED = ("bad_json", "missing_field", "wrong_type", "oversized")
FRAME_BUCKETS = (*MALFORMED, "duplicate", "out_of_order", "late")

UNKNOWN_UNITS = ("furlong/fortnight", "cubit", "smoot", "arb", "counts")
UNKNOWN_SIGNALS: dict[str, tuple[str, ...]] = {  # per frame kind, so sensor and GPS never clash
    "sensor": ("Vehicle.Cabin.Seat.Row1.DriverSide.Heating", "Vehicle.Body.Trunk.Rear.IsOpen",
               "Vehicle.Telematics.ModemTemperature", "Vehicle.Private.Fleet.DriverScore"),
    "gps": ("Vehicle.CurrentLocation.SatelliteCount", "Vehicle.CurrentLocation.FixQuality"),
}

DROPOUT_READINGS = (3, 30)  # consecutive samples of one signal
STUCK_READINGS = (5, 50)
SKEW_EPISODE_S = (10.0, 60.0)
JUMP_FIXES = (1, 4)


def parse_fault_rates(spec: str | None) -> dict[str, float]:
    """Fault rates from `name=rate,...` on top of the defaults; "none" turns all off.

    `spec` may start with `none,` to set only the listed faults (`none,spike=0.01`).
    """
    rates = {f.name: f.default for f in FAULTS}
    if not spec or spec.strip() in ("", "default", "defaults"):
        return rates
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part in ("none", "off", "0"):
            rates = dict.fromkeys(rates, 0.0)
            continue
        name, sep, value = part.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in rates:
            raise InputError(f"unknown fault {name!r} in {spec!r}; known: {', '.join(FAULT_NAMES)}")
        try:
            rate = float(value)
        except ValueError:
            rate = math.nan
        if not 0.0 <= rate <= 0.5:
            raise InputError(f"fault rate {name}={value} must be a number between 0 and 0.5")
        rates[name] = rate
    bucket = sum(rates[n] for n in FRAME_BUCKETS)
    if bucket >= 1.0:
        raise InputError("frame fault rates add up to 1 or more")
    return rates


def _mean_faulty(span: tuple[int, int], minus: int = 0) -> float:
    """Expected faulty readings of an episode of `span` samples (uniform, `minus` unaffected)."""
    return max((span[0] + span[1]) / 2.0 - minus, 1.0)


@dataclass(slots=True)
class Tally:
    """How often each fault was injected and how many units it could have hit."""

    injected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULT_NAMES, 0))
    opportunities: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULT_NAMES, 0))

    def add(self, name: str, injected: int, opportunities: int) -> None:
        self.injected[name] += int(injected)
        self.opportunities[name] += int(opportunities)


@dataclass(slots=True)
class FrameTable:
    """The frames of one window, in (vehicle, slot, kind) order."""

    vehicle: npt.NDArray[np.intp]  # global vehicle index
    slot: npt.NDArray[np.intp]
    kind: npt.NDArray[np.int8]  # 0 sensor, 1 gps
    seq: I64
    sent_true: I64  # upload time (true clock)
    has_next: BoolA  # the vehicle sends a frame of the same kind in the next slot of this window
    next_index: npt.NDArray[np.intp]

    def __len__(self) -> int:
        return int(self.vehicle.shape[0])


@dataclass(slots=True)
class FrameFaults:
    """Frame-level decisions for one window."""

    code: npt.NDArray[np.int8]  # FAULT_CODE or 0
    skew_ms: I64  # clock offset applied to t and sent_at (0 if none)
    arrival: I64  # record timestamp of the (first) copy
    dup_arrival: I64  # record timestamp of the resend (duplicates only)
    detail: list[str]
    unknown_signal: BoolA  # frame gets an unknown-signal block

    @property
    def malformed(self) -> BoolA:
        codes = [FAULT_CODE[n] for n in MALFORMED]
        return np.isin(self.code, codes)


@dataclass(slots=True)
class ReadingFaults:
    """Reading-level result for one signal in one window."""

    values: F64
    sent: BoolA
    code: npt.NDArray[np.int8]  # per grid cell, 0 = clean
    true_values: F64
    units: dict[int, str]  # frame index -> unit label for the block


class FaultInjector:
    """Decides and applies faults window by window, and counts them."""

    def __init__(self, rates: dict[str, float], catalog: Catalog, n_vehicles: int, frame_ms: int,
                 seed: int) -> None:
        self.rates = rates
        self.catalog = catalog
        self.frame_ms = frame_ms
        self.rng = np.random.default_rng([seed, 0xFA17])
        n_sig = len(catalog)
        self.drop_until = np.zeros((n_vehicles, n_sig), dtype=np.int64)
        self.stuck_until = np.zeros((n_vehicles, n_sig), dtype=np.int64)
        self.stuck_value = np.zeros((n_vehicles, n_sig))
        self.skew_until = np.zeros(n_vehicles, dtype=np.int64)
        self.skew_ms = np.zeros(n_vehicles, dtype=np.int64)
        self.tally = Tally()
        self._alt_units = {i: self._wrong_units(s) for i, s in enumerate(catalog.signals)}
        all_units = sorted({u for s in catalog.signals for u in s.units} | {s.unit for s in catalog.signals} - {""})
        self._unknown_units = {
            i: [u for u in (*all_units, *UNKNOWN_UNITS) if s.conversion(u) is None]
            for i, s in enumerate(catalog.signals)
        }
        self.unknown_signal_names = {kind: [n for n in names if n not in catalog.index]
                                     for kind, names in UNKNOWN_SIGNALS.items()}

    @staticmethod
    def _wrong_units(sig: Signal) -> list[tuple[str, float, float]]:
        """Units that change the numbers (mph, psi, degF...), with their conversion."""
        return [(u, c.scale, c.offset) for u, c in sig.units.items() if (c.scale, c.offset) != (1.0, 0.0)]

    # --- frames ----------------------------------------------------------------------------

    def frame_faults(self, frames: FrameTable) -> FrameFaults:
        """Clock skew episodes, malformed payloads, resends, reordering and late delivery."""
        rng, rates = self.rng, self.rates
        n = len(frames)
        code = np.zeros(n, dtype=np.int8)
        skew = np.zeros(n, dtype=np.int64)
        arrival = frames.sent_true.copy()
        dup_arrival = np.zeros(n, dtype=np.int64)
        detail = [""] * n
        if n == 0:
            return FrameFaults(code, skew, arrival, dup_arrival, detail, np.zeros(0, dtype=bool))

        # clock skew: episodes carried across windows
        veh = frames.vehicle
        carry = frames.sent_true < self.skew_until[veh]
        skew[carry] = self.skew_ms[veh[carry]]
        rate = rates["clock_skew"]
        if rate > 0:
            mean_s = sum(SKEW_EPISODE_S) / 2.0
            mean_frames = 2.0 * mean_s * 1000.0 / self.frame_ms  # a sensor and a GPS frame per slot
            p_on = min(rate / mean_frames, 1.0)
            onsets = np.flatnonzero(~carry & (rng.random(n) < p_on))
            starts = np.searchsorted(veh, veh, side="left")
            ends = np.searchsorted(veh, veh, side="right")
            for i in onsets.tolist():
                v = int(veh[i])
                t0 = int(frames.sent_true[i])
                if t0 < self.skew_until[v]:
                    continue
                until = t0 + int(rng.uniform(*SKEW_EPISODE_S) * 1000)
                magnitude = int(10 ** rng.uniform(3.5, 7.0))
                if magnitude % 100 == 0:  # off the 100 ms sample grids: shifted t never hit real ones
                    magnitude += 37
                magnitude *= 1 if rng.random() < 0.5 else -1
                self.skew_until[v], self.skew_ms[v] = until, magnitude
                lo, hi = int(starts[i]), int(ends[i])
                span = np.arange(lo, hi)
                span = span[(frames.sent_true[lo:hi] >= t0) & (frames.sent_true[lo:hi] < until)]
                skew[span] = magnitude
        skewed = skew != 0
        code[skewed] = FAULT_CODE["clock_skew"]
        self.tally.add("clock_skew", int(skewed.sum()), n)

        # one exclusive draw per remaining frame
        u = rng.random(n)
        clean = ~skewed
        lo_edge = 0.0
        for name in FRAME_BUCKETS:
            hi_edge = lo_edge + rates[name]
            hit = clean & (u >= lo_edge) & (u < hi_edge)
            lo_edge = hi_edge
            if name == "out_of_order":
                self.tally.add(name, 0, int((clean & frames.has_next).sum()))
                hit &= frames.has_next
                self.tally.injected[name] += int(hit.sum())
            else:
                self.tally.add(name, int(hit.sum()), int(clean.sum()))
            code[hit] = FAULT_CODE[name]

        late = code == FAULT_CODE["late"]
        arrival[late] += (rng.uniform(60.0, 900.0, int(late.sum())) * 1000).astype(np.int64)
        # out of order: arrive just after the successor's own (final) arrival; walking
        # backwards makes chains of reordered frames consistent
        for i in np.flatnonzero(code == FAULT_CODE["out_of_order"])[::-1].tolist():
            arrival[i] = arrival[frames.next_index[i]] + int(rng.integers(1, 400))
        dup = code == FAULT_CODE["duplicate"]
        dup_arrival[dup] = arrival[dup] + rng.integers(500, 30_000, int(dup.sum()))
        for i in np.flatnonzero(code == FAULT_CODE["missing_field"]).tolist():
            detail[i] = str(rng.choice(["vin", "seq", "sent_at", "samples"]))
        for i in np.flatnonzero(code == FAULT_CODE["wrong_type"]).tolist():
            detail[i] = str(rng.choice(["seq:str", "sent_at:str", "samples:list", "t:str", "v:str"]))
        for i in np.flatnonzero(code == FAULT_CODE["bad_json"]).tolist():
            detail[i] = f"truncated@{rng.uniform(0.2, 0.9):.3f}"

        unknown = np.zeros(n, dtype=bool)
        if rates["unknown_signal"] > 0 and all(self.unknown_signal_names.values()):
            free = code == 0
            unknown = free & (rng.random(n) < rates["unknown_signal"])
            self.tally.add("unknown_signal", int(unknown.sum()), int(free.sum()))
        return FrameFaults(code, skew, arrival, dup_arrival, detail, unknown)

    # --- readings --------------------------------------------------------------------------

    def gps_faults(self, lat: F64, lon: F64, eligible: BoolA) -> tuple[F64, F64, npt.NDArray[np.int8]]:
        """Multipath jumps, teleports and null island on paired latitude/longitude grids."""
        rng, rates = self.rng, self.rates
        lat, lon = lat.copy(), lon.copy()
        code = np.zeros(lat.shape, dtype=np.int8)
        cells = np.flatnonzero(eligible)
        n_fix = cells.size
        for name in ("gps_jump", "teleport", "null_island"):
            self.tally.opportunities[name] += n_fix
        if n_fix == 0:
            return lat, lon, code
        mean_jump = (JUMP_FIXES[0] + JUMP_FIXES[1]) / 2.0
        p = np.array([rates["gps_jump"] / mean_jump, rates["teleport"], rates["null_island"]])
        u = rng.random(n_fix)
        edges = np.cumsum(p)
        pick = np.searchsorted(edges, u, side="right")  # 0 jump, 1 teleport, 2 null, 3 clean
        k_cols = lat.shape[1]
        flat_lat, flat_lon, flat_code = lat.reshape(-1), lon.reshape(-1), code.reshape(-1)
        flat_ok = eligible.reshape(-1)
        cos_lat = math.cos(math.radians(float(np.nanmean(lat[eligible]))))
        for cell, kind in zip(cells[pick < 3].tolist(), pick[pick < 3].tolist(), strict=True):
            if flat_code[cell]:
                continue
            # off the cardinal directions, so latitude and longitude both move
            bearing = math.radians(rng.uniform(10.0, 80.0) + 90.0 * int(rng.integers(0, 4)))
            if kind == 2:
                flat_lat[cell], flat_lon[cell] = 0.0, 0.0
                flat_code[cell] = FAULT_CODE["null_island"]
                continue
            dist = rng.uniform(30_000.0, 600_000.0) if kind == 1 else rng.uniform(60.0, 400.0)
            dlat = dist * math.cos(bearing) / 111_320.0
            dlon = dist * math.sin(bearing) / (111_320.0 * cos_lat)
            n_fixes = 1 if kind == 1 else int(rng.integers(JUMP_FIXES[0], JUMP_FIXES[1] + 1))
            row_end = (cell // k_cols + 1) * k_cols
            name = "teleport" if kind == 1 else "gps_jump"
            c = cell
            while n_fixes > 0 and c < row_end:
                if flat_ok[c] and not flat_code[c]:
                    jitter = rng.normal(0.0, 8.0, 2) / 111_320.0
                    flat_lat[c] = round(flat_lat[c] + dlat + jitter[0], 6)
                    flat_lon[c] = round(flat_lon[c] + dlon + jitter[1] / cos_lat, 6)
                    flat_code[c] = FAULT_CODE[name]
                    n_fixes -= 1
                c += 1
        for name in ("gps_jump", "teleport", "null_island"):
            self.tally.injected[name] += int((code == FAULT_CODE[name]).sum())
        return lat, lon, code

    def _picks(self, n: int, p: float) -> npt.NDArray[np.intp]:
        """Positions (sorted, distinct) among n candidates, each hit with probability p."""
        if n == 0 or p <= 0.0:
            return np.zeros(0, dtype=np.intp)
        k = int(self.rng.binomial(n, min(p, 1.0)))
        if k == 0:
            return np.zeros(0, dtype=np.intp)
        return np.sort(self.rng.choice(n, size=k, replace=False)).astype(np.intp)

    def _episodes(self, sig_index: int, rows: npt.NDArray[np.intp], cells: npt.NDArray[np.intp],
                  live: BoolA, t_true: I64, p_on: float, span: tuple[int, int], interval_ms: int,
                  until_arr: I64, value_arr: F64 | None, values: F64,
                  mask: BoolA, frozen_to: F64 | None, include_onset: bool) -> None:
        """Start episodes at random cells; mark their span in `mask` (and freeze values)."""
        k_cols = values.shape[1]
        for cell in cells[self._picks(cells.size, p_on)].tolist():
            r, k = divmod(cell, k_cols)
            v = int(rows[r])
            t0 = int(t_true[r, k])
            if t0 < until_arr[v, sig_index] or not live[r, k]:
                continue
            end = t0 + int(self.rng.integers(span[0], span[1] + 1)) * interval_ms
            until_arr[v, sig_index] = end
            lo = t_true[r] >= t0 if include_onset else t_true[r] > t0
            covered = live[r] & lo & (t_true[r] < end)
            mask[r] |= covered
            if value_arr is not None and frozen_to is not None:
                value_arr[v, sig_index] = values[r, k]
                frozen_to[r, covered] = values[r, k]

    def reading_faults(self, sig_index: int, rows: npt.NDArray[np.intp], values: F64, sent: BoolA,
                       t_true: I64, frame_of: npt.NDArray[np.intp], frame_ok: BoolA,
                       code: npt.NDArray[np.int8] | None = None,
                       true_values: F64 | None = None) -> ReadingFaults:
        """Dropouts, stuck values, spikes, out-of-range, NaN and unit faults for one signal.

        `rows` are the global vehicle indexes of the grid rows, `frame_of` the window frame
        index of each cell (valid where sent), `frame_ok` which frames are well-formed.
        `code`/`true_values` carry faults already applied (GPS faults on positions).
        """
        rng, rates = self.rng, self.rates
        sig = self.catalog.signals[sig_index]
        true_values = values if true_values is None else true_values
        values = values.copy()
        sent = sent.copy()
        code = np.zeros(values.shape, dtype=np.int8) if code is None else code
        eligible = sent if frame_ok.all() else sent & frame_ok[np.where(sent, frame_of, 0)]
        cells = np.flatnonzero(eligible)
        n_eligible = cells.size
        is_gps_pos = sig.name in (LAT, LON)
        floating = not sig.is_integral and not is_gps_pos
        pre_coded = bool(code.any())
        t_min = int(t_true.min()) if t_true.size else 0
        flat_code = code.reshape(-1)

        # dropouts (episodes, continued from earlier windows)
        self.tally.opportunities["dropout"] += n_eligible
        until = self.drop_until[rows, sig_index]
        carried = bool(until.max(initial=0) > t_min)
        if rates["dropout"] > 0 or carried:
            live = eligible & (code == 0) if pre_coded else eligible
            dropped = live & (t_true < until[:, None]) if carried else np.zeros(values.shape, dtype=bool)
            p_on = rates["dropout"] / _mean_faulty(DROPOUT_READINGS)
            self._episodes(sig_index, rows, cells, live & ~dropped, t_true, p_on, DROPOUT_READINGS,
                           sig.interval_ms,
                           self.drop_until, None, values, dropped, None, include_onset=True)
            if dropped.any():
                code[dropped] = FAULT_CODE["dropout"]
                sent &= ~dropped
                self.tally.injected["dropout"] += int(dropped.sum())
                pre_coded = True

        # stuck sensor (episodes): the value freezes at the onset reading; every reading the
        # frozen sensor sends is a stuck row, those that happen to equal the truth as well
        if floating:
            self.tally.opportunities["stuck"] += n_eligible
            until = self.stuck_until[rows, sig_index]
            carried = bool(until.max(initial=0) > t_min)
            if rates["stuck"] > 0 or carried:
                live = eligible & (code == 0) if pre_coded else eligible
                frozen = live & (t_true < until[:, None]) if carried else np.zeros(values.shape, dtype=bool)
                stuck_val = np.broadcast_to(self.stuck_value[rows, sig_index][:, None], values.shape).copy()
                p_on = rates["stuck"] / _mean_faulty(STUCK_READINGS, minus=1)
                self._episodes(sig_index, rows, cells, live & ~frozen, t_true, p_on, STUCK_READINGS,
                               sig.interval_ms,
                               self.stuck_until, self.stuck_value, values, frozen, stuck_val,
                               include_onset=False)
                if frozen.any():
                    values[frozen] = stuck_val[frozen]
                    code[frozen] = FAULT_CODE["stuck"]
                    self.tally.injected["stuck"] += int(frozen.sum())
                    pre_coded = True

        # single-reading faults: one exclusive draw per clean reading
        names = ["nan"] if is_gps_pos else (["spike", "out_of_range", "nan"] if sig.datatype != "boolean"
                                            else ["out_of_range", "nan"])
        clean = cells[flat_code[cells] == 0] if pre_coded else cells
        for name in names:
            self.tally.opportunities[name] += clean.size
        probs = np.array([rates[n] for n in names])
        hits = clean[self._picks(clean.size, float(probs.sum()))]
        if hits.size:
            which = rng.choice(len(names), size=hits.size, p=probs / probs.sum())
            flat_values = values.reshape(-1)
            span_range = sig.max - sig.min
            for j, name in enumerate(names):
                hit = hits[which == j]
                k = hit.size
                if not k:
                    continue
                old = flat_values[hit]
                if name == "spike":
                    mag = rng.uniform(0.25, 0.6, k) * span_range
                    up = (sig.max - old) >= (old - sig.min)
                    new = np.clip(np.where(up, old + mag, old - mag), sig.min, sig.max)
                    if sig.is_integral:
                        new = np.round(new)
                elif name == "out_of_range":
                    beyond = rng.uniform(0.05, 1.0, k) * span_range
                    if sig.is_integral:
                        beyond = np.ceil(np.maximum(beyond, 1.0))
                    new = np.where(rng.random(k) < 0.5, sig.max + beyond, sig.min - beyond)
                else:
                    new = np.full(k, np.nan)
                flat_values[hit] = new
                flat_code[hit] = FAULT_CODE[name]
                self.tally.injected[name] += k
            pre_coded = True

        # unit faults on whole (frame, signal) blocks that are still clean
        units: dict[int, str] = {}
        alt = self._alt_units[sig_index]
        unknown = self._unknown_units[sig_index]
        p_wrong = rates["wrong_unit"] if alt else 0.0
        p_unknown = rates["unknown_unit"] if unknown else 0.0
        if (alt or unknown) and n_eligible:
            n_frames = int(frame_of.max()) + 1
            total = np.bincount(frame_of[sent], minlength=n_frames)
            if pre_coded or n_eligible != int(total.sum()):
                good = np.bincount(frame_of.reshape(-1)[cells[flat_code[cells] == 0]], minlength=n_frames)
            else:
                good = total
            blocks = np.flatnonzero((total > 0) & (total == good))
            reading_count = int(total[blocks].sum())
            if alt:
                self.tally.opportunities["wrong_unit"] += reading_count
            if unknown:
                self.tally.opportunities["unknown_unit"] += reading_count
            chosen = blocks[self._picks(blocks.size, p_wrong + p_unknown)]
            if chosen.size:
                wrong_kind = rng.random(chosen.size) < p_wrong / (p_wrong + p_unknown)
                for f, wrong in zip(chosen.tolist(), wrong_kind.tolist(), strict=True):
                    in_block = sent & (frame_of == f)
                    if wrong:
                        unit, scale, offset = alt[int(rng.integers(0, len(alt)))]
                        values[in_block] = np.round((values[in_block] - offset) / scale, 6)
                        code[in_block] = FAULT_CODE["wrong_unit"]
                        self.tally.injected["wrong_unit"] += int(in_block.sum())
                    else:
                        unit = unknown[int(rng.integers(0, len(unknown)))]
                        code[in_block] = FAULT_CODE["unknown_unit"]
                        self.tally.injected["unknown_unit"] += int(in_block.sum())
                    units[f] = unit
        return ReadingFaults(values, sent, code, true_values, units)
