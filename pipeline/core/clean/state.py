"""Per-vehicle cleaning history, kept in slot-indexed numpy arrays and moved by VIN.

Cleaning is stateful across batches: the last reading of every series (rate of change,
late arrivals), the tail of every Hampel window, stuck-value runs, the last trusted GPS
fix and the fingerprints of recent frames (resends). One slot per vehicle keeps that
vectorisable; `export`/`load` move a partition's vehicles between workers by VIN, and
the number of vehicles is bounded (least recently seen are forgotten first).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

NO_T = np.iinfo(np.int64).min  # "no timestamp yet"
FORMAT_VERSION = 1


class VehicleState:
    """History per vehicle slot. Arrays are `[slot, ...]`; slots are reused after `forget`.

    Columns: `last_t`/`last_v` per catalog signal (last reading that left the cleaner);
    `tail_v`/`tail_n`/`tail_t` per Hampel signal (right-aligned window tail);
    `stuck_v`/`stuck_start`/`stuck_n`/`stuck_t` per stuck signal (current run of equal
    values), with `stuck_ref0` (for a cross-checked rule, where the reference's measure
    started for the run: its value, or for an integral the start relative to the next
    batch's first reference reading; NaN: from that reading) and `stuck_hit` (the run was
    judged stuck); `stuck_past_v`/`stuck_past_start`/`stuck_past_end` the newest run judged
    stuck that has ended (so that a late frame of it is found stuck too); `gps_tail` the last trusted GPS runs [lat, lon, t_first] (right-aligned,
    `gps_tail_n` of them) and `gps_since` (start of a jump still open); `clock_seq`/
    `clock_sent` the newest trusted frame (vehicle clock checks); `clock_offset`/
    `clock_offset_seq` the estimate of a clock skew episode still open and its newest seq
    (NO_T: none); `frame_fp` ring of
    recent frame fingerprints with `frame_n` frames written so far; `seen` batch counter.
    """

    last_t: npt.NDArray[np.int64]
    last_v: npt.NDArray[np.float64]
    tail_v: npt.NDArray[np.float64]
    tail_n: npt.NDArray[np.int32]
    tail_t: npt.NDArray[np.int64]
    stuck_v: npt.NDArray[np.float64]
    stuck_start: npt.NDArray[np.int64]
    stuck_n: npt.NDArray[np.int64]
    stuck_t: npt.NDArray[np.int64]
    stuck_ref0: npt.NDArray[np.float64]
    stuck_hit: npt.NDArray[np.bool_]
    stuck_past_v: npt.NDArray[np.float64]
    stuck_past_start: npt.NDArray[np.int64]
    stuck_past_end: npt.NDArray[np.int64]
    gps_tail: npt.NDArray[np.float64]
    gps_tail_n: npt.NDArray[np.int32]
    gps_since: npt.NDArray[np.int64]
    clock_seq: npt.NDArray[np.int64]
    clock_sent: npt.NDArray[np.int64]
    clock_offset: npt.NDArray[np.int64]
    clock_offset_seq: npt.NDArray[np.int64]
    frame_fp: npt.NDArray[np.int64]
    frame_n: npt.NDArray[np.int64]
    seen: npt.NDArray[np.int64]

    def __init__(self, signal_names: Sequence[str], hampel_signals: Sequence[str],
                 hampel_tail: int, stuck_signals: Sequence[str], frame_memory: int,
                 max_vehicles: int, gps_runs: int = 3) -> None:
        self.signal_names = list(signal_names)
        self.hampel_signals = list(hampel_signals)
        self.stuck_signals = list(stuck_signals)
        self.tail_width = max(int(hampel_tail), 1)
        self.frame_memory = int(frame_memory)
        self.max_vehicles = int(max_vehicles)
        self.gps_width = max(int(gps_runs), 1)
        self.slot_of: dict[str, int] = {}
        self.vin_of: list[str | None] = []
        self._free: list[int] = []
        self.clock = 0  # batches seen, for least-recently-seen eviction
        self.evicted = 0  # vehicles forgotten by `evict` so far (a metric: max_vehicles too small)
        self.capacity = 0
        self._alloc(64)

    # --- storage ---------------------------------------------------------------------------

    def _shapes(self) -> dict[str, tuple[tuple[int, ...], Any, Any]]:
        """Column name -> (trailing shape, dtype, empty value)."""
        n_sig, n_h, n_st = len(self.signal_names), len(self.hampel_signals), len(self.stuck_signals)
        return {
            "last_t": ((n_sig,), np.int64, NO_T),
            "last_v": ((n_sig,), np.float64, np.nan),
            "tail_v": ((n_h, self.tail_width), np.float64, np.nan),
            "tail_n": ((n_h,), np.int32, 0),
            "tail_t": ((n_h,), np.int64, NO_T),
            "stuck_v": ((n_st,), np.float64, np.nan),
            "stuck_start": ((n_st,), np.int64, NO_T),
            "stuck_n": ((n_st,), np.int64, 0),
            "stuck_t": ((n_st,), np.int64, NO_T),
            "stuck_ref0": ((n_st,), np.float64, np.nan),
            "stuck_hit": ((n_st,), np.bool_, False),
            "stuck_past_v": ((n_st,), np.float64, np.nan),
            "stuck_past_start": ((n_st,), np.int64, NO_T),
            "stuck_past_end": ((n_st,), np.int64, NO_T),
            "gps_tail": ((self.gps_width, 3), np.float64, np.nan),
            "gps_tail_n": ((), np.int32, 0),
            "gps_since": ((), np.int64, NO_T),
            "clock_seq": ((), np.int64, np.iinfo(np.int64).min),
            "clock_sent": ((), np.int64, NO_T),
            "clock_offset": ((), np.int64, NO_T),
            "clock_offset_seq": ((), np.int64, np.iinfo(np.int64).min),
            "frame_fp": ((max(self.frame_memory, 1),), np.int64, 0),
            "frame_n": ((), np.int64, 0),
            "seen": ((), np.int64, 0),
        }

    def _alloc(self, capacity: int) -> None:
        old = self.capacity
        for name, (shape, dtype, empty) in self._shapes().items():
            arr = np.full((capacity, *shape), empty, dtype=dtype)
            if old:
                arr[:old] = getattr(self, name)
            setattr(self, name, arr)
        self.capacity = capacity

    def _reset(self, slots: npt.NDArray[np.int64]) -> None:
        for name, (_, _, empty) in self._shapes().items():
            getattr(self, name)[slots] = empty

    # --- slots -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.slot_of)

    def slots(self, vins: Sequence[str]) -> npt.NDArray[np.int64]:
        """Slot of each VIN, creating empty history for VINs not seen before."""
        out = np.empty(len(vins), dtype=np.int64)
        slot_of = self.slot_of
        fresh: list[int] = []
        for i, vin in enumerate(vins):  # one lookup per vehicle of the batch, not per reading
            slot = slot_of.get(vin)
            if slot is None:
                slot = self._new_slot(vin)
                fresh.append(slot)
            out[i] = slot
        if fresh:
            self._reset(np.asarray(fresh, dtype=np.int64))
        return out

    def _new_slot(self, vin: str) -> int:
        if self._free:
            slot = self._free.pop()
            self.vin_of[slot] = vin
        else:
            slot = len(self.vin_of)
            if slot >= self.capacity:
                self._alloc(max(64, self.capacity * 2))
            self.vin_of.append(vin)
        self.slot_of[vin] = slot
        return slot

    def touch(self, slots: npt.NDArray[np.int64]) -> None:
        """Mark slots as seen in this batch (for least-recently-seen eviction)."""
        self.clock += 1
        self.seen[slots] = self.clock

    def forget(self, vins: Iterable[str]) -> int:
        """Drop the history of these vehicles (partition revoked); returns how many."""
        slots = [self.slot_of.pop(v) for v in vins if v in self.slot_of]
        for slot in slots:
            self.vin_of[slot] = None
            self._free.append(slot)
        if slots:
            self._reset(np.asarray(slots, dtype=np.int64))
        return len(slots)

    def evict(self, keep: npt.NDArray[np.int64]) -> int:
        """Forget the least recently seen vehicles beyond `max_vehicles` (never `keep`)."""
        excess = len(self.slot_of) - self.max_vehicles
        if excess <= 0:
            return 0
        used = np.fromiter(self.slot_of.values(), dtype=np.int64, count=len(self.slot_of))
        used = used[~np.isin(used, keep)]
        if not used.size:
            return 0
        excess = min(excess, used.size)
        oldest = used[np.argpartition(self.seen[used], excess - 1)[:excess]]
        forgotten = self.forget([self.vin_of[int(s)] or "" for s in oldest])
        self.evicted += forgotten
        return forgotten

    # --- moving with partitions --------------------------------------------------------------

    def export(self, vins: Iterable[str]) -> bytes:
        """History of these vehicles (those known) as bytes, keyed by VIN and by signal name."""
        known = [v for v in vins if v in self.slot_of]
        slots = np.asarray([self.slot_of[v] for v in known], dtype=np.int64)
        columns: dict[str, Any] = {name: getattr(self, name)[slots] for name in self._shapes()}
        columns.pop("seen")
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            format_version=np.int64(FORMAT_VERSION),
            vins=np.asarray(known, dtype=str),
            signal_names=np.asarray(self.signal_names, dtype=str),
            hampel_signals=np.asarray(self.hampel_signals, dtype=str),
            stuck_signals=np.asarray(self.stuck_signals, dtype=str),
            **columns,
        )
        return buf.getvalue()

    def load(self, blob: bytes) -> list[str]:
        """Restore exported history (replacing what is held for those VINs); returns the VINs.

        Signals are matched by name, so a blob from a worker with a different catalog or
        cleaning config restores what both know and leaves the rest empty.
        """
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            if int(data["format_version"]) != FORMAT_VERSION:
                raise ValueError(f"unsupported cleaning state format {int(data['format_version'])}")
            vins = [str(v) for v in data["vins"]]
            if not vins:
                return []
            cols = {name: data[name] for name in data.files}
        self.forget(vins)
        slots = self.slots(vins)

        def remap(names_from: Sequence[str], names_to: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
            pos = {n: i for i, n in enumerate(names_from)}
            dst = [j for j, n in enumerate(names_to) if n in pos]
            src = [pos[names_to[j]] for j in dst]
            return np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)

        groups = {
            "signal_names": (("last_t", "last_v"), self.signal_names),
            "hampel_signals": (("tail_v", "tail_n", "tail_t"), self.hampel_signals),
            "stuck_signals": (("stuck_v", "stuck_start", "stuck_n", "stuck_t", "stuck_ref0", "stuck_hit",
                               "stuck_past_v", "stuck_past_start", "stuck_past_end"),
                              self.stuck_signals),
        }
        for key, (names, mine) in groups.items():
            src, dst = remap([str(n) for n in cols[key]], mine)
            for name in names:
                if name not in cols:  # a column that blobs of older workers lack: left empty
                    continue
                target = getattr(self, name)
                if name == "tail_v":  # right-aligned tails of possibly different widths
                    width = min(target.shape[2], cols[name].shape[2])
                    target[slots[:, None], dst[None, :], -width:] = cols[name][:, src, -width:]
                else:
                    target[slots[:, None], dst[None, :]] = cols[name][:, src]
        width = min(self.gps_width, cols["gps_tail"].shape[1])
        self.gps_tail[slots, -width:] = cols["gps_tail"][:, -width:]
        self.gps_tail_n[slots] = np.minimum(cols["gps_tail_n"], width)
        self.gps_since[slots] = cols["gps_since"]
        self.clock_seq[slots] = cols["clock_seq"]
        self.clock_sent[slots] = cols["clock_sent"]
        if "clock_offset" in cols:  # absent from blobs of workers before clock skew repair
            self.clock_offset[slots] = cols["clock_offset"]
            self.clock_offset_seq[slots] = cols["clock_offset_seq"]
        width = min(self.frame_fp.shape[1], cols["frame_fp"].shape[1])
        if width == cols["frame_fp"].shape[1] == self.frame_fp.shape[1]:
            self.frame_fp[slots] = cols["frame_fp"]
            self.frame_n[slots] = cols["frame_n"]
        else:  # different ring sizes: keep the newest `width` fingerprints
            for row, slot in enumerate(slots):  # per vehicle, only when configs differ
                ring, n = cols["frame_fp"][row], int(cols["frame_n"][row])
                size = ring.shape[0]
                newest = [ring[(n - 1 - i) % size] for i in range(min(n, size, width))][::-1]
                self.frame_n[slot] = 0
                for i, fp in enumerate(newest):
                    self.frame_fp[slot, i % self.frame_fp.shape[1]] = fp
                self.frame_n[slot] = len(newest)
        self.touch(slots)
        return vins
