"""Reference Faust agents for the worker benchmark, run as subprocesses by
`scripts/benchmarks/worker.py`, which measures their progress from committed offsets.

- `per-event` (default), the baseline: a plain Faust agent that, for every event, decodes
  its one record and cleans it with the per-reading implementation of the same rules
  (`tests.oracles.clean.ReferenceCleaner`). No handlers, no rules, no sinks: Faust
  acks each event as the loop moves to the next.
- `take`: Faust's own cost on the worker's path: `noack_take` batches of the worker's size,
  each event acked, no other work. No Faust worker can go faster on the same records.

Topics, group and broker come from the typed settings, like a worker's; acked offsets
are committed every second.

    BASELINE_AGENT=per-event|take APP_ID=... TOPIC_SENSOR=... TOPIC_GPS=... \
        .venv/bin/python scripts/benchmarks/baseline_agent.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import faust  # noqa: E402

from pipeline.core.catalog import load_catalog  # noqa: E402
from pipeline.core.clean import load_cleaning_config  # noqa: E402
from pipeline.core.events import decode_records  # noqa: E402
from pipeline.runtime.app import faust_app, to_raw_record  # noqa: E402
from pipeline.runtime.settings import Settings  # noqa: E402
from tests.oracles.clean import ReferenceCleaner  # noqa: E402


def create_app(settings: Settings, agent: str = "per-event") -> faust.App:
    """A Faust app with one agent (concurrency 1): `per-event` or `take` (see the module doc)."""
    take = agent == "take"
    tuning: dict[str, Any] = {"stream_buffer_maxsize": max(4 * settings.batch_size, 4096),
              "broker_max_poll_records": settings.batch_size} if take else {}
    app = faust_app(settings, broker_commit_interval=1.0, **tuning)
    catalog = load_catalog(settings.rules_dir / "signals.yaml")
    cleaner = ReferenceCleaner(catalog, load_cleaning_config(settings.rules_dir / "cleaning.yaml"))
    topic = app.topic(*settings.ingest_topics, key_type=bytes, value_type=bytes)

    async def per_event(stream: Any) -> None:
        async for event in stream.events():
            readings, _ = decode_records([to_raw_record(event)], max_frame_bytes=settings.max_frame_bytes)
            if len(readings):
                cleaner.clean(readings)

    async def take_only(stream: Any) -> None:
        async for events in stream.noack_take(settings.batch_size, within=settings.batch_wait_s):
            for event in events:
                await stream.ack(event)

    app.agent(topic, concurrency=1, name=agent)(take_only if take else per_event)
    return app


def main() -> None:
    from faust.worker import Worker as FaustWorker

    agent = os.environ.get("BASELINE_AGENT", "per-event")
    if agent not in ("per-event", "take"):
        raise SystemExit(f"BASELINE_AGENT must be per-event or take, not {agent!r}")
    settings = Settings()
    FaustWorker(create_app(settings, agent), loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
