"""Operational commands: worker, config."""

from __future__ import annotations

import logging

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(
        log_level: str = typer.Option(None, help="Log level (default from LOG_LEVEL or INFO)."),
    ) -> None:
        """Run a worker: consume the ingest topics, clean, run handlers, route, write outputs."""
        from pipeline.runtime.app import run_worker
        from pipeline.runtime.settings import get_settings

        settings = get_settings()
        if log_level:
            settings.log_level = log_level
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        run_worker(settings)

    @app.command("config")
    def show_config() -> None:
        """Print the effective settings (secrets redacted)."""
        from pipeline.runtime.settings import get_settings

        table = Table("setting", "value", title="effective settings")
        for key, value in sorted(get_settings().redacted().items()):
            table.add_row(key, str(value))
        console.print(table)

    register_status(app)


def scrape(port: int, timeout_s: float = 1.0) -> dict[str, float]:
    """Sum the pipeline_* samples of one worker's /metrics by metric name (labels folded)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:
        text = resp.read().decode()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("pipeline_") and not sample.name.endswith(("_created", "_bucket")):
                key = sample.name
                if "outcome" in sample.labels:
                    key += ":" + sample.labels["outcome"].split(".")[0]
                sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def register_status(app: typer.Typer) -> None:
    @app.command()
    def status(
        wait_drained: float = typer.Option(0.0, help="Wait up to this many seconds for lag 0, then exit 1 if not."),
        group: str = typer.Option(None, help="Consumer group (default: APP_ID)."),
    ) -> None:
        """Table of the local workers' metrics and the consumer group's lag."""
        import asyncio
        import time

        from pipeline.runtime.lag import read_group_lag
        from pipeline.runtime.settings import get_settings
        from pipeline.tools.supervisor import Supervisor

        settings = get_settings()
        group = group or settings.app_id

        def read() -> object:
            return asyncio.run(read_group_lag(group, list(settings.ingest_topics), settings))

        lag = read()
        deadline = time.monotonic() + wait_drained
        while wait_drained and (lag.total > 0 or lag.end_total == 0) and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(1.0)
            lag = read()
        table = Table("replica", "pid", "alive", "metrics", "frames in", "readings in", "kept",
                      "repaired", "dropped", "routed", "dead letters", "objects", title="workers")
        for st in Supervisor().status():
            r = st.replica
            try:
                m = scrape(r.metrics_port) if st.alive else {}
            except OSError:
                m = {}
            def g(name: str, m: dict[str, float] = m) -> str:
                return f"{int(m.get(name, 0)):,}" if m else "-"
            table.add_row(str(r.index), str(r.pid), "yes" if st.alive else "no", f":{r.metrics_port}",
                          g("pipeline_frames_in_total"), g("pipeline_readings_in_total"),
                          g("pipeline_readings_total:kept"), g("pipeline_readings_total:repaired"),
                          g("pipeline_readings_total:dropped"), g("pipeline_events_routed_total"),
                          g("pipeline_dead_letters_total"), g("pipeline_objects_written_total"))
        console.print(table)
        lag_table = Table("topic", "partitions", "committed", "end", "lag", title=f"consumer group {group}")
        for topic, n in lag.partitions_by_topic.items():  # type: ignore[attr-defined]
            parts = [p for p in lag.by_partition if p.topic == topic]  # type: ignore[attr-defined]
            lag_table.add_row(topic, str(n), f"{sum(p.committed or 0 for p in parts):,}",
                              f"{sum(p.log_end for p in parts):,}", f"{sum(p.lag for p in parts):,}")
        console.print(lag_table)
        if wait_drained and lag.total > 0:  # type: ignore[attr-defined]
            console.print(f"[red]lag still {lag.total} after {wait_drained:.0f}s")  # type: ignore[attr-defined]
            raise typer.Exit(1)
