"""Function handlers: vectorised, optionally stateful functions dropped into `functions/`.

A handler is `fn(batch: HandlerInput, ctx: HandlerContext) -> EventBatch | None`
decorated with `@handler(name=..., consumes=[...], emits=[...])`. The loader imports
`functions/*.py`, the runner calls each handler once per clean batch in isolation, and
the derived events it emits (as columns) go on to the rules. A vehicle that falls silent
reaches the stateful handlers as a batch of its own (`silent_batch`, `batch.silent`).
"""

from __future__ import annotations

from pipeline.core.handlers.config import HandlerConfig, Zone, load_handler_config
from pipeline.core.handlers.context import HandlerContext, HandlerInput, Positions, SignalSeries
from pipeline.core.handlers.loader import FunctionsWatcher, load_functions
from pipeline.core.handlers.registry import HandlerSpec, Registry, handler
from pipeline.core.handlers.runner import (
    HandlerRunner,
    HandlerRunResult,
    HandlerStats,
    build_runner,
    silent_batch,
)
from pipeline.core.handlers.state import StateStore, StateTooLarge, StateView

__all__ = [
    "FunctionsWatcher", "HandlerConfig", "HandlerContext", "HandlerInput", "HandlerRunResult",
    "HandlerRunner", "HandlerSpec", "HandlerStats", "Positions", "Registry", "SignalSeries",
    "StateStore", "StateTooLarge", "StateView", "Zone", "build_runner", "handler",
    "load_functions", "load_handler_config", "silent_batch",
]
