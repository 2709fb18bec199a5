"""Cleaning quality measured against ground truth: the simulator's faults and real trips.

`simulated_quality` runs a simulated fleet with injected faults through the real path
(frames encoded as Kafka records, `events.decode_records`, `Cleaner.clean`) and scores
every reading against the truth: per fault type and per signal class, recall (faulty
readings dropped or repaired) and precision (readings dropped or repaired with a reason
that answers that fault, which truly had it), plus the share of clean readings wrongly
dropped. Clock skews under `SMALL_SKEW_MS` are scored apart (`clock_skew_small`): the
cleaner leaves offsets under its bound alone by design. So are stuck readings within
`SMALL_STUCK_SHARE` of the signal's range of the true value (`stuck_small`: a sensor
frozen while the quantity barely moves, as a speed sensor at a steady cruise): no
cross-check can tell them from a real hold, and the error they carry is below that.
`twizy_quality` cleans the real Twizy trips and reports what is dropped and why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.core.batch import RawRecord, Readings
from pipeline.core.clean import REASONS, Cleaner, CleaningConfig, load_cleaning_config

# Which cleaning outcomes answer which injected fault (for precision); recall counts any
# reading that was dropped or repaired, whatever the reason.
FAULT_REASONS: dict[str, tuple[str, ...]] = {
    "spike": ("dropped.spike", "repaired.spike", "dropped.rate_of_change", "repaired",
              "dropped.out_of_range"),  # a gear spike lands on a value the gear cannot take
    "stuck": ("dropped.stuck",),
    "stuck_small": ("dropped.stuck",),
    "nan": ("dropped.non_finite",),
    "out_of_range": ("dropped.out_of_range",),
    "wrong_unit": ("repaired.unit", "repaired"),
    "unknown_unit": ("dropped.unit_unconvertible",),
    "gps_jump": ("dropped.gps_implied_speed",),
    "teleport": ("dropped.gps_implied_speed", "dropped.gps_out_of_bounds"),
    "null_island": ("dropped.gps_null_island",),
    "unknown_signal": ("dropped.unknown_signal",),
    "clock_skew": ("repaired.clock_skew", "repaired", "dropped.future_timestamp", "dropped.too_old",
                   "dropped.clock_skew"),
    "clock_skew_small": ("repaired.clock_skew", "repaired", "dropped.future_timestamp", "dropped.too_old",
                         "dropped.clock_skew"),
    "duplicate": ("dropped.duplicate",),
}
# Recall the stage must reach per fault type, and the ceiling on clean readings dropped.
RECALL_TARGETS: dict[str, float] = {
    "spike": 0.99, "gps_jump": 0.99, "teleport": 0.99, "null_island": 0.99, "duplicate": 0.99,
    "out_of_range": 0.99, "nan": 0.99, "wrong_unit": 0.99, "unknown_unit": 0.99,
    "unknown_signal": 0.99, "clock_skew": 0.99,
}
# Share of a fault's readings that must be repaired (not only dropped).
REPAIR_TARGETS: dict[str, float] = {"clock_skew": 0.95}
# Skews smaller than this are scored as `clock_skew_small` (no target).
SMALL_SKEW_MS = 10_000
# Stuck readings this close to the truth (share of the signal's range) are `stuck_small`.
SMALL_STUCK_SHARE = 0.005
# Signal classes the stuck targets are judged on, by what the signals measure (every
# catalog signal of the kind, whether a check covers it or not).
SIGNAL_CLASSES: dict[str, tuple[str, ...]] = {
    "inertial": ("Vehicle.Acceleration.Longitudinal", "Vehicle.Acceleration.Lateral",
                 "Vehicle.Acceleration.Vertical", "Vehicle.AngularVelocity.Yaw"),
    "speed": ("Vehicle.Speed", "Vehicle.TraveledDistance", "Vehicle.Powertrain.ElectricMotor.Speed",
              "Vehicle.Powertrain.CombustionEngine.Speed"),
    "energy": ("Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
               "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed",
               "Vehicle.Powertrain.TractionBattery.CurrentVoltage",
               "Vehicle.Powertrain.TractionBattery.CurrentCurrent",
               "Vehicle.Powertrain.TractionBattery.CurrentPower",
               "Vehicle.Powertrain.TractionBattery.Charging.ChargeRate",
               "Vehicle.Powertrain.TractionBattery.Charging.ChargeCurrent.DC",
               "Vehicle.Powertrain.TractionBattery.Charging.ChargeVoltage.DC",
               "Vehicle.LowVoltageBattery.CurrentVoltage", "Vehicle.Powertrain.FuelSystem.RelativeLevel",
               "Vehicle.Powertrain.Range"),
    "temperature": ("Vehicle.Exterior.AirTemperature", "Vehicle.Cabin.HVAC.AmbientAirTemperature",
                    "Vehicle.Powertrain.TractionBattery.Temperature.Average",
                    "Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature",
                    "Vehicle.Powertrain.CombustionEngine.EngineOil.Temperature"),
}
# A class target is judged on at least this many faulty readings (fewer: missed).
MIN_CLASS_CASES = 100
# (recall, precision) the stuck check must reach in each class.
CLASS_TARGETS: dict[str, dict[str, tuple[float, float]]] = {
    "stuck": {name: (0.95, 0.95) for name in SIGNAL_CLASSES},
}
# Quality runs inject every fault often enough to judge a target (300 cases or more each
# in the default run: readings for reading faults, frames for frame faults).
QUALITY_RATES = ("spike=0.0008,stuck=0.01,nan=0.0008,out_of_range=0.0008,wrong_unit=0.001,"
                 "unknown_unit=0.001,gps_jump=0.006,teleport=0.004,null_island=0.004,unknown_signal=0.03,"
                 "clock_skew=0.05,duplicate=0.02,out_of_order=0.02,late=0.02,bad_json=0.012,"
                 "missing_field=0.012,wrong_type=0.012,oversized=0.015,dropout=0.001")
MAX_WRONGLY_DROPPED = 0.001
# Frame faults whose readings are intact: cleaning should keep them and mark them late.
LATE_FAULTS = ("late", "out_of_order")


@dataclass(slots=True)
class FaultScore:
    """How cleaning did on one fault type."""

    fault: str
    readings: int  # readings carrying the fault
    detected: int  # of those, dropped or repaired
    answered: int  # readings dropped/repaired with a reason answering this fault
    answered_true: int  # of those, truly carrying this fault (or one answered alike)
    outcomes: dict[str, int]  # outcome -> readings of this fault
    target: float | None = None
    by_signal: dict[str, tuple[int, int]] = field(default_factory=dict)  # signal -> (n, detected)
    repair_target: float | None = None
    # class -> readings, detected, answered, answered_true (as the fault-wide counts)
    by_class: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    class_targets: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def repaired(self) -> int:
        return sum(n for k, n in self.outcomes.items() if k.startswith("repaired"))

    @property
    def repaired_share(self) -> float:
        return self.repaired / self.readings if self.readings else math.nan

    def class_scores(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, (n, detected, answered, answered_true) in self.by_class.items():
            recall = detected / n if n else math.nan
            precision = answered_true / answered if answered else math.nan
            target = self.class_targets.get(name)
            meets = target is None or (n >= MIN_CLASS_CASES and recall >= target[0]
                                       and (answered == 0 or precision >= target[1]))
            out[name] = {"readings": n, "detected": detected, "recall": _num(recall),
                         "answered": answered, "precision": _num(precision),
                         "target": list(target) if target else None, "meets_target": meets}
        return out

    def failures(self) -> list[str]:
        """Targets missed, as sentences."""
        out = []
        if not (self.target is None or self.readings == 0 or self.recall >= self.target):
            out.append(f"{self.fault}: recall {self.recall:.4f} < {self.target}")
        if self.repair_target is not None and self.readings and self.repaired_share < self.repair_target:
            out.append(f"{self.fault}: repaired {self.repaired_share:.4f} < {self.repair_target}")
        for name, c in self.class_scores().items():
            if not c["meets_target"]:
                out.append(f"{self.fault}/{name}: recall {c['recall']}, precision {c['precision']} "
                           f"on {c['readings']} readings (targets {c['target'][0]}, {c['target'][1]} "
                           f"on {MIN_CLASS_CASES} or more)")
        return out

    @property
    def recall(self) -> float:
        return self.detected / self.readings if self.readings else math.nan

    @property
    def precision(self) -> float:
        return self.answered_true / self.answered if self.answered else math.nan

    @property
    def meets_target(self) -> bool:
        return not self.failures()

    def as_dict(self) -> dict[str, Any]:
        return {"readings": self.readings, "detected": self.detected, "recall": _num(self.recall),
                "precision": _num(self.precision), "target": self.target,
                "repaired": self.repaired, "repaired_share": _num(self.repaired_share),
                "repair_target": self.repair_target,
                "meets_target": self.meets_target, "outcomes": self.outcomes,
                "by_class": self.class_scores(),
                "missed_by_signal": {s: n - d for s, (n, d) in self.by_signal.items() if n > d}}


@dataclass(slots=True)
class QualityReport:
    """Scores of one simulated run."""

    config: dict[str, Any]
    readings: int
    clean_readings: int
    wrongly_dropped: int
    wrongly_dropped_by: dict[str, int]  # reason -> clean readings dropped with it
    wrongly_dropped_by_signal: dict[str, int]
    faults: dict[str, FaultScore]
    counts: dict[str, int]  # outcome -> readings
    late_frames: dict[str, tuple[int, int]]  # fault -> (readings kept, marked late)
    dead_letters: dict[str, int]
    batches: int

    @property
    def wrongly_dropped_rate(self) -> float:
        return self.wrongly_dropped / self.clean_readings if self.clean_readings else 0.0

    def failures(self) -> list[str]:
        """Targets missed, as sentences (empty when every target is met)."""
        out = [msg for f in self.faults.values() for msg in f.failures()]
        if self.wrongly_dropped_rate > MAX_WRONGLY_DROPPED:
            out.append(f"clean readings wrongly dropped {self.wrongly_dropped_rate:.5f} > {MAX_WRONGLY_DROPPED}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "readings": self.readings,
            "clean_readings": self.clean_readings,
            "wrongly_dropped": self.wrongly_dropped,
            "wrongly_dropped_rate": self.wrongly_dropped_rate,
            "wrongly_dropped_target": MAX_WRONGLY_DROPPED,
            "wrongly_dropped_by_reason": self.wrongly_dropped_by,
            "wrongly_dropped_by_signal": self.wrongly_dropped_by_signal,
            "faults": {k: v.as_dict() for k, v in self.faults.items()},
            "late_frames": {k: {"readings": n, "marked_late": m} for k, (n, m) in self.late_frames.items()},
            "counts": self.counts,
            "dead_letters": self.dead_letters,
            "batches": self.batches,
            "meets_targets": not self.failures(),
            "failures": self.failures(),
        }


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


# --- simulated fleet ---------------------------------------------------------------------------


class _Scorer:
    """Accumulates outcome counts by truth label (and by signal) over batches."""

    def __init__(self, catalog: Any, labels: Sequence[str]) -> None:
        self.catalog = catalog
        self.labels = list(labels)  # 0 = clean
        self.n_reasons = len(REASONS)
        self.n_signals = len(catalog.names) + 1  # last = not in the catalog
        self.cube = np.zeros((len(self.labels), self.n_signals, self.n_reasons), dtype=np.int64)
        self.late = {name: [0, 0] for name in LATE_FAULTS}
        self.dead: dict[str, int] = {}

    def add(self, label: npt.NDArray[np.int64], outcome: npt.NDArray[np.int8], sig: npt.NDArray[np.int64]) -> None:
        codes = outcome.astype(np.int64)
        self.cube += np.bincount((label * self.n_signals + sig) * self.n_reasons + codes,
                                 minlength=self.cube.size).reshape(self.cube.shape)

    def report(self, config: dict[str, Any], batches: int) -> QualityReport:
        m = self.cube.sum(axis=1)
        first_dropped = REASONS.index("dropped.unknown_signal")
        names = [*self.catalog.names, "(not in catalog)"]
        class_sigs = {c: [names.index(s) for s in sigs if s in names] for c, sigs in SIGNAL_CLASSES.items()}
        faults: dict[str, FaultScore] = {}
        for li, fault in enumerate(self.labels):
            if li == 0 or fault not in FAULT_REASONS:
                continue
            row = m[li]
            answer_codes = [REASONS.index(r) for r in FAULT_REASONS[fault]]
            answered = int(m[:, answer_codes].sum())
            # faults answered by the same reasons (a jump dropped as a teleport is right)
            kin = [lj for lj, other in enumerate(self.labels)
                   if set(FAULT_REASONS.get(other, ())) & set(FAULT_REASONS[fault])]
            per_sig = self.cube[li]
            by_sig = {names[s]: (int(per_sig[s].sum()), int(per_sig[s, 1:].sum()))
                      for s in range(self.n_signals) if per_sig[s].sum()}
            by_class = {}
            for cname, sigs in class_sigs.items():
                sub = self.cube[:, sigs, :].sum(axis=1)
                by_class[cname] = (int(sub[li].sum()), int(sub[li, 1:].sum()), int(sub[:, answer_codes].sum()),
                                   int(sub[np.ix_(kin, answer_codes)].sum()))
            faults[fault] = FaultScore(
                fault=fault, readings=int(row.sum()), detected=int(row[1:].sum()),
                answered=answered, answered_true=int(m[np.ix_(kin, answer_codes)].sum()),
                outcomes={REASONS[c]: int(row[c]) for c in range(self.n_reasons) if row[c]},
                target=RECALL_TARGETS.get(fault), by_signal=by_sig, repair_target=REPAIR_TARGETS.get(fault),
                by_class=by_class, class_targets=CLASS_TARGETS.get(fault, {}))
        clean = m[0]
        wrong_by_signal = self.cube[0, :, first_dropped:].sum(axis=1)
        return QualityReport(
            config=config,
            readings=int(m.sum()),
            clean_readings=int(clean.sum()),
            wrongly_dropped=int(clean[first_dropped:].sum()),
            wrongly_dropped_by={REASONS[c]: int(clean[c]) for c in range(first_dropped, self.n_reasons)
                                if clean[c]},
            wrongly_dropped_by_signal={names[s]: int(n) for s, n in enumerate(wrong_by_signal) if n},
            faults=faults,
            counts={REASONS[c]: int(m[:, c].sum()) for c in range(self.n_reasons) if m[:, c].sum()},
            late_frames={k: (v[0], v[1]) for k, v in self.late.items()},
            dead_letters=dict(self.dead),
            batches=batches,
        )


def simulated_quality(vehicles: int = 600, duration_s: float = 1200.0, seed: int = 7, *,
                      fault_rates: dict[str, float] | None = None, batch_records: int = 500,
                      catalog: Any = None, config: CleaningConfig | None = None,
                      start: str | None = None) -> QualityReport:
    """Simulate a fleet with faults, clean it batch by batch, and score against the truth."""
    from pipeline.core.catalog import load_catalog
    from pipeline.core.events import decode_records
    from pipeline.tools.sim.faults import FAULT_NAMES, parse_fault_rates
    from pipeline.tools.simulate import FleetSimulator, SimConfig, to_record

    catalog = catalog if catalog is not None else load_catalog()
    config = config if config is not None else load_cleaning_config()
    rates = fault_rates if fault_rates is not None else parse_fault_rates(QUALITY_RATES)
    sim_kwargs: dict[str, Any] = {"vehicles": vehicles, "duration_s": duration_s, "seed": seed,
                                  "fault_rates": rates}
    if start:
        sim_kwargs["start"] = start
    sim_config = SimConfig(**sim_kwargs)
    sim = FleetSimulator(sim_config, catalog)
    cleaner = Cleaner(catalog, config)
    labels = ["clean", *FAULT_NAMES, "clock_skew_small", "stuck_small"]
    spans = {s.name: s.max - s.min for s in catalog.signals}
    label_of = {name: i for i, name in enumerate(labels)}
    scorer = _Scorer(catalog, labels)
    topics = {"sensor": sim_config.sensor_topic, "gps": sim_config.gps_topic}
    vin_index = {vin: i for i, vin in enumerate(sim.vins)}

    truth: dict[tuple[int, int, str, int], int] = {}  # (vin, seq, signal, t) -> label
    faulty_frames: set[tuple[int, int]] = set()
    offset = 0
    batches = 0
    pending: list[tuple[RawRecord, Any]] = []

    def run(batch: list[tuple[RawRecord, Any]]) -> None:
        nonlocal batches
        records = [r for r, _ in batch]
        readings, dead = decode_records(records, max_frame_bytes=sim_config.max_frame_bytes)
        for d in dead:
            scorer.dead[d.reason] = scorer.dead.get(d.reason, 0) + 1
        result = cleaner.clean(readings)
        batches += 1
        if not len(readings):
            return
        label = _labels(readings, batch, truth, faulty_frames, vin_index, label_of)
        sig = catalog.lookup(readings.signal_names).astype(np.int64)[readings.signal]
        sig = np.where(sig < 0, len(catalog.names), sig)
        scorer.add(label, result.outcome, sig)
        # readings of late / reordered frames: kept, and marked late?
        frame_fault = np.asarray([batch[int(r)][1].fault for r in readings.frames.record], dtype=object)
        clean_frame = result.readings.frame
        for name in LATE_FAULTS:
            hit = frame_fault == name
            if hit.any():
                in_frames = hit[clean_frame]
                scorer.late[name][0] += int(in_frames.sum())
                scorer.late[name][1] += int((in_frames & result.late).sum())

    for frames, rows in sim.windows():
        for part in rows:
            cols = part.columns
            if not len(part):
                continue
            reading = cols["level"] == "reading"
            for vin, seq, signal, t, fault, value, true in zip(
                    cols["vin"][reading].tolist(), cols["seq"][reading].tolist(), cols["signal"][reading].tolist(),
                    cols["t"][reading].tolist(), cols["fault"][reading].tolist(), cols["value"][reading].tolist(),
                    cols["true_value"][reading].tolist(), strict=True):
                if fault in ("duplicate", "dropout"):
                    continue  # resends are labelled by arrival; dropouts were never sent
                if fault == "stuck" and abs(value - true) <= SMALL_STUCK_SHARE * spans.get(signal, 0.0):
                    fault = "stuck_small"
                v = vin_index[vin]
                truth[(v, int(seq), signal, int(t))] = label_of[fault]
                faulty_frames.add((v, int(seq)))
        for f in frames:
            rec = to_record(f, topics, sim_config.max_frame_bytes)
            raw = RawRecord(rec.topic, 0, offset, rec.key, rec.value, rec.headers, rec.timestamp_ms)
            offset += 1
            pending.append((raw, f))
            if len(pending) >= batch_records:
                run(pending)
                pending = []
    if pending:
        run(pending)
    report_config = {"vehicles": vehicles, "duration_s": duration_s, "seed": seed,
                     "batch_records": batch_records, "fault_rates": rates}
    return scorer.report(report_config, batches)


def _labels(readings: Readings, batch: list[tuple[RawRecord, Any]],
            truth: dict[tuple[int, int, str, int], int], faulty_frames: set[tuple[int, int]],
            vin_index: dict[str, int], label_of: dict[str, int]) -> npt.NDArray[np.int64]:
    """Truth label of every decoded reading: resent copies are duplicates, else the truth row."""
    frames = readings.frames
    vin_of_vehicle = np.asarray([vin_index[v] for v in readings.vins], dtype=np.int64)
    f_vin = vin_of_vehicle[frames.vehicle]
    f_copy = np.asarray([batch[int(r)][1].copy for r in frames.record], dtype=bool)
    f_faulty = np.asarray([(int(v), int(s)) in faulty_frames
                           for v, s in zip(f_vin.tolist(), frames.seq.tolist(), strict=True)], dtype=bool)
    label = np.zeros(len(readings), dtype=np.int64)
    label[f_copy[readings.frame]] = label_of["duplicate"]
    # the simulator's record time is the true send time: the offset is the skew
    small_skew = np.abs(frames.sent_at - frames.received_at) < SMALL_SKEW_MS
    look = np.flatnonzero(f_faulty[readings.frame] & ~f_copy[readings.frame])
    if look.size:
        fr = readings.frame[look]
        names = readings.signal_names
        keys = zip(f_vin[fr].tolist(), frames.seq[fr].tolist(), readings.signal[look].tolist(),
                   readings.t[look].tolist(), strict=True)
        label[look] = [truth.get((v, s, names[g], t), 0) for v, s, g, t in keys]
        skew = label_of["clock_skew"]
        label[look] = np.where((label[look] == skew) & small_skew[fr], label_of["clock_skew_small"], label[look])
    return label


# --- real trips --------------------------------------------------------------------------------


@dataclass(slots=True)
class TripReport:
    """What cleaning did to one real trip."""

    file: str
    rows: int
    csv: dict[str, int]  # rows kept / repaired / dropped when the CSV was read
    readings: int
    counts: dict[str, int]
    by_signal: dict[str, dict[str, int]]  # signal -> outcome -> readings (not kept ones)
    examples: list[dict[str, Any]]  # dropped readings with their neighbours, for a look

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "rows": self.rows, "csv": self.csv, "readings": self.readings,
                "counts": self.counts, "by_signal": self.by_signal, "examples": self.examples}


def twizy_quality(directory: Path | str | None = None, *, catalog: Any = None,
                  config: CleaningConfig | None = None, batch_records: int = 12,
                  frame_seconds: float = 5.0, examples: int = 5) -> list[TripReport]:
    """Clean each real Twizy trip as the replay sends it, and report what was dropped.

    Frames come from the replay's CSV mapping (`rules/replay/twizy.yaml`), are encoded and
    decoded like any record, and are cleaned `batch_records` records at a time (a small
    batch per vehicle, the hardest case for checks at batch edges), one fresh cleaner
    per trip.
    """
    from pipeline.core.catalog import load_catalog
    from pipeline.core.events import decode_records, encode_frame
    from pipeline.tools.replay import default_twizy_dir, load_mapping, load_trips, twizy_frames

    catalog = catalog if catalog is not None else load_catalog()
    config = config if config is not None else load_cleaning_config()
    mapping = load_mapping(catalog=catalog)
    trips = load_trips(directory or default_twizy_dir(), mapping)
    out: list[TripReport] = []
    for trip in trips:
        tally = _TripTally(Cleaner(catalog, config), examples)
        records: list[RawRecord] = []
        for f in twizy_frames([trip], mapping, vehicle=0, frame_seconds=frame_seconds):
            enc = encode_frame(f.kind, f.frame)  # type: ignore[arg-type]
            records.append(RawRecord(f.kind, 0, len(records), enc.key, enc.value, tuple(enc.headers),
                                     f.timestamp_ms))
            if len(records) % batch_records == 0:
                tally.run(decode_records(records[-batch_records:])[0])
        rest = len(records) % batch_records
        if rest:
            tally.run(decode_records(records[-rest:])[0])
        out.append(TripReport(trip.name, int(trip.counts.get("rows", 0)),
                              {k: int(v) for k, v in trip.counts.items() if k != "rows"},
                              tally.counts.get("in", 0), tally.counts, tally.by_signal, tally.shown))
    return out


class _TripTally:
    """Cleans one trip batch by batch and keeps what was dropped, by signal and reason."""

    def __init__(self, cleaner: Cleaner, examples: int) -> None:
        self.cleaner = cleaner
        self.examples = examples
        self.counts: dict[str, int] = {}
        self.by_signal: dict[str, dict[str, int]] = {}
        self.shown: list[dict[str, Any]] = []

    def run(self, readings: Readings) -> None:
        result = self.cleaner.clean(readings)
        for key, n in result.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
        for i in np.flatnonzero(result.outcome != 0).tolist():
            name = readings.signal_names[int(readings.signal[i])]
            reason = REASONS[int(result.outcome[i])]
            per = self.by_signal.setdefault(name, {})
            per[reason] = per.get(reason, 0) + 1
            if reason.startswith("dropped.") and len(self.shown) < self.examples:
                same = np.flatnonzero(readings.signal == readings.signal[i])
                at = int(np.searchsorted(same, i))
                around = same[max(0, at - 3):at + 4]
                self.shown.append({"signal": name, "t": int(readings.t[i]), "value": float(readings.value[i]),
                                   "reason": reason,
                                   "batch_neighbours": [[int(readings.t[j]), float(readings.value[j])]
                                                        for j in around]})
