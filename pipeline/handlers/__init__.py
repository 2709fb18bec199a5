"""Function handlers: vectorised, optionally stateful functions dropped into `functions/`.

A handler is `fn(batch: HandlerInput, ctx: HandlerContext) -> EventBatch | None`
decorated with `@handler(name=..., consumes=[...], emits=[...])`. The loader imports
`functions/*.py`, the runner calls each handler once per clean batch in isolation, and
the derived events it emits (as columns) go on to the rules. A vehicle that falls silent
reaches the stateful handlers as a batch of its own (`silent_batch`, `batch.silent`).
"""

from __future__ import annotations

from pipeline.handlers.config import HandlerConfig, Zone, load_handler_config
from pipeline.handlers.context import HandlerContext, HandlerInput, Positions, SignalSeries
from pipeline.handlers.loader import FunctionsWatcher, load_functions
from pipeline.handlers.registry import HandlerSpec, Registry, handler
from pipeline.handlers.runner import (
    HandlerRunner,
    HandlerRunResult,
    HandlerStats,
    build_runner,
    silent_batch,
)
from pipeline.handlers.state import StateStore, StateTooLarge, StateView

__all__ = [
    "FunctionsWatcher", "HandlerConfig", "HandlerContext", "HandlerInput", "HandlerRunResult",
    "HandlerRunner", "HandlerSpec", "HandlerStats", "Positions", "Registry", "SignalSeries",
    "StateStore", "StateTooLarge", "StateView", "Zone", "build_runner", "handler",
    "load_functions", "load_handler_config", "silent_batch",
]
