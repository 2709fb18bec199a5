"""What the fleet's vehicles decide, rarely and one vehicle at a time.

Daily plans come from a time-of-day profile: commuters leave home around 07:45 and work
around 17:30 on weekdays, others run errands mostly late morning and afternoon, a few
night workers drive in the small hours. The trip events act on them: a departure (or a
diversion to the nearest public fast charger when an EV is low), an arrival, plugging in
at home, at work or at a public charger, and the end of a charge. `FleetModel`
(`pipeline.tools.sim.fleet`) inherits these and sets the state they use.
"""

from __future__ import annotations

import numpy as np

from pipeline.tools.sim.city import RoadNetwork
from pipeline.tools.sim.vehicles import (
    CHARGE,
    CHARGER_HOME,
    CHARGER_PUBLIC,
    CHARGER_WORK,
    CHARGING,
    DAY_MS,
    DRIVING,
    ERRAND,
    F64,
    HOME,
    I32,
    PARKED,
    WORK,
    Vehicles,
    _State,
)


class FleetTrips:
    """Daily plans and trip events of `FleetModel`."""

    net: RoadNetwork
    utc_offset_ms: int
    rng: np.random.Generator
    plan_rng: np.random.Generator
    vehicles: Vehicles
    state: _State
    nearest_charger: I32
    public_kw: F64

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
