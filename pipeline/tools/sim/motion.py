"""One second of the whole fleet, vectorised across vehicles, and the conditions it runs in.

Driving: speed towards the road's limit (slower in rush hour on urban roads), braking for
stop lines and turns, harsh braking, waits at lights, position and heading along the
route, traction power, battery or fuel use, new fault codes, arrivals. Charging, with its
taper. Temperatures (coolant, oil, battery, cabin, tyres) relaxing towards their targets.
The conditions by local hour: traffic (`rush_level`), air temperature (`ambient_c`) and
humidity (`humidity_pct`). `FleetModel` (`pipeline.tools.sim.fleet`) inherits the steps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.tools.sim.trips import FleetTrips
from pipeline.tools.sim.vehicles import CHARGING, DRIVING, PARKED

TURN_RADIUS_M = 14.0


def rush_level(hour: float) -> float:
    """0..1 congestion of urban roads by local hour (morning and evening peaks)."""
    return min(1.0, math.exp(-((hour - 8.0) / 1.0) ** 2) + math.exp(-((hour - 18.0) / 1.3) ** 2))


def ambient_c(hour: float, day: int) -> float:
    """Outside air temperature in Rabat-like spring weather: 14 C at dawn, 24 C mid afternoon."""
    return 19.0 + 5.0 * math.sin(2 * math.pi * (hour - 9.0) / 24.0) + 1.5 * math.sin(day * 1.7)


def humidity_pct(hour: float) -> float:
    """Relative humidity, highest before dawn (coastal), lowest mid afternoon."""
    return 70.0 - 16.0 * math.sin(2 * math.pi * (hour - 9.0) / 24.0)


class FleetMotion(FleetTrips):
    """The per-second step of `FleetModel`."""

    _next_due: int
    _attrs: npt.NDArray[Any]
    _thermal_rows: npt.NDArray[Any]
    _thermal_on: npt.NDArray[Any]
    _thermal_off: npt.NDArray[Any]
    _thermal_park: npt.NDArray[Any]

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
