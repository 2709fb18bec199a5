"""Stuck sensors judged against a signal that must agree with them (rationality checks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.clean import (
    Cleaner,
    CleanResult,
    load_cleaning_config,
    parse_cleaning_config,
)
from pipeline.core.clean.config import StuckRule
from pipeline.core.errors import ConfigError
from tests.oracles.clean import ReferenceCleaner
from tests.unit.test_clean_support import ACCEL, SOC, SPEED, frame, readings_of, seconds

VIN = "VF1AAAAA000000001"
POWER = "Vehicle.Powertrain.TractionBattery.CurrentPower"


@pytest.fixture(scope="module")
def catalog():  # type: ignore[no-untyped-def]
    return load_catalog()


def shipped(catalog) -> tuple[Cleaner, ReferenceCleaner]:  # type: ignore[no-untyped-def]
    config = load_cleaning_config()
    return Cleaner(catalog, config), ReferenceCleaner(catalog, config)


def of_signal(result: CleanResult, batch: list[dict], signal: str) -> list[str]:
    """Outcomes of one signal's readings, in input order."""
    names = [name for fr in batch for name, sample in fr["samples"].items() for _ in sample[0]]
    return [result.reasons[c] for c, name in zip(result.outcome, names, strict=True) if name == signal]


def accel_noise(n: int, level: float = 0.0) -> list[float]:
    """Accelerometer readings around `level` with a little noise (never an exact repeat)."""
    return [level + (0.013 * ((7 * k) % 11) - 0.065) for k in range(n)]


def test_speed_held_while_the_car_accelerates_is_stuck(catalog) -> None:  # type: ignore[no-untyped-def]
    # speed frozen at 40.0 km/h for 4 s while the car accelerates at 1.2 m/s^2 (17 km/h)
    speed = [38.5, 39.3, 40.0] + [40.0] * 7
    batch = [frame(VIN, 1, seconds(0, 1)[0] + 5_100, {SPEED: (seconds(0, 10, 0.5), speed),
                                                       ACCEL: (seconds(0, 50, 0.1), accel_noise(50, 1.2))})]
    cleaner, reference = shipped(catalog)
    result = cleaner.clean(readings_of(batch))
    # the run's first reading (the last true value) is kept, every repeat dropped
    assert of_signal(result, batch, SPEED) == ["kept"] * 3 + ["dropped.stuck"] * 7
    assert reference.clean(readings_of(batch)).outcome == result.outcome.tolist()


def test_speed_held_at_a_steady_cruise_or_parked_passes(catalog) -> None:  # type: ignore[no-untyped-def]
    # a logger repeating the last speed while the car cruises (acceleration around 0), and
    # a parked car (speed 0 while the accelerometer shows a little pull, as on a slope)
    cruise = [frame(VIN, 1, seconds(0, 1)[0] + 10_100, {SPEED: (seconds(0, 20, 0.5), [50.0] * 20),
                                                         ACCEL: (seconds(0, 100, 0.1), accel_noise(100))})]
    parked = [frame(VIN, 2, seconds(20, 1)[0] + 10_100, {SPEED: (seconds(20, 20, 0.5), [0.0] * 20),
                                                          ACCEL: (seconds(20, 100, 0.1), accel_noise(100, 0.5))})]
    cleaner, reference = shipped(catalog)
    for batch in (cruise, parked):
        result = cleaner.clean(readings_of(batch))
        assert set(of_signal(result, batch, SPEED)) == {"kept"}
        assert reference.clean(readings_of(batch)).outcome == result.outcome.tolist()


