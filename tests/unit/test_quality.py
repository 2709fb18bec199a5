"""Cleaning quality against ground truth: a small simulated fleet meets the recall targets."""

from __future__ import annotations

import pytest

from pipeline.tools.quality import (
    MAX_WRONGLY_DROPPED,
    QUALITY_RATES,
    RECALL_TARGETS,
    REPAIR_TARGETS,
    simulated_quality,
    twizy_quality,
)
from pipeline.tools.sim.faults import parse_fault_rates

# The quality run's fault rates on a smaller, faster fleet: enough of every targeted fault
# for its target to mean something.
ENOUGH = {"spike": 300, "gps_jump": 100, "teleport": 60, "null_island": 60, "duplicate": 300,
          "out_of_range": 300, "nan": 300, "wrong_unit": 300, "unknown_unit": 300, "unknown_signal": 200,
          "clock_skew": 3000}


@pytest.fixture(scope="module")
def report():  # type: ignore[no-untyped-def]
    return simulated_quality(vehicles=150, duration_s=600, seed=11, fault_rates=parse_fault_rates(QUALITY_RATES))


def test_recall_targets_met(report) -> None:  # type: ignore[no-untyped-def]
    for fault, target in RECALL_TARGETS.items():
        score = report.faults[fault]
        assert score.readings >= ENOUGH[fault], f"{fault}: only {score.readings} faulty readings"
        assert score.recall >= target, f"{fault}: recall {score.recall:.4f} (outcomes {score.outcomes})"


def test_clock_skews_are_repaired(report) -> None:  # type: ignore[no-untyped-def]
    for fault, target in REPAIR_TARGETS.items():
        score = report.faults[fault]
        assert score.repaired_share >= target, (fault, score.outcomes)
    # offsets under the bound are left alone, not dropped
    small = report.faults["clock_skew_small"]
    assert small.readings > 0 and small.outcomes.get("dropped.clock_skew", 0) < 0.01 * small.readings


def test_stuck_checks_per_signal_class(report) -> None:  # type: ignore[no-untyped-def]
    classes = report.faults["stuck"].class_scores()
    inertial = classes["inertial"]  # on their own noise
    assert inertial["readings"] >= 500 and inertial["recall"] >= 0.95 and inertial["precision"] >= 0.95, inertial
    energy = classes["energy"]  # against battery power and the battery's own state of charge
    assert energy["readings"] >= 10 and energy["recall"] >= 0.8 and energy["precision"] >= 0.95, energy
    # the speed check stays precise (it misses stuck speeds at a steady cruise: see README)
    assert classes["speed"]["precision"] >= 0.9, classes["speed"]
    as_json = report.as_dict()["faults"]["stuck"]["by_class"]
    assert set(as_json) == {"inertial", "speed", "energy", "temperature"}


def test_clean_readings_rarely_dropped(report) -> None:  # type: ignore[no-untyped-def]
    assert report.clean_readings > 200_000
    assert report.wrongly_dropped_rate <= MAX_WRONGLY_DROPPED, report.wrongly_dropped_by


def test_precision_of_the_reasons(report) -> None:  # type: ignore[no-untyped-def]
    # a reading dropped for a reason mostly had the fault that reason answers
    for fault in ("spike", "nan", "gps_jump", "null_island", "duplicate", "wrong_unit", "clock_skew"):
        assert report.faults[fault].precision >= 0.9, (fault, report.faults[fault].precision)


def test_late_frames_are_kept_and_marked(report) -> None:  # type: ignore[no-untyped-def]
    # (a reordered frame whose successor carries a small clock skew, left alone, is not
    # behind it in time: the quality run's 5 % skewed frames cost about a tenth here)
    for fault in ("late", "out_of_order"):
        kept, marked = report.late_frames[fault]
        assert kept > 100 and marked >= 0.85 * kept, (fault, kept, marked)


def test_real_trip_keeps_its_readings() -> None:
    trip = next(t for t in twizy_quality() if t.file == "T1_03_29_2021")
    assert trip.readings > 50_000
    # speed and SoC are held and step on this logger; nothing of them may be lost
    assert not {"Vehicle.Speed", "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
                "Vehicle.Exterior.Humidity", "Vehicle.Exterior.AirTemperature"} & set(trip.by_signal)
    assert trip.counts.get("dropped", 0) <= 0.001 * trip.readings
