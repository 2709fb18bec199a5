"""What the worker's decoder and encoder processes run, apart from the output plan itself.

`BatchIngest` submits these to its spawned process pools: they are pickled by reference
(module and name), so they stay top-level functions of a module the child can import.
Unpickling one imports this module, which imports little: what a job needs it imports
itself.
"""

from __future__ import annotations

import os
import time
from typing import Any

from pipeline.core.batch import DeadLetter, RawRecord


def warm_up(nice: int = 0) -> None:
    """Runs once in the encoder and decoder processes so that their imports happen before the
    first batch; `nice` lowers the process's CPU priority by that much."""
    if nice:
        os.nice(nice)
    import pipeline.core.events  # noqa: F401
    import pipeline.runtime.plan  # noqa: F401


def decode_job(records: list[RawRecord], max_frame_bytes: int) -> tuple[Any, list[DeadLetter], float]:
    """Decoder process: a batch's frames into columns (what `Core.process` would do first)."""
    from pipeline.core.events import decode_records

    started = time.perf_counter()
    readings, dead_letters = decode_records(records, max_frame_bytes=max_frame_bytes)
    return readings, dead_letters, time.perf_counter() - started