def test_soc_held_while_energy_flows_one_way_is_stuck(catalog) -> None:  # type: ignore[no-untyped-def]
    # SoC frozen for 10 s while the pack delivers 20 kW (200 kJ): stuck; the same hold while
    # the car drives and regenerates in turn (net energy about 0): a real hold
    t = seconds(0, 10)
    delivering = [frame(VIN, 1, t[-1] + 100, {SOC: (t, [61.5] * 10), POWER: (t, [20_000.0] * 10)})]
    regen = [frame(VIN, 2, seconds(20, 10)[-1] + 100,
                   {SOC: (seconds(20, 10), [55.0] * 10), POWER: (seconds(20, 10), [20_000.0, -20_000.0] * 5)})]
    cleaner, reference = shipped(catalog)
    result = cleaner.clean(readings_of(delivering))
    assert of_signal(result, delivering, SOC) == ["kept"] + ["dropped.stuck"] * 9
    assert reference.clean(readings_of(delivering)).outcome == result.outcome.tolist()
    other, other_reference = shipped(catalog)
    result = other.clean(readings_of(regen))
    assert set(of_signal(result, regen, SOC)) == {"kept"}
    assert other_reference.clean(readings_of(regen)).outcome == result.outcome.tolist()


def test_a_cross_checked_run_continues_across_batches(catalog) -> None:  # type: ignore[no-untyped-def]
    # SoC held at 20 kW across two batches, neither holding 60 kJ on its own: 40 kJ over the
    # first batch's 3 readings, then the run goes on and crosses 60 kJ in the second
    first = [frame(VIN, 1, seconds(0, 3)[-1] + 100, {SOC: (seconds(0, 3), [70.0] * 3),
                                                      POWER: (seconds(0, 3), [20_000.0] * 3)})]
    second = [frame(VIN, 2, seconds(3, 3)[-1] + 100, {SOC: (seconds(3, 3), [70.0] * 3),
                                                       POWER: (seconds(3, 3), [20_000.0] * 3)})]
    cleaner, reference = shipped(catalog)
    a = cleaner.clean(readings_of(first))
    assert set(of_signal(a, first, SOC)) == {"kept"}  # 40 kJ so far: not yet
    b = cleaner.clean(readings_of(second))
    assert of_signal(b, second, SOC) == ["dropped.stuck"] * 3  # the run goes on: 80 kJ and more
    for batch, result in ((first, a), (second, b)):
        assert reference.clean(readings_of(batch)).outcome == result.outcome.tolist()


def test_rule_without_a_reference_threshold_is_rejected(tmp_path: Path, catalog) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as err:
        parse_cleaning_config("stuck:\n  Vehicle.Speed:\n    against: Vehicle.Acceleration.Longitudinal\n",
                              file="c.yaml")
    assert "min_reference" in str(err.value) and err.value.line == 2
    path = tmp_path / "cleaning.yaml"
    path.write_text("stuck:\n  Vehicle.Speed: {against: Vehicle.Accel, min_reference: 1}\n")
    with pytest.raises(ConfigError) as unknown:
        Cleaner(catalog, load_cleaning_config(path))
    assert unknown.value.rule == "key stuck.Vehicle.Speed.against" and "not in the catalog" in str(unknown.value)


def test_plain_rule_keeps_working_without_a_reference(catalog) -> None:  # type: ignore[no-untyped-def]
    config = load_cleaning_config().model_copy(update={"stuck": {ACCEL: StuckRule(min_duration_ms=500,
                                                                                   min_count=5)}})
    t = seconds(0, 8, 0.1)
    batch = [frame(VIN, 1, t[-1] + 100, {ACCEL: (t, [0.31, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.4])})]
    result = Cleaner(catalog, config).clean(readings_of(batch))
    assert of_signal(result, batch, ACCEL) == ["kept", "kept"] + ["dropped.stuck"] * 5 + ["kept"]


MOTOR = "Vehicle.Powertrain.ElectricMotor.Speed"
COOLANT = "Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature"
OIL = "Vehicle.Powertrain.CombustionEngine.EngineOil.Temperature"


