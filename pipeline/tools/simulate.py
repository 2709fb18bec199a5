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

Parts: this module is the front, with `FleetSimulator` (construction, the run window by
window in arrival order, the summary) and `simulate_to_recording`; the simulator's other
names are importable from here too (`__all__`). `pipeline.tools.sim.window` makes one
window's frames and truth, `pipeline.tools.sim.frames` holds `SimFrame` and the encoding
of frames as records (`to_record`), `pipeline.tools.sim.config` holds `SimConfig`.
"""

from __future__ import annotations

import gc
import heapq
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from pipeline.core.catalog import Catalog, load_catalog
from pipeline.tools.recording import Record, RecordingWriter
from pipeline.tools.sim.city import CITIES, RoadNetwork
from pipeline.tools.sim.config import DEFAULT_START, SimConfig
from pipeline.tools.sim.faults import FAULT_NAMES, FAULTS, FaultInjector
from pipeline.tools.sim.fleet import FleetModel
from pipeline.tools.sim.frames import KINDS, SimFrame, to_record
from pipeline.tools.sim.signals import LAT, LON
from pipeline.tools.sim.truth import Truth, TruthRows, TruthWriter, load_truth, truth_path
from pipeline.tools.sim.window import WindowBuilder, _Encoding

__all__ = ["DEFAULT_START", "FleetSimulator", "SimConfig", "SimFrame", "Truth", "load_truth",
           "simulate_to_recording", "to_record", "truth_path"]


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


class FleetSimulator(WindowBuilder):
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
