"""The fleet simulator: determinism, exact ground truth, fault rates, realism of the traffic."""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from pipeline.core.batch import RawRecord
from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.events import decode_records
from pipeline.tools.recording import Record, iter_records, read_metadata
from pipeline.tools.sim.city import CITIES, RoadNetwork
from pipeline.tools.sim.config import parse_start
from pipeline.tools.sim.faults import FAULTS, parse_fault_rates
from pipeline.tools.sim.fleet import FleetModel
from pipeline.tools.sim.vehicles import DAY_MS
from pipeline.tools.simulate import (
    FleetSimulator,
    SimConfig,
    load_truth,
    simulate_to_recording,
    to_record,
)

EPISODIC = {"stuck", "dropout", "gps_jump", "clock_skew"}  # whole episodes: few, large draws
BLOCKS = {"wrong_unit", "unknown_unit"}  # a frame's block of one signal at a time
HIGH_RATES = ("spike=0.003,stuck=0.003,dropout=0.003,nan=0.003,out_of_range=0.003,wrong_unit=0.003,"
              "unknown_unit=0.003,gps_jump=0.006,teleport=0.003,null_island=0.003,unknown_signal=0.01,"
              "clock_skew=0.03,duplicate=0.01,out_of_order=0.01,late=0.01,bad_json=0.005,"
              "missing_field=0.005,wrong_type=0.005,oversized=0.003")


@dataclass
class Run:
    """A simulated recording, parsed back independently of the simulator."""

    path: Path
    summary: dict[str, Any]
    records: list[Record]
    frames: list[tuple[Record, dict[str, Any] | None]]  # None: not a decodable frame
    readings: dict[tuple[str, str, int], list[tuple[float, str | None]]]  # (vin, signal, t) -> [(v, u)]


def _frame(record: Record) -> dict[str, Any] | None:
    """The frame a record carries, or None if a consumer could not read it as one."""
    try:
        data = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or len(record.value or b"") > 1_000_000:
        return None
    ok = (isinstance(data.get("vin"), str) and isinstance(data.get("seq"), int)
          and isinstance(data.get("sent_at"), int) and isinstance(data.get("samples"), dict))
    if not ok:
        return None
    for entry in data["samples"].values():
        t, v = entry.get("t"), entry.get("v")
        if not (isinstance(t, list) and isinstance(v, list)) or any(isinstance(x, str) for x in t + v):
            return None
    return data


def _run(path: Path, config: SimConfig) -> Run:
    summary = simulate_to_recording(config, path)
    records = list(iter_records(path))
    frames = [(r, _frame(r)) for r in records]
    readings: dict[tuple[str, str, int], list[tuple[float, str | None]]] = collections.defaultdict(list)
    for _, frame in frames:
        if frame is None:
            continue
        for name, entry in frame["samples"].items():
            for t, v in zip(entry["t"], entry["v"], strict=True):
                readings[(frame["vin"], name, t)].append((math.nan if v is None else float(v), entry.get("u")))
    return Run(path, summary, records, frames, readings)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """250 vehicles in the morning rush for 10 minutes, with high fault rates."""
    config = SimConfig(vehicles=250, duration_s=600, seed=3, fault_rates=parse_fault_rates(HIGH_RATES))
    return _run(tmp_path_factory.mktemp("sim") / "faulty.rec", config)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """An evening with no faults: commuters driving home, EVs charging."""
    config = SimConfig(vehicles=120, duration_s=600, seed=5, start="2024-05-14T18:20:00+01:00",
                       fault_rates=parse_fault_rates("none"))
    return _run(tmp_path_factory.mktemp("sim") / "clean.rec", config)