def test_speed_frozen_at_zero_while_the_motor_turns_is_stuck_from_there(catalog) -> None:  # type: ignore[no-untyped-def]
    # parked 5 s (speed and motor at 0), then the car pulls away: the motor reaches 2000 rpm
    # while the speed sensor still reads 0. The parked readings agreed with the motor and
    # stay; the held zeros from where the motor turned are stuck (the second check, `also`:
    # 0 is a resting value for the acceleration check)
    t = seconds(0, 20, 0.5)
    motor = [0.0] * 10 + [200.0 * k for k in range(1, 11)]
    batch = [frame(VIN, 1, t[-1] + 100, {SPEED: (t, [0.0] * 20), MOTOR: (t, motor)})]
    cleaner, reference = shipped(catalog)
    result = cleaner.clean(readings_of(batch))
    assert of_signal(result, batch, SPEED) == ["kept"] * 10 + ["dropped.stuck"] * 10
    assert reference.clean(readings_of(batch)).outcome == result.outcome.tolist()


def test_speed_reaching_zero_while_the_motor_slows_is_a_real_stop(catalog) -> None:  # type: ignore[no-untyped-def]
    # the motor's last reading before the held zero (300 rpm, 0.3 s before it) predates it:
    # the run is measured from the motor's first reading once it began (0 rpm), not from it
    ts, tm = seconds(0, 12, 0.5), seconds(-0.3, 12, 0.5)
    speed = [15.0, 8.0] + [0.0] * 10
    motor = [1200.0, 600.0, 300.0] + [0.0] * 9
    batch = [frame(VIN, 1, ts[-1] + 100, {SPEED: (ts, speed), MOTOR: (tm, motor)})]
    cleaner, reference = shipped(catalog)
    result = cleaner.clean(readings_of(batch))
    assert set(of_signal(result, batch, SPEED)) == {"kept"}
    assert reference.clean(readings_of(batch)).outcome == result.outcome.tolist()


def test_engine_temperatures_checked_against_each_other_while_warming(catalog) -> None:  # type: ignore[no-untyped-def]
    # coolant frozen at 60.0 while the oil climbs 0.5 °C every 5 s (warm-up): stuck once the
    # oil moved 2 °C; the same coolant hold at 90.0 (thermostat regulated) is a resting value
    t = seconds(0, 12, 5.0)
    oil = [50.0 + 0.5 * k for k in range(12)]
    cold = [frame(VIN, 1, t[-1] + 100, {COOLANT: (t, [60.0] * 12), OIL: (t, oil)})]
    cleaner, reference = shipped(catalog)
    result = cleaner.clean(readings_of(cold))
    outcomes = of_signal(result, cold, COOLANT)
    assert outcomes[0] == "kept" and outcomes[-1] == "dropped.stuck", outcomes
    assert set(of_signal(result, cold, OIL)) == {"kept"}
    assert reference.clean(readings_of(cold)).outcome == result.outcome.tolist()
    warm = [frame(VIN, 1, t[-1] + 100, {COOLANT: (t, [90.0] * 12), OIL: (t, [95.0 + 0.5 * k for k in range(12)])})]
    other, other_reference = shipped(catalog)
    result = other.clean(readings_of(warm))
    assert set(of_signal(result, warm, COOLANT)) == {"kept"}
    assert other_reference.clean(readings_of(warm)).outcome == result.outcome.tolist()


def test_checks_of_one_signal_are_listed_by_layer(catalog) -> None:  # type: ignore[no-untyped-def]
    config = load_cleaning_config()
    checks = [c for c in config.stuck_checks() if c.signal == SPEED]
    assert [(c.key, c.layer, c.rule.against) for c in checks][:2] == [
        (SPEED, 0, ACCEL), (SPEED + "#1", 1, MOTOR)]
    with pytest.raises(ConfigError) as err:
        parse_cleaning_config("stuck:\n  Vehicle.Speed:\n    also: [{also: [{}]}]\n", file="c.yaml")
    assert "cannot have checks of its own" in str(err.value)
    # a cleaner's history has one column per check, named by its key
    assert [c.key for c in config.stuck_checks()] == Cleaner(catalog, config).state.stuck_signals


