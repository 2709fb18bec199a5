"""The fleet model: vehicles that commute, run errands, idle at lights and charge.

State advances in one-second steps, vectorised across all vehicles; a window of steps
is returned as a `Trace` of per-second arrays (vehicles x seconds), from which the
signal layer samples each catalog signal at its own rate. Discrete decisions (starting
a trip, arriving, plugging in) are rare and handled per vehicle; everything per second
is numpy.

What a vehicle does comes from a daily plan drawn from a time-of-day profile: commuters
leave home around 07:45 and work around 17:30 on weekdays, others run errands mostly
late morning and afternoon, a few night workers drive in the small hours. EVs plug in
at home (evening), at work, or divert to a public fast charger when low.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipeline.tools.sim.city import RoadNetwork

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]

PARKED, DRIVING, CHARGING = 0, 1, 2
HOME, WORK, ERRAND, CHARGE = 0, 1, 2, 3
CHARGER_NONE, CHARGER_HOME, CHARGER_WORK, CHARGER_PUBLIC = 0, 1, 2, 3
DAY_MS = 86_400_000
TURN_RADIUS_M = 14.0

_VIN_CHARS = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"
_VIN_VALUES = {**{str(d): d for d in range(10)},
               **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
               **dict(zip("JKLMN", range(1, 6), strict=True)), "P": 7, "R": 9,
               **dict(zip("STUVWXYZ", range(2, 10), strict=True))}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
_EV_WMI = ("VF1", "UU1", "WVW", "LRW", "VF3", "KNA", "WBY", "YV1")
_ICE_WMI = ("VF1", "UU1", "VF3", "VF7", "ZFA", "WVW", "KMH", "MA3", "JTD", "VSS")
# the same choices as arrays, converted once: `Generator.choice` draws the same from either
_VIN_CHAR_ARRAY, _EV_WMI_ARRAY, _ICE_WMI_ARRAY = (np.array(list(x)) for x in (_VIN_CHARS, _EV_WMI, _ICE_WMI))

# Traced per-second fields (vehicle x second); see `Trace`.
TRACE_FIELDS = (
    "speed", "accel", "x", "y", "heading", "yaw", "soc", "fuel", "odo", "coolant", "oil",
    "batt_temp", "cabin_temp", "tyre_temp", "tp0", "tp1", "tp2", "tp3", "dtc", "p_batt",
    "p_trac", "charge_kw", "ign_age", "charge_target",
)


def vin_check_digit(vin: str) -> str:
    """The ISO 3779 / North-American check digit (position 9) of a 17-character VIN."""
    total = sum(_VIN_VALUES[c] * w for c, w in zip(vin, _VIN_WEIGHTS, strict=True))
    r = total % 11
    return "X" if r == 10 else str(r)


def make_vins(rng: np.random.Generator, is_ev: npt.NDArray[np.bool_]) -> list[str]:
    """Distinct, plausible VINs (manufacturer prefix, check digit, model year 2020-2024)."""
    vins: list[str] = []
    seen: set[str] = set()
    for ev in is_ev.tolist():
        while True:
            wmi = str(rng.choice(_EV_WMI_ARRAY if ev else _ICE_WMI_ARRAY))
            vds = "".join(rng.choice(_VIN_CHAR_ARRAY, 5))
            year = "LMNPR"[int(rng.integers(0, 5))]
            plant = _VIN_CHARS[int(rng.integers(10, len(_VIN_CHARS)))]
            serial = f"{int(rng.integers(0, 1_000_000)):06d}"
            draft = wmi + vds + "0" + year + plant + serial
            vin = draft[:8] + vin_check_digit(draft) + draft[9:]
            if vin not in seen:
                seen.add(vin)
                vins.append(vin)
                break
    return vins


def rush_level(hour: float) -> float:
    """0..1 congestion of urban roads by local hour (morning and evening peaks)."""
    return min(1.0, math.exp(-((hour - 8.0) / 1.0) ** 2) + math.exp(-((hour - 18.0) / 1.3) ** 2))


def ambient_c(hour: float, day: int) -> float:
    """Outside air temperature in Rabat-like spring weather: 14 C at dawn, 24 C mid afternoon."""
    return 19.0 + 5.0 * math.sin(2 * math.pi * (hour - 9.0) / 24.0) + 1.5 * math.sin(day * 1.7)


def humidity_pct(hour: float) -> float:
    """Relative humidity, highest before dawn (coastal), lowest mid afternoon."""
    return 70.0 - 16.0 * math.sin(2 * math.pi * (hour - 9.0) / 24.0)


@dataclass(slots=True)
class Vehicles:
    """Fixed attributes of each vehicle (one array element per vehicle)."""

    vins: list[str]
    is_ev: npt.NDArray[np.bool_]
    battery_kwh: F64
    pack_v: F64
    ac_kw: F64
    dc_kw: F64
    soh: F64
    tank_l: F64
    automatic: npt.NDArray[np.bool_]
    mass: F64
    cda: F64
    crr: F64
    aggr: F64
    speed_factor: F64
    a_max: F64
    b_comf: F64
    a_turn: F64
    harsh_p: F64
    home: I32
    work: I32
    commuter: npt.NDArray[np.bool_]
    night: npt.NDArray[np.bool_]
    home_charger: npt.NDArray[np.bool_]
    home_kw: F64
    work_charger: npt.NDArray[np.bool_]
    plug_below: F64
    tyre_cold: F64  # (n, 4) kPa
    tyre_leak: F64  # (n, 4) kPa per second
    weak_12v: npt.NDArray[np.bool_]
    temp_bias: F64
    lights_always: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.vins)


@dataclass(slots=True)
class Trace:
    """Per-second state of every vehicle over one window: arrays (seconds + 1, vehicles).

    Row 0 is the state at the window start (the last row of the previous window), row j
    the state j seconds later. `accel[j]` is the acceleration applied in the second ending
    at row j. Scalars per second (ambient, humidity, hour) are (seconds + 1,).
    """

    start_ms: int
    seconds: int
    mode: npt.NDArray[np.int8]
    charger_dc: npt.NDArray[np.bool_]
    fields: dict[str, F64]
    ambient: F64
    humidity: F64
    hour: F64


@dataclass(slots=True)
class _State:
    traced: F64  # (len(TRACE_FIELDS), n): the per-second fields below are views of its rows
    mode: npt.NDArray[np.int8]
    node: I32
    dest: I32
    purpose: I32
    route: I32
    rlen: I32
    ri: I32
    se: F64
    v: F64
    a: F64
    hold: F64
    stop_end: npt.NDArray[np.bool_]
    harsh_t: F64
    harsh_a: F64
    x: F64
    y: F64
    heading: F64
    yaw: F64
    soc: F64
    fuel: F64
    odo: F64
    coolant: F64
    oil: F64
    batt_temp: F64
    cabin_temp: F64
    tyre_temp: F64
    tyre_cold: F64  # (4, n)
    dtc: F64
    p_batt: F64
    p_trac: F64
    charge_kw: F64
    charger_max: F64
    charger_dc: npt.NDArray[np.bool_]
    charge_target: F64
    ign_age: F64
    next_dep: npt.NDArray[np.int64]
    plans: list[deque[tuple[int, int, int]]] = field(default_factory=list)
    plan_day: list[int] = field(default_factory=list)


class FleetModel:
    """Vehicles on the road network, advanced window by window."""

    def __init__(self, network: RoadNetwork, n_vehicles: int, ev_share: float, start_ms: int,
                 seed: int) -> None:
        self.net = network
        self.utc_offset_ms = network.city.utc_offset_s * 1000
        self.rng = np.random.default_rng([seed, 0xF1EE7])
        self.plan_rng = np.random.default_rng([seed, 0x9_1A_4])
        self.vehicles = self._make_vehicles(n_vehicles, ev_share)
        veh = self.vehicles
        rows = [TRACE_FIELDS.index(f) for f in ("coolant", "oil", "batt_temp", "cabin_temp", "tyre_temp")]
        self._thermal_rows = np.asarray(rows)
        self._thermal_on = np.array([1 / 200, 1 / 480, 1 / 1500, 1 / 240, 1 / 700])[:, None]
        self._thermal_off = np.array([1 / 2200, 1 / 2600, 1 / 1500, 1 / 2400, 1 / 700])[:, None]
        self._thermal_park = np.array([0.0, 0.0, 0.0, 5.0, 0.0])[:, None]
        self._attrs = np.stack([veh.speed_factor, veh.a_turn, veh.b_comf, veh.a_max, veh.harsh_p, veh.mass,
                                veh.cda, veh.crr, veh.is_ev.astype(np.float64), veh.battery_kwh, veh.tank_l],
                               axis=1)
        self.now_ms = start_ms
        self.public_chargers, self.nearest_charger, self.public_kw = self._chargers()
        self.state = self._initial_state(start_ms)
        self._next_due = int(self.state.next_dep.min())

    # --- population ----------------------------------------------------------------------

    def _make_vehicles(self, n: int, ev_share: float) -> Vehicles:
        rng = self.rng
        net = self.net
        is_ev = rng.random(n) < ev_share
        aggr = rng.beta(2.0, 4.5, n)
        homes = net.nodes_on_rings(2, 5)
        works = net.nodes_on_rings(-1, 2)
        tyre_cold = rng.normal(235.0, 6.0, (n, 1)) + rng.normal(0.0, 2.0, (n, 4))
        leaking = rng.random((n, 4)) < 0.01
        return Vehicles(
            vins=make_vins(rng, is_ev),
            is_ev=is_ev,
            battery_kwh=np.where(is_ev, rng.choice([27.0, 40.0, 52.0, 58.0, 64.0, 77.0], n), 0.0),
            pack_v=np.where(is_ev, rng.choice([355.0, 400.0, 697.0], n, p=[0.5, 0.35, 0.15]), 0.0),
            ac_kw=rng.choice([7.4, 11.0], n, p=[0.6, 0.4]),
            dc_kw=rng.choice([30.0, 50.0, 100.0, 150.0], n, p=[0.15, 0.35, 0.3, 0.2]),
            soh=np.round(rng.uniform(86.0, 100.0, n), 1),
            tank_l=rng.choice([35.0, 45.0, 50.0, 60.0], n),
            automatic=is_ev | (rng.random(n) < 0.35),
            mass=rng.uniform(1150.0, 1900.0, n) + np.where(is_ev, 250.0, 0.0),
            cda=rng.uniform(0.58, 0.78, n),
            crr=rng.uniform(0.009, 0.013, n),
            aggr=aggr,
            speed_factor=0.9 + 0.28 * aggr + rng.normal(0.0, 0.02, n),
            a_max=1.4 + 2.6 * aggr,
            b_comf=1.8 + 1.8 * aggr,
            a_turn=1.8 + 3.2 * aggr,
            harsh_p=2e-4 + 2.5e-3 * aggr**2,
            home=rng.choice(homes, n).astype(np.int32),
            work=rng.choice(works, n).astype(np.int32),
            commuter=rng.random(n) < 0.72,
            night=rng.random(n) < 0.04,
            home_charger=is_ev & (rng.random(n) < 0.7),
            home_kw=rng.choice([3.7, 7.4, 11.0], n, p=[0.3, 0.55, 0.15]),
            work_charger=is_ev & (rng.random(n) < 0.3),
            plug_below=rng.uniform(45.0, 92.0, n),
            tyre_cold=tyre_cold,
            tyre_leak=np.where(leaking, rng.uniform(0.3, 3.0, (n, 4)) / 3600.0, 0.0),
            weak_12v=rng.random(n) < 0.03,
            temp_bias=rng.normal(0.0, 0.4, n),
            lights_always=rng.random(n) < 0.3,
        )

    def _chargers(self) -> tuple[I32, I32, F64]:
        net = self.net
        candidates = net.nodes_on_rings(1, 5)
        public = np.sort(self.rng.choice(candidates, size=min(8, len(candidates)), replace=False)).astype(np.int32)
        cost = net.route_cost_s[:, public]
        nearest = public[np.argmin(cost, axis=1)].astype(np.int32)
        kw = np.zeros(net.n_nodes)
        kw[public] = self.rng.choice([50.0, 100.0, 150.0], len(public))
        return public, nearest, kw

    # --- plans -----------------------------------------------------------------------------

    def _local_day(self, t_ms: int) -> int:
        return (t_ms + self.utc_offset_ms) // DAY_MS

    def local_hour(self, t_ms: int) -> float:
        return ((t_ms + self.utc_offset_ms) % DAY_MS) / 3_600_000.0

    def _plan_day(self, n: int, day: int) -> list[tuple[int, int, int]]:
        """Trips of vehicle n on a local day: (departure ms, destination node, purpose)."""
        rng = self.plan_rng
        veh = self.vehicles
        midnight = day * DAY_MS - self.utc_offset_ms
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
        home, work = int(veh.home[n]), int(veh.work[n])
        hours_to_ms = 3_600_000.0
        out: list[tuple[int, int, int]] = []

        def at(hour: float) -> int:
            return midnight + int(hour * hours_to_ms)

        def errand(hour: float) -> None:
            shop = int(rng.integers(0, self.net.n_nodes))
            out.append((at(hour), shop, ERRAND))
            out.append((at(hour + rng.uniform(0.6, 2.2)), home, HOME))

        if veh.commuter[n] and weekday < 5:
            leave = float(np.clip(rng.normal(7.75, 0.6), 5.5, 10.5))
            back = float(np.clip(rng.normal(17.5, 0.8), max(leave + 6.0, 14.5), 21.5))
            out.append((at(leave), work, WORK))
            if rng.random() < 0.25:  # lunch errand
                lunch = float(rng.normal(12.8, 0.4))
                out.append((at(lunch), int(rng.integers(0, self.net.n_nodes)), ERRAND))
                out.append((at(lunch + rng.uniform(0.6, 1.2)), work, WORK))
            out.append((at(back), home, HOME))
            if rng.random() < 0.3:
                errand(float(np.clip(rng.normal(19.6, 0.9), back + 0.7, 23.0)))
        else:
            for _ in range(int(rng.poisson(1.7 if weekday < 5 else 2.1))):
                hour = rng.normal(10.9, 1.3) if rng.random() < 0.5 else rng.normal(16.0, 1.8)
                errand(float(np.clip(hour, 7.0, 21.5)))
        if veh.night[n]:
            start = float(rng.uniform(0.3, 4.5))
            out.append((at(start), int(rng.integers(0, self.net.n_nodes)), ERRAND))
            out.append((at(start + rng.uniform(0.5, 1.5)), home, HOME))
        out.sort()
        return out

    def _next_departure(self, n: int, t_ms: int, min_dwell_s: float = 90.0) -> int:
        s = self.state
        plan = s.plans[n]
        guard = 0
        while not plan and guard < 30:
            s.plan_day[n] += 1
            plan.extend(self._plan_day(n, s.plan_day[n]))
            guard += 1
        if not plan:
            return np.iinfo(np.int64).max
        return max(plan[0][0], t_ms + int(min_dwell_s * 1000))

    # --- initial state ---------------------------------------------------------------------

    def _initial_state(self, t0: int) -> _State:
        n = len(self.vehicles)
        veh = self.vehicles
        rng = self.rng
        hour = self.local_hour(t0)
        amb = ambient_c(hour, self._local_day(t0))
        e = max(self.net.max_route_edges, 1)
        xy = self.net.node_xy[veh.home]
        traced = np.zeros((len(TRACE_FIELDS), n))
        row = {name: traced[i] for i, name in enumerate(TRACE_FIELDS)}
        row["heading"][:] = rng.uniform(0.0, 360.0, n)
        row["x"][:], row["y"][:] = xy[:, 0], xy[:, 1]
        row["soc"][:] = np.where(veh.is_ev, rng.uniform(30.0, 95.0, n), 0.0)
        row["fuel"][:] = np.where(veh.is_ev, 0.0, rng.uniform(18.0, 95.0, n))
        row["odo"][:] = rng.uniform(3.0e6, 1.6e8, n).round()
        for name, value in (("coolant", amb), ("oil", amb), ("batt_temp", amb + 2.0),
                            ("cabin_temp", amb + 3.0), ("tyre_temp", amb)):
            row[name][:] = value
        tp = TRACE_FIELDS.index("tp0")
        traced[tp:tp + 4] = veh.tyre_cold.T
        row["dtc"][:] = np.where(rng.random(n) < 0.04, 1.0, 0.0)
        state = _State(
            traced=traced, mode=np.zeros(n, dtype=np.int8), node=veh.home.copy(), dest=veh.home.copy(),
            purpose=np.zeros(n, dtype=np.int32), route=np.zeros((n, e), dtype=np.int32),
            rlen=np.zeros(n, dtype=np.int32), ri=np.zeros(n, dtype=np.int32), se=np.zeros(n),
            v=row["speed"], a=row["accel"], hold=np.zeros(n), stop_end=np.zeros(n, dtype=bool),
            harsh_t=np.zeros(n), harsh_a=np.zeros(n), x=row["x"], y=row["y"], heading=row["heading"],
            yaw=row["yaw"], soc=row["soc"], fuel=row["fuel"], odo=row["odo"], coolant=row["coolant"],
            oil=row["oil"], batt_temp=row["batt_temp"], cabin_temp=row["cabin_temp"],
            tyre_temp=row["tyre_temp"], tyre_cold=traced[tp:tp + 4], dtc=row["dtc"],
            p_batt=row["p_batt"], p_trac=row["p_trac"], charge_kw=row["charge_kw"], charger_max=np.zeros(n),
            charger_dc=np.zeros(n, dtype=bool), charge_target=row["charge_target"], ign_age=row["ign_age"],
            next_dep=np.zeros(n, dtype=np.int64),
        )
        self.state = state
        day = self._local_day(t0)
        in_progress_ms = 20 * 60 * 1000
        under_way: list[tuple[int, float]] = []  # (vehicle, seconds since it left)
        for i in range(n):
            plan = deque(self._plan_day(i, day))
            while plan and plan[0][0] <= t0 - in_progress_ms:
                _, dest, purpose = plan.popleft()
                state.node[i] = dest
                state.purpose[i] = purpose
            if plan and plan[0][0] <= t0:
                under_way.append((i, (t0 - plan[0][0]) / 1000.0))
            state.plans.append(plan)
            state.plan_day.append(day)
            state.next_dep[i] = self._next_departure(i, t0, 0.0)
        state.x[:] = self.net.node_xy[state.node, 0]
        state.y[:] = self.net.node_xy[state.node, 1]
        if hour >= 18.0 or hour < 7.0:  # evening and night: EVs at home are plugged in
            for i in np.flatnonzero(veh.is_ev & veh.home_charger & (state.node == veh.home)
                                    & (state.soc < veh.plug_below)).tolist():
                self._plug(i, CHARGER_HOME)
        for i, elapsed in under_way:  # trips already under way at the start: mid-route
            self._depart(i, t0)
            if state.mode[i] == DRIVING:
                self._advance(i, elapsed, amb)
        return state

    def _advance(self, n: int, elapsed_s: float, amb: float) -> None:
        """Place a vehicle that left `elapsed_s` ago part-way along its route, warmed up."""
        s, net = self.state, self.net
        distance = elapsed_s * float(self.rng.uniform(6.0, 10.0))
        ri = 0
        while ri < s.rlen[n] - 1 and distance > net.edge_len[s.route[n, ri]]:
            distance -= float(net.edge_len[s.route[n, ri]])
            ri += 1
        edge = int(s.route[n, ri])
        distance = min(distance, float(net.edge_len[edge]) * 0.9)
        s.ri[n], s.se[n], s.hold[n] = ri, distance, 0.0
        s.v[n] = min(float(net.edge_vmax[edge]) * 0.8, 12.0)
        x, y, heading = net.position(np.array([edge]), np.array([distance]))
        s.x[n], s.y[n], s.heading[n] = x[0], y[0], heading[0]
        s.ign_age[n] = elapsed_s
        s.odo[n] += elapsed_s * 8.0
        warm = 1.0 - math.exp(-elapsed_s / 300.0)
        s.coolant[n] = amb + (91.0 - amb) * warm
        s.oil[n] = amb + (97.0 - amb) * warm * 0.7
        s.cabin_temp[n] = amb + (21.5 - amb) * warm

    # --- discrete events -----------------------------------------------------------------

    def _plug(self, n: int, kind: int) -> None:
        s, veh = self.state, self.vehicles
        if kind == CHARGER_PUBLIC:
            s.charger_max[n] = min(self.public_kw[s.node[n]], veh.dc_kw[n])
            s.charger_dc[n] = True
            s.charge_target[n] = 80.0
        else:
            station = veh.home_kw[n] if kind == CHARGER_HOME else 11.0
            s.charger_max[n] = min(station, veh.ac_kw[n])
            s.charger_dc[n] = False
            s.charge_target[n] = 100.0 if kind == CHARGER_HOME else 90.0
        if s.soc[n] < s.charge_target[n] - 0.5:
            s.mode[n] = CHARGING

    def _depart(self, n: int, t_ms: int) -> None:
        s, veh, net = self.state, self.vehicles, self.net
        plan = s.plans[n]
        if not plan:
            s.next_dep[n] = self._next_departure(n, t_ms)
            return
        entry = plan.popleft()
        _, dest, purpose = entry
        here = int(s.node[n])
        if veh.is_ev[n] and s.soc[n] < 20.0 and purpose != CHARGE:
            plan.appendleft(entry)
            dest, purpose = int(self.nearest_charger[here]), CHARGE
            if dest == here:
                s.charge_kw[n] = 0.0
                self._plug(n, CHARGER_PUBLIC)
                plan[0] = (t_ms, plan[0][1], plan[0][2])
                s.next_dep[n] = np.iinfo(np.int64).max if s.mode[n] == CHARGING else t_ms + 60_000
                return
        if dest == here:
            s.next_dep[n] = self._next_departure(n, t_ms, 0.0)
            return
        length = int(net.route_len[here, dest])
        s.route[n, :length] = net.route_edges[here, dest, :length]
        s.rlen[n] = length
        s.ri[n] = 0
        s.se[n] = 0.0
        s.v[n] = 0.0
        s.dest[n] = dest
        s.purpose[n] = purpose
        s.hold[n] = float(self.rng.uniform(6.0, 45.0))  # warm-up, seat belt, mirrors
        first = int(s.route[n, 0])
        s.stop_end[n] = bool(self.rng.random() < net.node_stop_prob[net.edge_to[first]])
        s.mode[n] = DRIVING
        s.charge_kw[n] = 0.0
        s.ign_age[n] = 0.0
        if s.dtc[n] > 0 and self.rng.random() < 0.3:
            s.dtc[n] -= 1.0
        s.next_dep[n] = np.iinfo(np.int64).max

    def _arrive(self, n: int, t_ms: int) -> None:
        s, veh = self.state, self.vehicles
        s.mode[n] = PARKED
        s.v[n] = 0.0
        s.a[n] = 0.0
        node = int(s.dest[n])
        s.node[n] = node
        if veh.is_ev[n]:
            if s.purpose[n] == CHARGE:
                self._plug(n, CHARGER_PUBLIC)
                if s.mode[n] == CHARGING:
                    s.next_dep[n] = np.iinfo(np.int64).max
                    return
            elif node == veh.home[n] and veh.home_charger[n] and s.soc[n] < veh.plug_below[n]:
                self._plug(n, CHARGER_HOME)
            elif node == veh.work[n] and veh.work_charger[n] and s.soc[n] < 85.0:
                self._plug(n, CHARGER_WORK)
        elif s.fuel[n] < 15.0:
            s.fuel[n] = float(self.rng.uniform(80.0, 100.0))  # filled up on the way
        s.next_dep[n] = self._next_departure(n, t_ms)

    def _charging_done(self, n: int, t_ms: int) -> None:
        s = self.state
        s.mode[n] = PARKED
        s.charge_kw[n] = 0.0
        if s.purpose[n] == CHARGE:
            s.purpose[n] = ERRAND
            s.next_dep[n] = self._next_departure(n, t_ms, 60.0)

    # --- one second ------------------------------------------------------------------------

    def _step(self, t_ms: int) -> None:
        s, veh, rng = self.state, self.vehicles, self.rng
        hour = self.local_hour(t_ms)
        amb = ambient_c(hour, self._local_day(t_ms))

        if t_ms >= self._next_due:
            for n in np.flatnonzero(s.next_dep <= t_ms).tolist():
                if s.mode[n] == CHARGING:
                    s.mode[n] = PARKED  # unplug and go
                    s.charge_kw[n] = 0.0
                self._depart(n, t_ms)
            self._next_due = int(s.next_dep.min())

        s.a[:] = 0.0
        s.p_trac[:] = 0.0
        s.p_batt[:] = 0.0
        s.yaw[:] = 0.0
        idx = np.flatnonzero(s.mode == DRIVING)
        if idx.size:
            self._drive(idx, t_ms, hour, amb)

        cidx = np.flatnonzero(s.mode == CHARGING)
        if cidx.size:
            soc = s.soc[cidx]
            dc = s.charger_dc[cidx]
            taper_dc = np.interp(soc, [0.0, 50.0, 80.0, 100.0], [1.0, 1.0, 0.35, 0.08])
            taper_ac = np.interp(soc, [0.0, 95.0, 100.0], [1.0, 1.0, 0.15])
            kw = s.charger_max[cidx] * np.where(dc, taper_dc, taper_ac) * rng.uniform(0.97, 1.0, cidx.size)
            s.charge_kw[cidx] = kw
            s.p_batt[cidx] = kw * 1000.0 * 0.93
            s.soc[cidx] = np.minimum(soc + kw * 0.93 / 3600.0 / veh.battery_kwh[cidx] * 100.0, 100.0)
            done = cidx[s.soc[cidx] >= s.charge_target[cidx]]
            for n in done.tolist():
                self._charging_done(n, t_ms)
            if done.size:
                self._next_due = int(s.next_dep.min())

        # temperatures relax towards their targets: rows coolant, oil, battery, cabin, tyres
        thermal = s.traced[self._thermal_rows]
        if idx.size or cidx.size:
            on = s.mode == DRIVING
            s.ign_age[:] = np.where(on, s.ign_age + 1.0, 0.0)
            target = np.empty_like(thermal)
            target[0] = np.where(on, 91.0, amb)
            target[1] = np.where(on, 97.0 + 0.15 * s.v, amb)
            target[2] = amb + np.where(on, 4.0 + np.abs(s.p_batt) / 9000.0,
                                       np.where(s.mode == CHARGING, np.where(s.charger_dc, 15.0, 4.0), 0.0))
            target[3] = np.where(on, 21.5, amb + 5.0)
            target[4] = amb + np.where(on, 4.0 + 14.0 * np.minimum(s.v / 22.0, 1.0), 0.0)
            rate = np.where(on[None, :], self._thermal_on, self._thermal_off)
        else:
            s.ign_age[:] = 0.0
            target = amb + self._thermal_park
            rate = self._thermal_off
        s.traced[self._thermal_rows] = thermal + (target - thermal) * rate

    def _drive(self, idx: npt.NDArray[np.intp], t_ms: int, hour: float, amb: float) -> None:
        s, net, rng = self.state, self.net, self.rng
        k = idx.size
        attrs = self._attrs[idx]  # one gather for every fixed attribute used below
        sf, a_turn, b, a_max, harsh_p = attrs[:, 0], attrs[:, 1], attrs[:, 2], attrs[:, 3], attrs[:, 4]
        ri, rl = s.ri[idx], s.rlen[idx]
        edge = s.route[idx, ri]
        last = ri >= rl - 1
        nxt = s.route[idx, np.minimum(ri + 1, rl - 1)]
        length = net.edge_len[edge]
        se, v = s.se[idx], s.v[idx]
        rem = length - se
        vlim = net.edge_vmax[edge] * sf * (1.0 - 0.45 * rush_level(hour) * net.edge_urban[edge])
        stopping = s.stop_end[idx] | last
        v_turn = np.where(net.turn_deg[edge, nxt] > 25.0, np.sqrt(a_turn * TURN_RADIUS_M), np.inf)
        v_end = np.where(stopping, 0.0, np.minimum(v_turn, net.edge_vmax[nxt] * sf))
        u = rng.random((4, k))
        a = np.minimum(np.maximum(0.55 * (vlim - v) + rng.standard_normal(k) * 0.12 * (v > 1.0), -1.4 * b), a_max)
        # brake for the stop line or the junction: the constant deceleration that reaches
        # v_end there, applied once it exceeds a gentle threshold
        a_need = (v_end**2 - v**2) / (2.0 * np.maximum(rem - np.where(stopping, 4.0, 1.0), 0.5))
        brake = np.maximum(np.maximum(a_need, v_end - v), -8.5)
        a = np.where(a_need < -0.45 * b, np.minimum(a, brake), a)

        # harsh braking: a driver's sudden stop for 1-3 s
        harsh_t = s.harsh_t[idx]
        start = (harsh_t <= 0) & (v > 8.0) & (u[0] < harsh_p)
        harsh_t = np.where(start, 1.0 + np.floor(u[1] * 3.0), harsh_t)
        harsh_a = np.where(start, 4.6 + 2.9 * u[2], s.harsh_a[idx])
        a = np.where(harsh_t > 0, -harsh_a, a)
        s.harsh_t[idx] = np.maximum(harsh_t - 1.0, 0.0)
        s.harsh_a[idx] = harsh_a

        hold = s.hold[idx]
        held = hold > 0
        s.hold[idx] = np.maximum(hold - 1.0, 0.0)
        v_new = np.where(held, 0.0, np.maximum(v + a, 0.0))
        se_new = se + 0.5 * (v + v_new)
        halt = stopping & ~held & ((length - se_new < 6.0) & (v_new < 2.5) | (se_new >= length))
        if halt.any():
            v_new = np.where(halt, 0.0, v_new)
            se_new = np.where(halt, np.maximum(np.minimum(se_new, length - 0.5), se), se_new)
        ds = se_new - se
        a_eff = v_new - v
        arrived = halt & last
        light = halt & ~last
        if light.any():
            li = idx[light]
            s.hold[li] = rng.uniform(0.2, 1.0, li.size) * net.node_dwell_s[net.edge_to[edge[light]]]
            s.stop_end[li] = False

        cross = ~stopping & (se_new >= length)
        if cross.any():
            ci = idx[cross]
            se_new[cross] -= length[cross]
            s.ri[ci] += 1
            new_edge = s.route[ci, s.ri[ci]]
            s.stop_end[ci] = rng.random(ci.size) < net.node_stop_prob[net.edge_to[new_edge]]
            edge = edge.copy()
            edge[cross] = new_edge
            se_new[cross] = np.minimum(se_new[cross], net.edge_len[new_edge])

        s.se[idx] = se_new
        s.v[idx] = v_new
        s.a[idx] = a_eff
        x, y, h_path = net.position(edge, se_new)
        s.x[idx], s.y[idx] = x, y
        heading = s.heading[idx]
        diff = (h_path - heading + 180.0) % 360.0 - 180.0
        v_turning = np.maximum(v_new, 1.0)
        omega = np.degrees(np.minimum(v_turning / TURN_RADIUS_M, a_turn / v_turning))
        step = np.minimum(np.maximum(diff, -omega), omega)
        s.heading[idx] = (heading + step) % 360.0
        s.yaw[idx] = -step  # ISO 8855: positive yaw is counter-clockwise seen from above
        s.odo[idx] += ds

        mass, cda, crr, is_ev, capacity, tank = (attrs[:, j] for j in range(5, 11))
        p_trac = mass * (a_eff * ds + crr * 9.81 * ds) + 0.6 * cda * ds**3
        s.p_trac[idx] = p_trac
        ev = is_ev > 0
        if ev.any():
            p_out = np.where(p_trac > 0, p_trac / 0.88, p_trac * 0.62) + (350.0 + 60.0 * abs(amb - 21.0))
            ev_i = idx[ev]
            s.p_batt[ev_i] = -p_out[ev]
            s.soc[ev_i] = np.maximum(s.soc[ev_i] - p_out[ev] / (36_000.0 * capacity[ev]), 0.0)
        if not ev.all():
            ice = ~ev
            litres = np.maximum(p_trac[ice], 0.0) / (0.24 * 34.2e6) + 0.9 / 3600.0
            ice_i = idx[ice]
            s.fuel[ice_i] = np.maximum(s.fuel[ice_i] - litres / tank[ice] * 100.0, 0.0)
        new_dtc = u[3] < 1.5e-5
        if new_dtc.any():
            di = idx[new_dtc]
            s.dtc[di] = np.minimum(s.dtc[di] + 1.0, 6.0)

        for n in idx[arrived].tolist():
            self._arrive(n, t_ms)
        if arrived.any():
            self._next_due = int(s.next_dep.min())

    # --- windows ---------------------------------------------------------------------------

    def run_window(self, seconds: int) -> Trace:
        """Advance `seconds` steps from the current time; the trace includes the start state."""
        s = self.state
        n = len(self.vehicles)
        start = self.now_ms
        buf = np.empty((seconds + 1, len(TRACE_FIELDS), n))
        mode = np.empty((seconds + 1, n), dtype=np.int8)
        dc = np.empty((seconds + 1, n), dtype=bool)
        t = start + np.arange(seconds + 1, dtype=np.int64) * 1000
        hours = ((t + self.utc_offset_ms) % DAY_MS) / 3_600_000.0
        days = (t + self.utc_offset_ms) // DAY_MS
        ambient = np.array([ambient_c(h, int(d)) for h, d in zip(hours.tolist(), days.tolist(), strict=True)])
        humidity = np.array([humidity_pct(h) for h in hours.tolist()])
        s.tyre_cold -= self.vehicles.tyre_leak.T * seconds  # slow leaks, kPa per window
        buf[0] = s.traced
        mode[0] = s.mode
        dc[0] = s.charger_dc
        for j in range(1, seconds + 1):
            self._step(int(t[j]))
            buf[j] = s.traced
            mode[j] = s.mode
            dc[j] = s.charger_dc
        self.now_ms = start + seconds * 1000
        fields = {name: buf[:, i, :] for i, name in enumerate(TRACE_FIELDS)}
        # tyre pressure follows tyre temperature (ideal gas, cold pressure at 20 C)
        scale = (fields["tyre_temp"] + 273.15) / 293.15
        for w in range(4):
            fields[f"tp{w}"] *= scale
        return Trace(start, seconds, mode, dc, fields, ambient, humidity, hours)