# --- determinism ----------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    config = SimConfig(vehicles=40, duration_s=90, seed=11, fault_rates=parse_fault_rates(HIGH_RATES))
    simulate_to_recording(config, tmp_path / "a.rec")
    simulate_to_recording(config, tmp_path / "b.rec")
    simulate_to_recording(SimConfig(vehicles=40, duration_s=90, seed=12,
                                    fault_rates=parse_fault_rates(HIGH_RATES)), tmp_path / "c.rec")
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.rec", "b.rec", "c.rec"))
    assert len(a) > 100_000
    assert a == b
    assert a != c
    assert (tmp_path / "a.rec.truth.parquet").read_bytes() == (tmp_path / "b.rec.truth.parquet").read_bytes()


def test_encoded_windows_equal_encoding_each_frame() -> None:
    """`record_windows` writes payloads without frame dicts: the records equal `to_record` of the frames."""
    rates = parse_fault_rates(HIGH_RATES + ",wrong_unit=0.02,unknown_unit=0.02,unknown_signal=0.05,bad_json=0.02,"
                              "missing_field=0.02,wrong_type=0.02,oversized=0.01,duplicate=0.03")
    config = SimConfig(vehicles=200, duration_s=120, seed=5, fault_rates=rates)
    topics = {"sensor": "s.raw", "gps": "g.raw"}
    framed = FleetSimulator(config)
    expected = [(to_record(f, topics, config.max_frame_bytes), f.n_readings) for f in framed.frames()]
    encoded = FleetSimulator(config)
    got = [item for records, _ in encoded.record_windows(topics) for item in records]
    assert got == expected
    injected = encoded.tally["injected"]  # the run holds every kind of frame content and damage
    for fault in ("wrong_unit", "unknown_unit", "unknown_signal", "duplicate", "bad_json", "missing_field",
                  "wrong_type", "oversized"):
        assert injected[fault] > 0, fault


def test_fault_rates_do_not_change_the_clean_traffic(tmp_path: Path) -> None:
    base = dict(vehicles=30, duration_s=60, seed=4)
    quiet = FleetSimulator(SimConfig(**base, fault_rates=parse_fault_rates("none")))
    noisy = FleetSimulator(SimConfig(**base, fault_rates=parse_fault_rates("none,spike=0.01")))
    q = {(f.frame["vin"], f.frame["seq"], f.kind): f.frame for f in quiet.frames()}
    n = {(f.frame["vin"], f.frame["seq"], f.kind): f.frame for f in noisy.frames()}
    assert q.keys() == n.keys()
    speeds_equal = [np.array_equal(q[k]["samples"]["Vehicle.Speed"]["t"], n[k]["samples"]["Vehicle.Speed"]["t"])
                    for k in q if "Vehicle.Speed" in q[k]["samples"]]
    assert speeds_equal and all(speeds_equal)


# --- ground truth ----------------------------------------------------------------------------------


def test_every_truth_row_matches_what_was_emitted(faulty: Run, catalog: Catalog) -> None:
    truth = load_truth(faulty.path)
    r = truth.readings
    assert len(r["vin"]) > 1000
    checked = collections.Counter()
    for vin, sig, t, fault, value, true_value, detail in zip(
            r["vin"], r["signal"], r["t"], r["fault"], r["value"], r["true_value"], r["detail"], strict=True):
        got = faulty.readings.get((vin, sig, int(t)), [])
        checked[fault] += 1
        if fault == "dropout":
            assert not got, (vin, sig, t)
            continue
        assert got, (fault, vin, sig, t)
        values = [g[0] for g in got]
        if fault == "duplicate":
            assert len(got) >= 2
        elif fault == "nan":
            assert any(math.isnan(v) for v in values)
        elif fault in ("wrong_unit", "unknown_unit"):
            assert any(g[1] == detail for g in got), (fault, detail, got)
            if fault == "wrong_unit":  # normalising the labelled unit gives the true value back
                assert value in values
                conversion = catalog.signal(sig).conversion(detail)
                assert conversion is not None
                assert conversion.apply(value) == pytest.approx(true_value, rel=1e-5, abs=1e-4)
        elif fault != "clock_skew":
            assert value in values, (fault, vin, sig, t, value, values)
            # a frozen sensor's reading may happen to equal the truth (it is still a row)
            if fault not in ("unknown_signal", "stuck"):
                assert true_value not in values, (fault, value, true_value)
    assert set(checked) >= {f.name for f in FAULTS if f.level == "reading"} | {"duplicate", "clock_skew"}