def test_cold_oil_held_while_the_engine_runs_is_stuck(catalog) -> None:  # type: ignore[no-untyped-def]
    # oil frozen at 55.0 for 60 s while the engine turns at 2000 rpm (the coolant, regulated
    # at 88, gives no sign): 1500 revolutions without a change are more than the engine's
    # heat allows; the same hold with the engine at idle speed 0 (ignition on, engine off)
    # passes
    t, tr = seconds(0, 13, 5.0), seconds(0, 121, 0.5)
    rpm = "Vehicle.Powertrain.CombustionEngine.Speed"

    def batch(engine: float) -> list[dict]:
        return [frame(VIN, 1, tr[-1] + 100, {OIL: (t, [55.0] * 13), COOLANT: (t, [88.0] * 13),
                                             rpm: (tr, [engine] * 121)})]
    running = batch(2000.0)
    cleaner, reference = shipped(catalog)
    result = cleaner.clean(readings_of(running))
    outcomes = of_signal(result, running, OIL)
    assert outcomes[:2] == ["kept", "kept"] and outcomes[-4:] == ["dropped.stuck"] * 4, outcomes
    assert reference.clean(readings_of(running)).outcome == result.outcome.tolist()
    off = batch(0.0)
    other, other_reference = shipped(catalog)
    result = other.clean(readings_of(off))
    assert set(of_signal(result, off, OIL)) == {"kept"}
    assert other_reference.clean(readings_of(off)).outcome == result.outcome.tolist()


def test_a_signals_checks_judge_the_same_readings(catalog) -> None:  # type: ignore[no-untyped-def]
    # speed frozen at 20.0 for 4.5 s: the motor moves by 40 rpm (a quarter of its 150) at
    # 0.5 s and by 160 at 3 s; the acceleration implies 0.075 m/s (a quarter of 0.3) only
    # at 1.15 s. Every check judges the whole run, so the run is stuck from where the first
    # reference began to move (the motor's, 0.5 s), not from where the acceleration check
    # began dropping (1.5 s), which a later check judging only what it kept would give.
    ts, ta = seconds(0, 10, 0.5), seconds(0, 46, 0.1)
    accel = [n + (0.5 if k >= 10 else 0.0) for k, n in enumerate(accel_noise(46))]
    motor = [1000.0, 1040.0, 1040.0, 1040.0, 1040.0, 1040.0, 1160.0, 1160.0, 1160.0, 1160.0]
    batch = [frame(VIN, 1, ta[-1] + 100, {SPEED: (ts, [20.0] * 10), ACCEL: (ta, accel), MOTOR: (ts, motor)})]
    cleaner, reference = shipped(catalog)
    result = cleaner.clean(readings_of(batch))
    assert of_signal(result, batch, SPEED) == ["kept"] + ["dropped.stuck"] * 9
    assert reference.clean(readings_of(batch)).outcome == result.outcome.tolist()


def test_a_late_reading_does_not_restart_a_held_run(catalog) -> None:  # type: ignore[no-untyped-def]
    # acceleration frozen at 0.5 from 0.0 s: three readings in the first batch, three more in
    # the second, which also brings a late frame with a reading from before the run (-1 s):
    # the run goes on over it (six readings over 0.5 s: stuck), instead of starting again
    t = seconds(0, 6, 0.1)
    first = [frame(VIN, 2, t[2] + 100, {ACCEL: (t[:3], [0.5] * 3)})]
    second = [frame(VIN, 1, seconds(-1, 1)[0] + 100, {ACCEL: (seconds(-1, 1), [0.1])},
                    received_at=t[5] + 200),
              frame(VIN, 3, t[5] + 100, {ACCEL: (t[3:], [0.5] * 3)})]
    cleaner, reference = shipped(catalog)
    for batch, want in ((first, ["kept"] * 3), (second, ["kept"] + ["dropped.stuck"] * 3)):
        result = cleaner.clean(readings_of(batch))
        assert of_signal(result, batch, ACCEL) == want
        assert reference.clean(readings_of(batch)).outcome == result.outcome.tolist()


