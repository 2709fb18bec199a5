"""battery_alerts (edge-triggered with hysteresis) and dtc (appeared / cleared)."""

from __future__ import annotations

import numpy as np

from pipeline.core.handlers import HandlerHarness

SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
V12 = "Vehicle.LowVoltageBattery.CurrentVoltage"
DTC = "Vehicle.OBD.Status.DTCCount"
S = 1000


def test_low_soc_alerts_once_per_episode_with_rearm(shipped) -> None:
    soc = [30, 19, 18, 21, 19, 26, 19, 18]
    t = np.arange(len(soc)) * S
    h = HandlerHarness(shipped("battery_alerts"))
    out = h.run({"V1": {SOC: (t, soc), V12: (t, np.full(len(soc), 12.6))}})
    ev = out.events_of("fleet.battery.low_soc")
    assert [(e["time"], e["soc_pct"]) for e in ev] == [(1000, 19.0), (6000, 19.0)]
    # still low in the next batch: no repeat
    again = h.run({"V1": {SOC: (t + 10 * S, np.full(8, 17.0)), V12: (t + 10 * S, np.full(8, 12.6))}})
    assert again.events_of() == []
    # recovered above the re-arm level, then low again: a new alert
    t3 = t + 20 * S
    third = h.run({"V1": {SOC: (t3, [30, 30, 10, 10, 10, 10, 10, 10]), V12: (t3, np.full(8, 12.6))}})
    h.close()
    assert [e["time"] for e in third.events_of("fleet.battery.low_soc")] == [22000]


def test_low_12v_needs_to_last(shipped) -> None:
    t = np.arange(40) * S
    v = np.full(40, 12.5)
    v[2:7] = 11.0  # 5 s: an engine crank
    v[15:35] = 11.5  # 20 s: alert once 10 s in
    h = HandlerHarness(shipped("battery_alerts"))
    out = h.run({"V1": {V12: (t, v), SOC: (t, np.full(40, 80.0))}})
    h.close()
    assert [(e["time"], e["voltage_v"]) for e in out.events_of("fleet.battery.low_12v")] == [(25000, 11.5)]


def test_low_12v_duration_counts_across_batches(shipped) -> None:
    h = HandlerHarness(shipped("battery_alerts"))
    t = np.arange(6) * S
    assert h.run({"V1": {V12: (t, np.full(6, 11.0))}}).events_of() == []
    out = h.run({"V1": {V12: (t + 6 * S, np.full(6, 11.0))}})
    h.close()
    assert [e["time"] for e in out.events_of("fleet.battery.low_12v")] == [10000]


def test_dtc_appeared_and_cleared(shipped) -> None:
    t = np.arange(6) * 10 * S
    h = HandlerHarness(shipped("dtc"))
    out = h.run({"V1": {DTC: (t, [0, 0, 2, 2, 1, 0])}})
    rows = [(e["type"].rsplit(".", 1)[1], e["time"], e["dtc_count"], e["previous_count"]) for e in out.events_of()]
    assert sorted(rows, key=lambda r: r[1]) == [("appeared", 20000, 2, 0), ("cleared", 40000, 1, 2),
                                                ("cleared", 50000, 0, 1)]
    nxt = h.run({"V1": {DTC: (t + 60 * S, [0, 0, 0, 3, 3, 3])}})
    assert [(e["dtc_count"], e["previous_count"]) for e in nxt.events_of("fleet.dtc.appeared")] == [(3, 0)]
    last = h.run({"V1": {DTC: (t + 120 * S, [1, 1, 1, 1, 1, 1])}})
    h.close()
    assert [(e["time"], e["dtc_count"], e["previous_count"]) for e in last.events_of()] == [(120000, 1, 3)]


def test_episodes_are_per_vehicle_among_vehicles_that_are_never_low(shipped) -> None:
    t = np.arange(6) * S
    ok_v12 = (t, np.full(6, 12.6))
    h = HandlerHarness(shipped("battery_alerts"))
    first = h.run({"A": {SOC: (t, [30, 19, 18, 18, 18, 18]), V12: ok_v12},
                   "B": {SOC: (t, np.full(6, 60.0)), V12: ok_v12},
                   "C": {SOC: (t, np.full(6, 22.0)), V12: ok_v12}})
    assert [(e["vin"], e["time"]) for e in first.events_of("fleet.battery.low_soc")] == [("A", 1000)]
    t2 = t + 6 * S
    # A stays low without a reading below 20 (in the hysteresis band), C drops, B stays fine
    second = h.run({"A": {SOC: (t2, np.full(6, 22.0)), V12: (t2, np.full(6, 12.6))},
                    "B": {SOC: (t2, np.full(6, 60.0)), V12: (t2, np.full(6, 12.6))},
                    "C": {SOC: (t2, [22, 22, 19, 19, 30, 19]), V12: (t2, np.full(6, 12.6))}})
    assert [(e["vin"], e["time"]) for e in second.events_of("fleet.battery.low_soc")] == [("C", 8000), ("C", 11000)]
    t3 = t + 12 * S
    third = h.run({"A": {SOC: (t3, [19, 26, 26, 19, 19, 19]), V12: (t3, np.full(6, 12.6))}})
    h.close()
    assert [(e["vin"], e["time"]) for e in third.events_of("fleet.battery.low_soc")] == [("A", 15000)]
