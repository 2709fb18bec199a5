"""The cleaning stage: every reading of a batch ends kept, repaired or dropped with one reason.

`Cleaner` runs the checks, each a module of this package with its reason codes and its
section of `rules/cleaning.yaml`, in this order (the first check a reading fails gives its
reason, `outcomes.REASONS`):

- per reading, in input order: `signals` (unknown signal, unit, non-finite value),
  `clock` (vehicle clock skew repaired or dropped), `timestamps` (future, too old),
  `duplicates` (frames sent again), `clock` (a clock that went back);
- then one stable sort of all rows by (vehicle, signal, t) (`rows`), and group-wise on the
  sorted rows, with no per-group loops: `duplicates` (repeated readings), `ranges`,
  `spikes` (Hampel), `gps` (null island, bounds, accuracy, jumps and teleports by dead
  reckoning), `rates` (isolated excursions), `stuck` (held values, against a signal that
  must agree); then late arrivals are marked.

History across batches (last readings, Hampel tails, stuck runs, GPS track, frame
memory, clock) lives in `VehicleState`, per vehicle, bounded and movable by VIN.

Outcome codes: `kept`, `repaired` (more than one repair), `repaired.unit`,
`repaired.spike`, `repaired.clock_skew`, then one `dropped.<reason>` per check. Unit
normalisation counts as a repair, so wrong-unit faults are visible in the counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import numpy as np

from pipeline.core.batch import BoolArray, CodeArray, IntArray, Readings
from pipeline.core.clean.clock import ClockCheck
from pipeline.core.clean.config import CleaningConfig, SpikeRule, StuckRule
from pipeline.core.clean.duplicates import Resends, duplicates
from pipeline.core.clean.gps import GpsCheck
from pipeline.core.clean.groups import ranges, starts_of, suffix_min_in_group
from pipeline.core.clean.outcomes import (
    FIRST_DROPPED,
    KEPT,
    REASONS,
    REPAIRED,
    REPAIRED_CLOCK,
    REPAIRED_SPIKE,
    REPAIRED_UNIT,
    STUCK,
    CleanResult,
)
from pipeline.core.clean.ranges import RangeCheck
from pipeline.core.clean.rates import RateCheck
from pipeline.core.clean.rows import SortedRows, StageClock, sort_rows
from pipeline.core.clean.signals import check_signals
from pipeline.core.clean.spikes import SpikeCheck
from pipeline.core.clean.state import NO_T, VehicleState
from pipeline.core.clean.stuck import StuckCheck, StuckParams
from pipeline.core.clean.timestamps import check_times


class Cleaner:
    """Cleans batches of readings against the catalog and `rules/cleaning.yaml`.

    Stateful across batches (per vehicle, bounded); see `export_state`/`import_state`/
    `forget` for moving that history with partitions.
    """

    def __init__(self, catalog: Any, config: CleaningConfig | None = None) -> None:
        self.catalog = catalog
        self.config = config if config is not None else CleaningConfig()
        cfg = self.config
        names = list(catalog.names)
        self.n_signals = len(names)
        self.signal_bits = max(self.n_signals - 1, 1).bit_length()

        def signal_index(name: str, *path: str) -> int:
            if name not in catalog.index:
                raise cfg.error(f"unknown signal {name!r} (not in the catalog)", *path)
            return int(catalog.index[name])

        self.spikes: list[tuple[int, SpikeRule]] = [
            (signal_index(name, "spikes", name), rule) for name, rule in cfg.spikes.items()
        ]
        checks = cfg.stuck_checks()
        self.stuck: list[tuple[int, StuckRule]] = [(signal_index(c.signal, *c.path), c.rule) for c in checks]
        tail = max((rule.window - 1 for _, rule in self.spikes), default=1)
        self.state = VehicleState(
            names,
            [names[s] for s, _ in self.spikes],
            tail,
            [c.key for c in checks],
            cfg.duplicates.frame_memory,
            cfg.state.max_vehicles,
            cfg.gps.velocity_window // 2 + 1,
        )
        state = self.state
        # the checks, in the order they run
        self.clock = ClockCheck(cfg, state)
        self.resends = Resends(state)
        self.range_check = RangeCheck(catalog, cfg, signal_index)
        self.spike_check = SpikeCheck(self.spikes, self.n_signals, state)
        self.gps_check = GpsCheck(cfg, signal_index, state)
        self.rate_check = RateCheck(catalog, cfg, signal_index, state)
        self.stuck_check = StuckCheck(StuckParams.of(
            self.stuck, [signal_index(c.rule.against, *c.path, "against") if c.rule.against else -1
                         for c in checks]), [c.layer for c in checks], self.n_signals, self.signal_bits, STUCK)
        self.reasons = list(REASONS)
        self.on = frozenset(cfg.checks)
        group: dict[str, Callable[[SortedRows], None]] = {
            "duplicates": duplicates,
            "range": self.range_check.run if self.range_check.needed else _skip,
            "spikes": self.spike_check.run,
            "gps": self.gps_check.run,
            "rate_of_change": self.rate_check.run,
            "stuck": partial(self.stuck_check.run, state=state) if self.stuck else _skip,
        }
        self.group_checks = [(name, group[name]) for name in cfg.checks if name in group]

    # --- partitions ------------------------------------------------------------------------

    def export_state(self, vins: Iterable[str]) -> bytes:
        """History of these vehicles, to restore on the worker that takes their partition."""
        return self.state.export(vins)

    def import_state(self, blob: bytes) -> list[str]:
        """Restore history exported by `export_state`; returns the VINs restored."""
        return self.state.load(blob)

    def forget(self, vins: Iterable[str]) -> int:
        """Drop the history of these vehicles (their partition was revoked)."""
        return self.state.forget(vins)

    # --- the stage -----------------------------------------------------------------------------

    def clean(self, readings: Readings, *, now_ms: int | None = None,
              profile: bool = False) -> CleanResult:
        """Clean one batch. `now_ms` is the ingest time of frames without a record timestamp
        (default: the latest frame received_at); stamped frames are judged by their own."""
        clock = StageClock(profile)
        n = len(readings)
        frames = readings.frames
        if now_ms is None and len(frames):
            latest = int(frames.received_at.max())
            now_ms = latest if latest > 0 else None

        # --- per-row checks, input order -------------------------------------------------
        on = self.on
        code = np.zeros(n, dtype=np.int8)
        csig, value, converted = check_signals(self.catalog, readings, code)
        clock.lap("signal_unit_value")
        vehicle_slot = self.state.slots(readings.vins)
        t, sent_at, clock_fixed = readings.t, frames.sent_at, None
        if "clock_skew" in on:
            t, sent_at, clock_fixed = self.clock.skew(readings, vehicle_slot, code)
        clock.lap("clock_skew")
        if "timestamps" in on:
            check_times(self.config.time, readings, t, sent_at, now_ms, code)
        clock.lap("time")
        none = np.empty(0, dtype=np.int64)
        new_frames, resent = [none, none], np.zeros(len(frames), dtype=bool)
        if "resends" in on:
            *new_frames, resent = self.resends.run(readings, vehicle_slot, code)
        clock.lap("resends")
        if "clock_back" in on:
            self.clock.behind(readings, sent_at, vehicle_slot, code, resent)
        clock.lap("clock")

        # --- sort once, then group-wise checks, in the config's order ----------------------
        rows = sort_rows(readings, t, csig, value, code, vehicle_slot, self.signal_bits)
        clock.lap("sort")
        for name, check in self.group_checks:
            check(rows)
            clock.lap(name)

        # --- outcome, output and history ---------------------------------------------------
        result = self._finish(readings, rows, code, converted, clock_fixed, (new_frames[0], new_frames[1]),
                              clock)
        clock.lap("output_state")
        result.timings = clock.timings
        return result

    # --- result ----------------------------------------------------------------------------

    def _finish(self, readings: Readings, rows: SortedRows, code: CodeArray,
                converted: BoolArray | None, clock_fixed: BoolArray | None,
                new_frames: tuple[IntArray, IntArray], clock: StageClock) -> CleanResult:
        state = self.state
        outcome = code  # per input row; drops decided after the sort are scattered in
        keep = rows.code == 0
        dropped = np.flatnonzero(~keep)  # (on a bool array: several times faster than on the codes)
        outcome[rows.order[dropped]] = rows.code[dropped]
        src = rows.order[keep]
        spike_fixed = rows.repaired[keep]
        unit_fixed = converted[src] if converted is not None else np.zeros(src.size, dtype=bool)
        any_fixed = spike_fixed | unit_fixed
        if clock_fixed is not None:  # frames with repaired times (rare)
            time_fixed = clock_fixed[src]
            any_fixed |= time_fixed
        else:
            time_fixed = np.zeros(src.size, dtype=bool)
        fixed = np.flatnonzero(any_fixed)
        if fixed.size:
            u, s, c = unit_fixed[fixed], spike_fixed[fixed], time_fixed[fixed]
            single = np.where(s, REPAIRED_SPIKE, np.where(u, REPAIRED_UNIT, REPAIRED_CLOCK))
            several = u.astype(np.int8) + s + c > 1
            outcome[src[fixed]] = np.where(several, REPAIRED, single)

        # Late: an earlier arrival of the same series has a later time, or history does.
        gkey, t, value, vehicle = rows.gkey[keep], rows.t[keep], rows.value[keep], rows.vehicle[keep]
        m = src.size
        new = starts_of(gkey)
        first = np.flatnonzero(new)
        count = np.diff(np.append(first, m))
        late = np.zeros(m, dtype=bool)
        if m > 1:
            behind = np.flatnonzero((src[1:] < src[:-1]) & ~new[1:]) + 1
            if behind.size:  # some series arrived out of order within the batch
                gid = np.searchsorted(first, behind, side="right") - 1  # non-decreasing
                groups = gid[starts_of(gid)]
                at = ranges(first[groups], count[groups])
                late[at] = suffix_min_in_group(src[at], np.repeat(groups, count[groups])) < src[at]
        slot, sig = rows.vslot[vehicle[first]], gkey[first] % (1 << self.signal_bits)
        last_t = state.last_t[slot, sig]
        behind_history = t[first] < last_t
        if behind_history.any():
            late |= t < np.repeat(np.where(behind_history, last_t, NO_T), count)
        clock.lap("late")

        # History: newest reading per series, frames seen, batch clock, eviction.
        if m:
            last = np.append(first[1:], m) - 1
            newer = t[last] > last_t
            ls, lg = slot[newer], sig[newer]
            state.last_t[ls, lg] = t[last][newer]
            state.last_v[ls, lg] = value[last[newer]]
        self.resends.remember(*new_frames)
        state.touch(rows.vslot)
        state.evict(rows.vslot)

        clean = Readings(
            vehicle=vehicle,
            signal=(gkey & ((1 << self.signal_bits) - 1)).astype(np.int32),
            unit=np.zeros(m, dtype=np.int16),
            t=t,
            value=value,
            frame=readings.frame[src],
            vins=readings.vins,
            signal_names=list(self.catalog.names),
            unit_names=[""],
            frames=readings.frames,
            blocks=first,
        )
        counts_arr = np.bincount(outcome[outcome != 0], minlength=len(REASONS))
        counts_arr[KEPT] = outcome.size - int(counts_arr[1:].sum())
        counts = {"in": int(outcome.size)}
        counts["kept"] = int(counts_arr[KEPT])
        counts["repaired"] = int(counts_arr[REPAIRED:FIRST_DROPPED].sum())
        counts["dropped"] = int(counts_arr[FIRST_DROPPED:].sum())
        counts["late"] = int(late.sum())
        for i in range(REPAIRED, len(REASONS)):
            if counts_arr[i]:
                counts[REASONS[i]] = int(counts_arr[i])
        return CleanResult(readings=clean, repaired=any_fixed, outcome=outcome,
                           reasons=list(REASONS), counts=counts, late=late)


def _skip(rows: SortedRows) -> None:
    """A check with nothing to do under this config."""