def test_a_late_reading_of_a_stuck_run_is_stuck(catalog) -> None:  # type: ignore[no-untyped-def]
    # acceleration frozen at 0.5 for 1 s (stuck); a late frame then brings a reading from
    # inside the run (0.55 s) with the frozen value: stuck as well, and the run goes on
    t = seconds(0, 11, 0.1)
    first = [frame(VIN, 1, t[-1] + 100, {ACCEL: (t, [0.5] * 11)})]
    later = seconds(1.1, 2, 0.1)
    second = [frame(VIN, 2, seconds(0.55, 1)[0] + 100, {ACCEL: (seconds(0.55, 1), [0.5])},
                    received_at=later[-1] + 200),
              frame(VIN, 3, later[-1] + 100, {ACCEL: (later, [0.5, 0.7])})]
    cleaner, reference = shipped(catalog)
    for batch, want in ((first, ["kept"] + ["dropped.stuck"] * 10),
                        (second, ["dropped.stuck", "dropped.stuck", "kept"])):
        result = cleaner.clean(readings_of(batch))
        assert of_signal(result, batch, ACCEL) == want
        assert reference.clean(readings_of(batch)).outcome == result.outcome.tolist()


def test_a_late_frame_of_a_stuck_run_that_has_ended_is_stuck(catalog) -> None:  # type: ignore[no-untyped-def]
    # acceleration frozen at 0.5 for 1 s (stuck), then the sensor recovers; minutes later
    # a frame arrives from inside the frozen run (0.55 s, 0.5): stuck as well. The same
    # value from after the run ended (1.25 s) is a real reading and kept.
    t = seconds(0, 11, 0.1)
    first = [frame(VIN, 1, t[-1] + 100, {ACCEL: (t, [0.5] * 11)})]
    later = seconds(1.1, 3, 0.1)
    second = [frame(VIN, 3, later[-1] + 100, {ACCEL: (later, [0.7, 0.61, 0.66])})]
    third = [frame(VIN, 2, seconds(0.55, 1)[0] + 100, {ACCEL: (seconds(0.55, 1), [0.5])},
                   received_at=later[-1] + 300_000),
             frame(VIN, 4, seconds(1.25, 1)[0] + 100, {ACCEL: (seconds(1.25, 1), [0.5])},
                   received_at=later[-1] + 300_000)]
    cleaner, reference = shipped(catalog)
    for batch, want in ((first, ["kept"] + ["dropped.stuck"] * 10), (second, ["kept"] * 3),
                        (third, ["dropped.stuck", "kept"])):
        result = cleaner.clean(readings_of(batch))
        assert of_signal(result, batch, ACCEL) == want
        assert reference.clean(readings_of(batch)).outcome == result.outcome.tolist()


def test_a_late_reference_frame_adds_nothing_to_a_running_integral(catalog) -> None:  # type: ignore[no-untyped-def]
    # SoC held at 70.0 from 0 s while the pack is idle (0 W); the second batch brings, with
    # more of the hold, a late frame of the pack's power from before the run (-30 s: 50 kW
    # for 4 s, 200 kJ): that energy flowed before the hold began and does not count
    t = seconds(0, 8)
    first = [frame(VIN, 2, t[3] + 100, {SOC: (t[:4], [70.0] * 4), POWER: (t[:4], [0.0] * 4)})]
    late = seconds(-30, 5)
    second = [frame(VIN, 1, late[-1] + 100, {POWER: (late, [50_000.0] * 5)}, received_at=t[-1] + 200),
              frame(VIN, 3, t[-1] + 100, {SOC: (t[4:], [70.0] * 4), POWER: (t[4:], [0.0] * 4)})]
    cleaner, reference = shipped(catalog)
    for batch in (first, second):
        result = cleaner.clean(readings_of(batch))
        assert set(of_signal(result, batch, SOC)) == {"kept"}
        assert reference.clean(readings_of(batch)).outcome == result.outcome.tolist()