def test_every_anomaly_emitted_is_in_the_truth(faulty: Run, catalog: Catalog) -> None:
    truth = load_truth(faulty.path)
    keys: dict[str, set[tuple[str, str, int]]] = collections.defaultdict(set)
    skewed_frames = {(vin, int(seq)) for vin, seq, fault in zip(truth.frames["vin"], truth.frames["seq"],
                                                                truth.frames["fault"], strict=True)
                     if fault == "clock_skew"}
    for vin, sig, t, fault, seq in zip(truth.readings["vin"], truth.readings["signal"], truth.readings["t"],
                                       truth.readings["fault"], truth.readings["seq"], strict=True):
        keys[fault].add((vin, sig, int(t)))
        if (vin, int(seq)) in skewed_frames:
            keys["in_skewed_frame"].add((vin, sig, int(t)))
    for key, got in faulty.readings.items():
        vin, name, _ = key
        if len(got) > 1:  # the same (vin, signal, t) twice: a resend, or a shifted clock hitting a real t
            assert key in keys["duplicate"] or key in keys["in_skewed_frame"], key
        if name not in catalog:
            assert key in keys["unknown_signal"], key
            continue
        sig = catalog.signal(name)
        for value, unit in got:
            if unit is not None:
                assert key in keys["wrong_unit"] | keys["unknown_unit"], (key, unit)
            elif math.isnan(value):
                assert key in keys["nan"], key
            elif not sig.min <= value <= sig.max:
                assert key in keys["out_of_range"], (key, value)
            if name.endswith("Latitude") and value == 0.0:
                assert key in keys["null_island"], key


def test_frame_faults_are_exact(faulty: Run) -> None:
    truth = load_truth(faulty.path)
    f = truth.frames
    listed = collections.defaultdict(set)
    for vin, seq, kind, fault in zip(f["vin"], f["seq"], f["kind"], f["fault"], strict=True):
        listed[fault].add((vin, int(seq), kind))
    assert all(listed[name] for name in ("clock_skew", "duplicate", "out_of_order", "late", "bad_json",
                                         "missing_field", "wrong_type", "oversized"))
    copies: collections.Counter[tuple[str, int, str]] = collections.Counter()
    arrival: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for record, frame in faulty.frames:
        if frame is None:
            continue
        kind = "gps" if record.topic.endswith("gps.raw") else "sensor"
        key = (frame["vin"], frame["seq"], kind)
        copies[key] += 1
        arrival[(frame["vin"], kind)].append(frame["seq"])
        delay = record.timestamp_ms - frame["sent_at"]
        if key in listed["late"]:
            assert delay >= 60_000
        elif key in listed["clock_skew"]:
            assert abs(delay) >= 3000
        elif copies[key] == 1 and key not in listed["out_of_order"]:
            assert delay == 0, key
    assert {k for k, n in copies.items() if n > 1} == listed["duplicate"]
    assert all(copies[k] == 2 for k in listed["duplicate"])
    malformed = set().union(*(listed[n] for n in ("bad_json", "missing_field", "wrong_type", "oversized")))
    for (vin, kind), seqs in arrival.items():
        highest = -1
        for seq in seqs:
            key = (vin, seq, kind)
            if seq < highest:  # arrived after a later frame of the same stream
                assert key in listed["out_of_order"] | listed["late"] | listed["duplicate"], key
            highest = max(highest, seq)
    for key in listed["out_of_order"]:
        vin, seq, kind = key
        seqs = arrival[(vin, kind)]
        overtaken = any(s > seq for s in seqs[:seqs.index(seq)])
        successor_malformed = any((vin, s, kind) in malformed for s in range(seq + 1, seq + 4))
        assert overtaken or successor_malformed, key


