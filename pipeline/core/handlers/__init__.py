"""The handler author's API: everything a file in `functions/` (and its tests) imports.

    from pipeline.core.handlers import HandlerContext, HandlerInput, handler, ops

A handler is `fn(batch: HandlerInput, ctx: HandlerContext) -> EventBatch | None`, called
once per clean batch (and, when `state=True`, for vehicles that fell silent). Its
derived events, emitted as columns, go on to the rules. `functions/README.md` has the
walk-through; this is the quick reference:

Declare
  handler         `@handler(name=, consumes=[...], emits={type: {field: "number?"}},
                  optional=[...], state=, defaults={...}, identity=[...], timeout_ms=,
                  retries=)`: what the function reads (VSS signals, other handlers' event
                  types), what it emits (data fields typed string / number / integer /
                  boolean, `?` if absent), its settings and whether it keeps state.
Signature types
  HandlerInput    `batch`: `signal(name)`, `has`, `vehicles`, `nearest`, `asof`,
                  `location`, `positions`, `fix_zones`, `first_record`, `events`, `vins`,
                  `silent`, `watermark`.
  HandlerContext  `ctx`: `emit(type, time=, origin=, vehicle=, data=)`, `config`,
                  `zones`, `state` / `states` / `save_states`, `vin`, `logger`, `metrics`.
  SignalSeries    what `batch.signal(name)` returns: `vehicle`, `t`, `v`, `record`.
  Positions       what `batch.positions()` returns: GPS fixes `vehicle`, `t`, `lat`,
                  `lon`, `record`.
  Zone            an item of `ctx.zones` (circle or polygon, `speed_limit_kmh`).
  EventBatch      events as columns: `batch.events` (consumed event types) and what a
                  handler may return instead of calling `ctx.emit`.
Vectorised pieces
  ops             runs carried across batches (`track_runs`), per-vehicle groups, as-of
                  and nearest joins, range sums and maxima, haversine, point in polygon,
                  geohash: numpy over the whole batch, no loop per reading.
Testing in memory
  import_file     `import_file(path)` -> the handlers (specs) a file defines, imported as
                  the worker does; a file that fails names its file and line.
  HandlerHarness  `HandlerHarness(spec_or_fn, config={name: {...}}, zones=[...])`;
                  `h.run({vin: {signal: (t_ms, values)}}, events=[...], watermark=...)`
                  runs one batch keeping state for the next, `h.silence([vin])` a silent
                  batch; `out.events_of(type)` reads the events as dicts.
  make_readings   a clean batch from `{vin: {signal: (t_ms, values)}}`.
  make_events     input events (rows of `type`, `vin`, `time` and data) for handlers that
                  consume event types.
  synthetic_fleet a realistic clean batch of a fleet driving, parking and charging.

The runner, loader, registry and state store (`pipeline.core.handlers.runner`, `.loader`,
`.registry`, `.state`, ...) are the worker's machinery, not part of this API.
"""

from __future__ import annotations

from pipeline.core.batch import EventBatch
from pipeline.core.handlers import ops
from pipeline.core.handlers.config import Zone
from pipeline.core.handlers.context import HandlerContext, HandlerInput
from pipeline.core.handlers.loader import import_file
from pipeline.core.handlers.registry import handler
from pipeline.core.handlers.testing import (
    HandlerHarness,
    make_events,
    make_readings,
    synthetic_fleet,
)
from pipeline.core.handlers.view import Positions, SignalSeries

__all__ = [
    "EventBatch", "HandlerContext", "HandlerHarness", "HandlerInput", "Positions", "SignalSeries",
    "Zone", "handler", "import_file", "make_events", "make_readings", "ops", "synthetic_fleet",
]
