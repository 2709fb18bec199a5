"""Catalog signals sampled from the fleet model, each at its own catalog interval.

Every signal is a function of the per-second `Trace`, evaluated on a grid of
(active vehicles x samples in the window) at once. A signal is reported only while its
vehicle is awake in a state it belongs to: driving (ignition on) for most, charging for
battery and charging signals of EVs, reported once a minute as a parked car's
telematics unit does (GPS included). Powertrain applicability comes from the VSS
branch: `TractionBattery` and `ElectricMotor` are EV only, `CombustionEngine` and
`FuelSystem` combustion only. A catalog signal this module has no model for is sent as
a steady per-vehicle value inside its range, so a new catalog entry never breaks the
simulator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.core.catalog import Catalog, Signal
from pipeline.tools.sim.city import RoadNetwork
from pipeline.tools.sim.vehicles import CHARGING, DRIVING, Trace, Vehicles

F64 = npt.NDArray[np.float64]

RPM_PER_KMH = np.array([0.0, 125.0, 70.0, 48.0, 36.0, 29.0, 24.0])
GEAR_UP_KMH = np.array([18.0, 32.0, 50.0, 70.0, 95.0])
MOTOR_RPM_PER_MS = 9.3 * 60.0 / (2 * math.pi * 0.31)
KWH_PER_KM = 0.165
L_PER_KM = 0.068


@dataclass(slots=True)
class SampleGrid:
    """Where to evaluate a signal: active vehicles x sample offsets within the window."""

    trace: Trace
    vehicles: Vehicles
    network: RoadNetwork
    rows: npt.NDArray[np.intp]  # active vehicle indexes
    offsets_ms: npt.NDArray[np.int64]  # (K,) sample offsets from the vehicle's window start
    rng: np.random.Generator
    origin_ms: int = 0  # window start relative to the run start (for run-wide grids)

    @property
    def col(self) -> npt.NDArray[np.intp]:
        return (self.offsets_ms // 1000).astype(np.intp)

    @property
    def frac(self) -> F64:
        return (self.offsets_ms % 1000) / 1000.0

    def at(self, name: str, shift: int = 0) -> F64:
        """A traced field at the second each sample falls in (shift=1: the second after)."""
        return self.trace.fields[name][(self.col + shift)[None, :], self.rows[:, None]]

    def during(self, name: str) -> F64:
        """A per-step field (acceleration, power) for the second each sample falls in."""
        return self.at(name, 1)

    def lerp(self, name: str) -> F64:
        """A traced field linearly interpolated to the sample time."""
        arr = self.trace.fields[name]
        c = self.col
        lo = arr[c[None, :], self.rows[:, None]]
        hi = arr[(c + 1)[None, :], self.rows[:, None]]
        return lo + (hi - lo) * self.frac[None, :]

    def mode(self) -> npt.NDArray[np.int8]:
        return self.trace.mode[self.col[None, :], self.rows[:, None]]

    def attr(self, name: str) -> F64:
        """A fixed vehicle attribute as a column, broadcasting over samples."""
        return np.asarray(getattr(self.vehicles, name))[self.rows][:, None]

    def scalar(self, values: F64) -> F64:
        """A per-second scalar series (ambient, hour) at each sample, as a row."""
        return values[self.col][None, :]

    def noise(self, sd: float | F64) -> F64:
        return self.rng.normal(0.0, 1.0, (self.rows.size, self.offsets_ms.size)) * sd


Fn = Callable[[SampleGrid], F64]


@dataclass(frozen=True, slots=True)
class SignalModel:
    """How one catalog signal is produced: value function, when it is sent, precision."""

    fn: Fn
    powertrain: str = "all"  # all | ev | ice
    driving: bool = True
    charging: bool = False
    charging_every_ms: int = 60_000  # while charging, report on this grid (telematics at rest)
    decimals: int | None = 2


# --- value functions ------------------------------------------------------------------------


def _speed_kmh(g: SampleGrid) -> F64:
    v = g.lerp("speed") * 3.6
    return np.maximum(v + np.where(v > 0.5, g.noise(0.15), 0.0), 0.0)


def _accel_long(g: SampleGrid) -> F64:
    a_next = g.during("accel")
    a_prev = g.at("accel")
    ramp = np.maximum(0.0, 1.0 - g.frac / 0.3)[None, :]
    v = g.lerp("speed")
    return a_next + (a_prev - a_next) * ramp + g.noise(0.04 + 0.006 * v)


def _yaw_rad(g: SampleGrid) -> F64:
    return np.radians(g.during("yaw"))


def _accel_lat(g: SampleGrid) -> F64:
    v = g.lerp("speed")
    return v * _yaw_rad(g) + g.noise(0.05 + 0.005 * v)


def _accel_vert(g: SampleGrid) -> F64:
    return g.noise(0.08 + 0.012 * g.lerp("speed"))


def _steering(g: SampleGrid) -> F64:
    v = np.maximum(g.lerp("speed"), 1.0)
    return 15.0 * np.degrees(np.arctan(2.7 * _yaw_rad(g) / v)) + g.noise(1.0)


def _accel_pedal(g: SampleGrid) -> F64:
    rated = np.where(g.attr("is_ev"), 80_000.0, 60_000.0)
    p = g.during("p_trac")
    return np.clip(100.0 * p / rated + np.where(p > 0, 6.0, 0.0), 0.0, 100.0)


def _brake_pedal(g: SampleGrid) -> F64:
    a = g.during("accel")
    return np.clip((-a - 0.4) / 7.0 * 100.0, 0.0, 100.0)


def _gear(g: SampleGrid) -> F64:
    kmh = g.lerp("speed") * 3.6
    gear = 1.0 + np.searchsorted(GEAR_UP_KMH, kmh.ravel()).reshape(kmh.shape)
    manual_idle = ~g.attr("automatic").astype(bool) & (kmh < 0.5)
    gear = np.where(manual_idle, 0.0, gear)
    return np.where(g.attr("is_ev").astype(bool), 1.0, gear)


def _selected_gear(g: SampleGrid) -> F64:
    parked = (g.lerp("speed") < 0.1) & (g.at("ign_age") < 20.0)
    auto = g.attr("automatic").astype(bool)
    return np.where(auto, np.where(parked, 126.0, 127.0), _gear(g))


def _low_beam(g: SampleGrid) -> F64:
    hour = g.scalar(g.trace.hour)
    dark = (hour >= 19.4) | (hour < 7.1)
    return (dark | g.attr("lights_always").astype(bool)).astype(np.float64)


def _tyre(wheel: int) -> Fn:
    def fn(g: SampleGrid) -> F64:
        return g.at(f"tp{wheel}") + g.noise(0.3)
    return fn


def _air_temp(g: SampleGrid) -> F64:
    return g.scalar(g.trace.ambient) + g.attr("temp_bias") + g.noise(0.08)


def _humidity(g: SampleGrid) -> F64:
    return np.clip(g.scalar(g.trace.humidity) + g.noise(0.8), 0.0, 100.0)


def _lv_voltage(g: SampleGrid) -> F64:
    age = g.at("ign_age")
    mode = g.mode()
    ev = g.attr("is_ev").astype(bool)
    weak = g.attr("weak_12v").astype(bool)
    running = np.where(ev, 14.0, 14.3)
    crank = ~ev & (age < 1.5)
    volts = np.where(mode == CHARGING, 13.8, running)
    volts = np.where(crank & (mode == DRIVING), 10.9, volts)
    volts = np.where(weak & (mode == DRIVING) & (age >= 1.5) & (age < 40.0), 11.5 + 0.01 * age, volts)
    return volts + g.noise(0.03)


def _pack_voltage(g: SampleGrid) -> F64:
    nominal = g.attr("pack_v")
    ocv = nominal * (0.88 + 0.14 * g.at("soc") / 100.0)
    current = g.during("p_batt") / np.maximum(ocv, 1.0)
    return ocv + current * 0.06 * nominal / 355.0 + g.noise(0.2)


def _pack_current(g: SampleGrid) -> F64:
    ocv = g.attr("pack_v") * (0.88 + 0.14 * g.at("soc") / 100.0)
    return g.during("p_batt") / np.maximum(ocv, 1.0) + g.noise(0.1)


def _is_charging(g: SampleGrid) -> F64:
    return (g.mode() == CHARGING).astype(np.float64)


def _charge_rate(g: SampleGrid) -> F64:
    return g.during("charge_kw") / KWH_PER_KM


def _dc(g: SampleGrid) -> npt.NDArray[np.bool_]:
    return g.trace.charger_dc[g.col[None, :], g.rows[:, None]] & (g.mode() == CHARGING)


def _charge_current_dc(g: SampleGrid) -> F64:
    ocv = g.attr("pack_v") * (0.88 + 0.14 * g.at("soc") / 100.0)
    return np.where(_dc(g), g.during("p_batt") / np.maximum(ocv, 1.0), 0.0)


def _charge_voltage_dc(g: SampleGrid) -> F64:
    ocv = g.attr("pack_v") * (0.88 + 0.14 * g.at("soc") / 100.0)
    return np.where(_dc(g), ocv + 4.0, 0.0)


def _time_to_complete(g: SampleGrid) -> F64:
    missing = np.maximum(g.at("charge_target") - g.at("soc"), 0.0) / 100.0 * g.attr("battery_kwh")
    return np.clip(missing / np.maximum(g.during("charge_kw"), 0.5) * 3600.0, 0.0, 259_200.0)


def _range_m(g: SampleGrid) -> F64:
    ev_km = g.at("soc") / 100.0 * g.attr("battery_kwh") * g.attr("soh") / 100.0 / KWH_PER_KM
    ice_km = g.at("fuel") / 100.0 * g.attr("tank_l") / L_PER_KM
    return np.where(g.attr("is_ev").astype(bool), ev_km, ice_km) * 1000.0


def _engine_rpm(g: SampleGrid) -> F64:
    kmh = g.lerp("speed") * 3.6
    gear = np.maximum(_gear(g), 1.0).astype(np.intp)
    return np.maximum(800.0, kmh * RPM_PER_KMH[gear]) + g.noise(12.0)


def _lat_lon(g: SampleGrid) -> tuple[F64, F64]:
    x = g.at("x") + g.noise(2.0)
    y = g.at("y") + g.noise(2.0)
    return g.network.to_latlon(x, y)


def _constant(sig: Signal) -> Fn:
    def fn(g: SampleGrid) -> F64:
        frac = 0.3 + 0.2 * ((np.asarray(g.rows, dtype=np.float64) * 0.618) % 1.0)
        value = sig.min + (sig.max - sig.min) * frac if sig.datatype != "boolean" else 0.0 * frac
        return np.broadcast_to(np.asarray(value, dtype=np.float64)[:, None],
                               (g.rows.size, g.offsets_ms.size)).copy()
    return fn


_B = "Vehicle.Powertrain.TractionBattery."
MODELS: dict[str, SignalModel] = {
    "Vehicle.Speed": SignalModel(_speed_kmh, decimals=1),
    "Vehicle.IsMoving": SignalModel(lambda g: (g.lerp("speed") > 0.2).astype(np.float64)),
    "Vehicle.TraveledDistance": SignalModel(lambda g: g.at("odo")),
    "Vehicle.Acceleration.Longitudinal": SignalModel(_accel_long),
    "Vehicle.Acceleration.Lateral": SignalModel(_accel_lat),
    "Vehicle.Acceleration.Vertical": SignalModel(_accel_vert),
    "Vehicle.AngularVelocity.Yaw": SignalModel(lambda g: g.during("yaw") + g.noise(0.3), decimals=1),
    "Vehicle.Chassis.SteeringWheel.Angle": SignalModel(_steering),
    "Vehicle.Chassis.Accelerator.PedalPosition": SignalModel(_accel_pedal),
    "Vehicle.Chassis.Brake.PedalPosition": SignalModel(_brake_pedal),
    "Vehicle.Powertrain.Transmission.CurrentGear": SignalModel(_gear),
    "Vehicle.Powertrain.Transmission.SelectedGear": SignalModel(_selected_gear),
    "Vehicle.Body.Lights.Beam.Low.IsOn": SignalModel(_low_beam),
    "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure": SignalModel(_tyre(0)),
    "Vehicle.Chassis.Axle.Row1.Wheel.Right.Tire.Pressure": SignalModel(_tyre(1)),
    "Vehicle.Chassis.Axle.Row2.Wheel.Left.Tire.Pressure": SignalModel(_tyre(2)),
    "Vehicle.Chassis.Axle.Row2.Wheel.Right.Tire.Pressure": SignalModel(_tyre(3)),
    "Vehicle.Exterior.AirTemperature": SignalModel(_air_temp, charging=True, decimals=1),
    "Vehicle.Exterior.Humidity": SignalModel(_humidity, decimals=1),
    "Vehicle.Cabin.HVAC.AmbientAirTemperature": SignalModel(
        lambda g: g.at("cabin_temp") + g.noise(0.1), decimals=1),
    "Vehicle.LowVoltageBattery.CurrentVoltage": SignalModel(_lv_voltage, charging=True),
    "Vehicle.OBD.Status.DTCCount": SignalModel(lambda g: g.at("dtc")),
    _B + "StateOfCharge.Current": SignalModel(lambda g: g.at("soc"), "ev", charging=True),
    _B + "StateOfCharge.Displayed": SignalModel(
        lambda g: np.clip((g.at("soc") - 3.0) / 0.95, 0.0, 100.0), "ev", charging=True, decimals=0),
    _B + "StateOfHealth": SignalModel(lambda g: g.attr("soh") + 0.0 * g.at("soc"), "ev", charging=True,
                                      decimals=1),
    _B + "Temperature.Average": SignalModel(lambda g: g.at("batt_temp") + g.noise(0.05), "ev",
                                            charging=True, decimals=1),
    _B + "CurrentVoltage": SignalModel(_pack_voltage, "ev", charging=True, decimals=1),
    _B + "CurrentCurrent": SignalModel(_pack_current, "ev", charging=True, decimals=1),
    _B + "CurrentPower": SignalModel(lambda g: g.during("p_batt"), "ev", charging=True, decimals=0),
    _B + "Charging.IsCharging": SignalModel(_is_charging, "ev", charging=True),
    _B + "Charging.ChargeRate": SignalModel(_charge_rate, "ev", driving=False, charging=True, decimals=1),
    _B + "Charging.ChargeCurrent.DC": SignalModel(_charge_current_dc, "ev", driving=False, charging=True,
                                                  decimals=1),
    _B + "Charging.ChargeVoltage.DC": SignalModel(_charge_voltage_dc, "ev", driving=False, charging=True,
                                                  decimals=1),
    _B + "Charging.TimeToComplete": SignalModel(_time_to_complete, "ev", driving=False, charging=True),
    "Vehicle.Powertrain.Range": SignalModel(_range_m, charging=True),
    "Vehicle.Powertrain.ElectricMotor.Speed": SignalModel(
        lambda g: g.lerp("speed") * MOTOR_RPM_PER_MS, "ev"),
    "Vehicle.Powertrain.CombustionEngine.Speed": SignalModel(_engine_rpm, "ice"),
    "Vehicle.Powertrain.CombustionEngine.IsRunning": SignalModel(
        lambda g: (g.mode() == DRIVING).astype(np.float64), "ice"),
    "Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature": SignalModel(
        lambda g: g.at("coolant") + g.noise(0.1), "ice", decimals=1),
    "Vehicle.Powertrain.CombustionEngine.EngineOil.Temperature": SignalModel(
        lambda g: g.at("oil") + g.noise(0.1), "ice", decimals=1),
    "Vehicle.Powertrain.FuelSystem.RelativeLevel": SignalModel(lambda g: g.at("fuel"), "ice"),
    "Vehicle.CurrentLocation.Latitude": SignalModel(lambda g: _lat_lon(g)[0], charging=True,
                                                    decimals=6),
    "Vehicle.CurrentLocation.Longitude": SignalModel(lambda g: _lat_lon(g)[1], charging=True,
                                                     decimals=6),
    "Vehicle.CurrentLocation.Altitude": SignalModel(
        lambda g: g.network.altitude(g.at("x"), g.at("y")) + g.noise(1.5), charging=True, decimals=1),
    "Vehicle.CurrentLocation.Heading": SignalModel(
        lambda g: (g.at("heading") + g.noise(0.5)) % 360.0, charging=True, decimals=1),
    "Vehicle.CurrentLocation.HorizontalAccuracy": SignalModel(
        lambda g: 2.5 + np.abs(g.noise(1.6)), charging=True, decimals=1),
}

LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"


def powertrain_of(name: str) -> str:
    """`ev`, `ice` or `all` from the VSS branch of a signal name."""
    if ".TractionBattery." in name or ".ElectricMotor." in name:
        return "ev"
    if ".CombustionEngine." in name or ".FuelSystem." in name:
        return "ice"
    return "all"


def model_for(sig: Signal) -> SignalModel:
    """The model of a catalog signal (a steady in-range value if none is defined)."""
    model = MODELS.get(sig.name)
    if model is not None:
        return model
    return SignalModel(_constant(sig), powertrain_of(sig.name), decimals=None if sig.is_integral else 2)


@dataclass(slots=True)
class SignalPlan:
    """A catalog signal ready to sample: entry, model, and its window grid."""

    index: int  # catalog index
    signal: Signal
    model: SignalModel
    offsets_ms: npt.NDArray[np.int64]
    slot_of_col: npt.NDArray[np.intp]


def plan_signals(catalog: Catalog, window_ms: int, frame_ms: int) -> list[SignalPlan]:
    """One plan per catalog signal for a window of `window_ms` split into frames of `frame_ms`."""
    plans = []
    for i, sig in enumerate(catalog.signals):
        offsets = np.arange(0, window_ms, sig.interval_ms, dtype=np.int64)
        plans.append(SignalPlan(i, sig, model_for(sig), offsets, (offsets // frame_ms).astype(np.intp)))
    return plans


def sample(plan: SignalPlan, grid: SampleGrid) -> tuple[F64, npt.NDArray[np.bool_]]:
    """(values, sent) on the grid: values rounded to the signal's precision, and which are sent."""
    model, sig = plan.model, plan.signal
    values = np.asarray(model.fn(grid), dtype=np.float64)
    decimals = 0 if sig.is_integral else model.decimals
    if decimals is not None:
        values = np.round(values, decimals)
    if sig.is_integral:
        values = np.clip(values, sig.min, sig.max)
    mode = grid.mode()
    sent = np.zeros(values.shape, dtype=bool)
    if model.driving:
        sent |= mode == DRIVING
    if model.charging:
        charging = mode == CHARGING
        if model.charging_every_ms:
            on_grid = (grid.origin_ms + grid.offsets_ms) % model.charging_every_ms == 0
            charging &= on_grid[None, :]
        sent |= charging
    if model.powertrain != "all":
        is_ev = grid.attr("is_ev").astype(bool)
        sent &= is_ev if model.powertrain == "ev" else ~is_ev
    return values, sent