def test_malformed_frames_are_dead_lettered_for_their_reason(faulty: Run) -> None:
    truth = load_truth(faulty.path)
    raws = [RawRecord(r.topic, 0, i, r.key, r.value, r.headers, r.timestamp_ms)
            for i, r in enumerate(faulty.records)]
    _, dead = decode_records(raws)
    reasons = collections.Counter(d.reason for d in dead)
    expected = collections.Counter(x for x in truth.frames["fault"].tolist()
                                   if x in ("bad_json", "missing_field", "wrong_type", "oversized"))
    assert reasons == expected


def test_truth_counts_agree_with_the_summary(faulty: Run) -> None:
    truth = load_truth(faulty.path)
    assert truth.summary["readings"] == faulty.summary["readings"]
    rows = collections.Counter(truth.readings["fault"].tolist())
    frames = collections.Counter(truth.frames["fault"].tolist())
    for name, info in truth.summary["faults"].items():
        if name in ("gps_jump", "teleport", "null_island"):
            assert rows[name] == 2 * info["injected"]  # latitude and longitude rows per fix
        elif name == "unknown_signal":
            assert 1 <= rows[name] / max(info["injected"], 1) <= 5
        elif info["level"] == "reading":
            assert rows[name] == info["injected"], name
        else:
            assert frames[name] == info["injected"], name
    assert sum(1 for _ in faulty.records) == sum(faulty.summary["frames"].values())


def test_achieved_fault_rates_match_the_configuration(faulty: Run) -> None:
    for name, info in faulty.summary["faults"].items():
        rate, n = info["rate"], info["opportunities"]
        assert n > 0, name
        achieved = info["injected"] / n
        if name in EPISODIC:
            assert 0.5 * rate <= achieved <= 1.7 * rate, (name, rate, achieved)
        elif name in BLOCKS:
            assert 0.5 * rate <= achieved <= 1.5 * rate, (name, rate, achieved)
        else:  # binomial: within 4.5 standard deviations
            sd = math.sqrt(rate * (1 - rate) / n)
            assert abs(achieved - rate) <= 4.5 * sd + 1e-12, (name, rate, achieved, n)


# --- traffic --------------------------------------------------------------------------------------------


def test_records_are_keyed_by_vin_in_arrival_order(faulty: Run) -> None:
    stamps = [r.timestamp_ms for r in faulty.records]
    assert stamps == sorted(stamps)
    meta = read_metadata(faulty.path)
    assert set(meta["topics"].values()) == {r.topic for r in faulty.records}
    for record, frame in faulty.frames:
        if frame is not None:
            assert record.key == frame["vin"].encode()
            assert dict(record.headers)["ce_subject"] == record.key


def test_powertrains_send_their_own_signals(clean: Run, catalog: Catalog) -> None:
    ev_only = [n for n in catalog.names if ".TractionBattery." in n or ".ElectricMotor." in n]
    ice_only = [n for n in catalog.names if ".CombustionEngine." in n or ".FuelSystem." in n]
    kinds: dict[str, set[str]] = collections.defaultdict(set)
    for _, frame in clean.frames:
        assert frame is not None
        kinds[frame["vin"]].update(frame["samples"])
    evs = [v for v, names in kinds.items() if names & set(ev_only)]
    ices = [v for v, names in kinds.items() if names & set(ice_only)]
    assert evs and ices
    assert not set(evs) & set(ices)


def test_signals_follow_their_catalog_interval(clean: Run, catalog: Catalog) -> None:
    seen = set()
    for _, frame in clean.frames:
        assert frame is not None
        for name, entry in frame["samples"].items():
            t = np.asarray(entry["t"])
            if t.size > 1:
                interval = catalog.signal(name).interval_ms
                steps = set(np.diff(t).tolist())
                # consecutive samples are one interval apart (or a minute apart while charging)
                assert steps <= {interval, 60_000}, (name, steps)
                seen.add(name)
    assert {"Vehicle.Acceleration.Longitudinal", "Vehicle.Speed", "Vehicle.CurrentLocation.Latitude"} <= seen


