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

Parts: `FleetModel` here makes the population and its initial state and runs windows; it
inherits the per-second step from `pipeline.tools.sim.motion` and the plans and trip
events from `pipeline.tools.sim.trips`; `pipeline.tools.sim.vehicles` holds the data
(state codes, VINs, `Vehicles`, `Trace`).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from pipeline.tools.sim.city import RoadNetwork
from pipeline.tools.sim.motion import FleetMotion, ambient_c, humidity_pct
from pipeline.tools.sim.vehicles import (
    CHARGER_HOME,
    DAY_MS,
    DRIVING,
    F64,
    I32,
    TRACE_FIELDS,
    Trace,
    Vehicles,
    _State,
    make_vins,
)


class FleetModel(FleetMotion):
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
