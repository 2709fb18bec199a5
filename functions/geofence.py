"""Geofence enter and exit for the zones in `functions/handlers.yaml` (circles and polygons).

Each GPS fix is tested against every zone at once; an event is emitted where a vehicle's
set of zones changes between consecutive fixes. The zones a vehicle is in are kept in
state, so a crossing between two batches is still seen. A vehicle seen for the first time
inside a zone gets an `entered` event.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.handlers import HandlerContext, HandlerInput, handler, ops

LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"


@handler(
    name="geofence",
    consumes=[LAT, LON],
    emits={t: {"vin": "string", "zone": "string", "location.lat": "number", "location.lon": "number"}
           for t in ("fleet.geofence.entered", "fleet.geofence.exited")},
    state=True,
)
def geofence(batch: HandlerInput, ctx: HandlerContext) -> None:
    """fleet.geofence.entered / exited when a vehicle crosses a zone boundary."""
    zones = ctx.zones
    p = batch.positions()
    if not zones or not len(p):
        return
    names = [z.name for z in zones]
    bit_of = {n: i for i, n in enumerate(names)}
    mask = batch.fix_zones(zones)  # bit i: inside zones[i]
    stored = ctx.states(batch.vehicles(LAT))
    first = ops.first_of_group(p.vehicle)
    # zones each vehicle was in before its first fix here (none without state)
    start_mask = np.zeros(int(np.count_nonzero(first)), dtype=np.int64)
    if stored:
        with_state = np.fromiter(stored, dtype=np.int64, count=len(stored))
        pos, found = ops.positions_of(p.vehicle[first], with_state)
        for v, i in zip(with_state[found].tolist(), pos[found].tolist(), strict=True):
            start_mask[i] = sum(1 << bit_of[n] for n in stored[v].get("inside", []) if n in bit_of)
    prev = np.empty_like(mask)
    prev[1:] = mask[:-1]
    prev[first] = start_mask
    changed = np.flatnonzero(mask != prev)
    if changed.shape[0]:
        now, before = mask[changed], prev[changed]
        for kind, bits in (("entered", now & ~before), ("exited", before & ~now)):
            for i, name in enumerate(names):
                hit = ((bits >> i) & 1).astype(bool)
                if hit.any():
                    rows = changed[hit]
                    ctx.emit(f"fleet.geofence.{kind}", time=p.t[rows], origin=p.record[rows],
                             vehicle=p.vehicle[rows],
                             data={"zone": np.full(rows.shape[0], name, dtype=object),
                                   "location.lat": p.lat[rows], "location.lon": p.lon[rows]})
    last = ops.last_of_group(p.vehicle)
    updates = {}
    for v, m, m0 in zip(p.vehicle[last].tolist(), mask[last].tolist(), start_mask.tolist(), strict=True):
        if m != m0:
            updates[v] = {"inside": [n for i, n in enumerate(names) if (m >> i) & 1]} if m else None
    ctx.save_states(updates)