def test_clean_readings_are_plausible(clean: Run, catalog: Catalog) -> None:
    city = CITIES["rabat"]
    for (_, name, _), got in clean.readings.items():
        assert len(got) == 1
        value, unit = got[0]
        sig = catalog.signal(name)
        assert unit is None
        assert sig.min <= value <= sig.max, (name, value)
        if name.endswith("Latitude"):
            assert abs(value - city.lat) < 0.2
        if name.endswith("Longitude"):
            assert abs(value - city.lon) < 0.2
    accel = [g[0][0] for (_, n, _), g in clean.readings.items() if n == "Vehicle.Acceleration.Longitudinal"]
    lateral = [g[0][0] for (_, n, _), g in clean.readings.items() if n == "Vehicle.Acceleration.Lateral"]
    assert min(accel) > -9.5 and max(accel) < 6.0
    assert max(abs(x) for x in lateral) < 7.0
    speeds = [g[0][0] for (_, n, _), g in clean.readings.items() if n == "Vehicle.Speed"]
    assert 15.0 < float(np.mean(speeds)) < 70.0


def test_evs_charge_in_the_evening(clean: Run) -> None:
    charging: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
    for _, frame in clean.frames:
        assert frame is not None
        s = frame["samples"]
        flag = s.get("Vehicle.Powertrain.TractionBattery.Charging.IsCharging")
        soc = s.get("Vehicle.Powertrain.TractionBattery.StateOfCharge.Current")
        if flag and soc and all(flag["v"]):
            charging[frame["vin"]].extend(zip(soc["t"], soc["v"], strict=True))
    assert len(charging) >= 5
    rising = 0
    for series in charging.values():
        series.sort()
        socs = [v for _, v in series]
        assert socs == sorted(socs)
        rising += socs[-1] > socs[0]
    assert rising >= 3


def test_departures_peak_in_the_rush_hours() -> None:
    network = RoadNetwork(CITIES["rabat"], 1)
    start = parse_start("2024-05-14T00:00:00+01:00")
    model = FleetModel(network, 1500, 0.6, start, 1)
    day = (start + model.utc_offset_ms) // DAY_MS
    hours = collections.Counter()
    for n in range(1500):
        for dep, _, _ in model._plan_day(n, day):
            hours[int(((dep + model.utc_offset_ms) % DAY_MS) // 3_600_000)] += 1
    night = sum(hours[h] for h in (2, 3))
    assert hours[7] + hours[8] > 10 * max(night, 1)
    assert hours[17] + hours[18] > 10 * max(night, 1)


def test_rush_hours_carry_more_frames_than_the_night() -> None:
    def frames_in_hour(start: str) -> int:
        sim = FleetSimulator(SimConfig(vehicles=60, duration_s=3600, seed=9, start=start,
                                       fault_rates=parse_fault_rates("none")))
        return sum(1 for _ in sim.frames())

    night = frames_in_hour("2024-05-14T02:30:00+01:00")
    morning = frames_in_hour("2024-05-14T07:30:00+01:00")
    evening = frames_in_hour("2024-05-14T17:15:00+01:00")
    assert morning > 3 * night
    assert evening > 3 * night


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        SimConfig(vehicles=0)
    with pytest.raises(ValueError):
        SimConfig(ev_share=1.5)
    with pytest.raises(ValueError):
        SimConfig(frame_seconds=2.5)
    with pytest.raises(ValueError, match="unknown fault"):
        parse_fault_rates("spikes=0.1")
    assert parse_fault_rates("none,spike=0.01")["spike"] == 0.01
    assert parse_fault_rates("none,spike=0.01")["nan"] == 0.0
