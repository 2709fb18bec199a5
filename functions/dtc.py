"""Diagnostic trouble codes appeared or cleared: changes of the vehicle's active DTC count.

A vehicle seen for the first time counts as having had no codes, so codes already
active then are reported once as appeared.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.handlers import HandlerContext, HandlerInput, handler, ops

DTC_COUNT = "Vehicle.OBD.Status.DTCCount"


@handler(
    name="dtc",
    consumes=[DTC_COUNT],
    emits={t: {"vin": "string", "dtc_count": "integer", "previous_count": "integer"}
           for t in ("fleet.dtc.appeared", "fleet.dtc.cleared")},
    state=True,
)
def dtc(batch: HandlerInput, ctx: HandlerContext) -> None:
    """fleet.dtc.appeared when the DTC count rises, fleet.dtc.cleared when it falls."""
    s = batch.signal(DTC_COUNT)
    if not len(s):
        return
    count = np.round(s.v).astype(np.int64)
    stored = ctx.states(batch.vehicles(DTC_COUNT))
    first = ops.first_of_group(s.vehicle)
    prev = np.empty_like(count)
    prev[1:] = count[:-1]
    # the last count stored for each vehicle (0 without state)
    initial = np.zeros(int(np.count_nonzero(first)), dtype=np.int64)
    if stored:
        with_state = np.fromiter(stored, dtype=np.int64, count=len(stored))
        pos, found = ops.positions_of(s.vehicle[first], with_state)
        initial[pos[found]] = [int(stored[v].get("count", 0)) for v in with_state[found].tolist()]
    prev[first] = initial
    for kind, mask in (("appeared", count > prev), ("cleared", count < prev)):
        if mask.any():
            ctx.emit(f"fleet.dtc.{kind}", time=s.t[mask], origin=s.record_at(mask), vehicle=s.vehicle[mask],
                     data={"dtc_count": count[mask], "previous_count": prev[mask]})
    last = ops.last_of_group(s.vehicle)
    changed = count[last] != initial
    ctx.save_states({int(v): {"count": int(c)} for v, c, ch in
                     zip(s.vehicle[last].tolist(), count[last].tolist(), changed.tolist(), strict=True) if ch})
