"""Scaling commands: `pipeline workers start|stop|status|scale` and `pipeline autoscale`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import signal
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from pipeline.tools.supervisor import Supervisor

console = Console()
err_console = Console(stderr=True)

STATE_DIR_HELP = "Folder for the replicas' state, logs and data (default .services/workers)."


class DriverName(StrEnum):
    local = "local"
    compose = "compose"


class OffsetResetName(StrEnum):
    earliest = "earliest"
    latest = "latest"


def _supervisor(state_dir: Path | None, worker_cmd: str | None = None, metrics_base: int | None = None,
                web_base: int | None = None, stop_timeout: float = 30.0,
                ready_timeout: float = 60.0) -> Supervisor:
    from pipeline.tools.supervisor import Supervisor

    return Supervisor(state_dir, command=shlex.split(worker_cmd) if worker_cmd else None,
                      metrics_base=metrics_base, web_base=web_base, stop_timeout_s=stop_timeout,
                      ready_timeout_s=ready_timeout)


def _print_status(state_dir: Path | None, as_json: bool) -> None:
    sup = _supervisor(state_dir)
    statuses = sup.status()
    if as_json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
        return
    table = Table("replica", "pid", "alive", "metrics port", "web port", "up",
                  title=f"worker replicas ({sup.root})")
    table.add_column("log", overflow="fold")
    now = time.time()
    for st in statuses:
        r = st.replica
        up = f"{now - r.started_at:,.0f}s" if st.alive else "-"
        table.add_row(str(r.index), str(r.pid), "[green]yes" if st.alive else "[red]no",
                      str(r.metrics_port or "-"), str(r.web_port or "-"), up, r.log)
    console.print(table)
    if not statuses:
        console.print("no replicas (start some with `pipeline workers start -n N`)")


def _scale(state_dir: Path | None, replicas: int, worker_cmd: str | None, metrics_base: int | None,
           web_base: int | None, stop_timeout: float, ready_timeout: float) -> None:
    from pipeline.tools.supervisor import SupervisorError

    sup = _supervisor(state_dir, worker_cmd, metrics_base, web_base, stop_timeout, ready_timeout)
    try:
        result = sup.scale(replicas)
    except SupervisorError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(result.summary())
    if result.not_ready:
        err_console.print(f"[yellow]replicas {result.not_ready} run but their metrics port did not "
                          f"answer within {ready_timeout:.0f}s; see their logs")


def register(app: typer.Typer) -> None:
    workers = typer.Typer(help="Local worker replicas (the no-Docker path): one process group each, "
                               "own metrics/web port, data dir and log under .services/workers/.",
                          no_args_is_help=True)

    state_dir_opt = typer.Option(None, "--state-dir", envvar="PIPELINE_WORKERS_DIR", help=STATE_DIR_HELP)
    worker_cmd_opt = typer.Option(None, "--worker-cmd", envvar="PIPELINE_WORKER_CMD",
                                  help="Command a replica runs (default: `pipeline worker`).")
    metrics_base_opt = typer.Option(None, "--metrics-base",
                                    help="Replica i's METRICS_PORT is base + i (default METRICS_PORT, 0 = off).")
    web_base_opt = typer.Option(None, "--web-base", help="Replica i's WEB_PORT is base + i (default WEB_PORT).")
    stop_timeout_opt = typer.Option(30.0, "--stop-timeout", help="Seconds between SIGTERM and SIGKILL.")
    ready_timeout_opt = typer.Option(60.0, "--ready-timeout",
                                     help="Seconds to wait for a new replica's metrics port to answer.")

    @workers.command("start")
    def start(
        replicas: int = typer.Option(1, "-n", "--replicas", min=0, help="Replicas to run."),
        state_dir: Path | None = state_dir_opt,
        worker_cmd: str | None = worker_cmd_opt,
        metrics_base: int | None = metrics_base_opt,
        web_base: int | None = web_base_opt,
        stop_timeout: float = stop_timeout_opt,
        ready_timeout: float = ready_timeout_opt,
    ) -> None:
        """Run N replicas (idempotent: running ones are kept, missing ones started)."""
        _scale(state_dir, replicas, worker_cmd, metrics_base, web_base, stop_timeout, ready_timeout)

    @workers.command("scale")
    def scale(
        replicas: int = typer.Argument(..., min=0, help="Replicas to run."),
        state_dir: Path | None = state_dir_opt,
        worker_cmd: str | None = worker_cmd_opt,
        stop_timeout: float = stop_timeout_opt,
        ready_timeout: float = ready_timeout_opt,
    ) -> None:
        """Start or stop replicas until N run (stops highest index first: SIGTERM, then SIGKILL)."""
        _scale(state_dir, replicas, worker_cmd, None, None, stop_timeout, ready_timeout)

    @workers.command("stop")
    def stop(state_dir: Path | None = state_dir_opt, stop_timeout: float = stop_timeout_opt) -> None:
        """Stop every replica (SIGTERM, wait, then SIGKILL): no replica process is left."""
        _scale(state_dir, 0, None, None, None, stop_timeout, 0.0)

    @workers.command("status")
    def status(state_dir: Path | None = state_dir_opt,
               as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """Each replica's pid, whether it runs, its ports and log file."""
        _print_status(state_dir, as_json)

    app.add_typer(workers, name="workers")

    @app.command("autoscale")
    def autoscale(
        driver: DriverName = typer.Option(DriverName.local, "--driver",
                                          help="local: replicas via `pipeline workers`; compose: the compose worker service."),
        min_replicas: int = typer.Option(1, "--min", min=0, help="Fewest replicas."),
        max_replicas: int = typer.Option(3, "--max", min=1, help="Most replicas (the partition count caps it too)."),
        lag_threshold: int = typer.Option(5000, "--lag-threshold", min=1, help="Lag (records) one replica is expected to carry."),
        interval: float = typer.Option(2.0, "--interval", min=0.1, help="Seconds between lag readings."),
        window: float = typer.Option(30.0, "--window", min=0.0, help="Scale-down stabilisation window, seconds."),
        cooldown: float = typer.Option(10.0, "--cooldown", min=0.0, help="Seconds without changes after a change."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print decisions, change nothing."),
        once: bool = typer.Option(False, "--once", help="One reading and decision, then exit."),
        duration: float | None = typer.Option(None, "--duration", help="Exit after this many seconds."),
        group: str | None = typer.Option(None, "--group", help="Consumer group (default APP_ID)."),
        topics: list[str] | None = typer.Option(None, "--topic", help="Topics to measure (default: the ingest topics)."),
        offset_reset: OffsetResetName = typer.Option(OffsetResetName.earliest, "--offset-reset",
                                                     help="Where the group starts on partitions it never committed."),
        metrics_port: int = typer.Option(9290, "--metrics-port", envvar="AUTOSCALER_METRICS_PORT",
                                         help="Prometheus port of the autoscaler (0 = off)."),
        state_dir: Path | None = state_dir_opt,
        worker_cmd: str | None = worker_cmd_opt,
        compose_cmd: str = typer.Option("docker compose", "--compose-cmd", envvar="AUTOSCALER_COMPOSE_CMD",
                                        help="The compose CLI (e.g. `docker compose -p telemetry`)."),
        compose_service: str = typer.Option("worker", "--compose-service", help="The compose service to scale."),
        compose_dir: Path | None = typer.Option(None, "--compose-dir", help="Folder with docker-compose.yml."),
        stop_timeout: float = stop_timeout_opt,
    ) -> None:
        """Set the worker replica count from consumer lag (the KEDA Kafka rule, damped).

        replicas = clamp(ceil(total_lag / lag_threshold), min, min(max, partitions)). Up at
        once; down only to the highest count wanted over the window; no change within the
        cooldown after a change. Each decision is logged and exported as metrics.
        """
        from pipeline.core.errors import InputError
        from pipeline.runtime.lag import LagReader
        from pipeline.runtime.settings import get_settings
        from pipeline.tools.autoscale import (
            AutoscaleMetrics,
            Autoscaler,
            ComposeDriver,
            DryRunDriver,
            LocalDriver,
            LoopOptions,
            ScaleDriver,
            ScalePolicy,
            run_with_reader,
        )

        settings = get_settings()
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for noisy in ("aiokafka", "kafka"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        try:
            policy = ScalePolicy(min_replicas, max_replicas, lag_threshold, window, cooldown)
        except InputError as exc:
            err_console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc

        scale_driver: ScaleDriver
        if driver is DriverName.local:
            scale_driver = LocalDriver(_supervisor(state_dir, worker_cmd, stop_timeout=stop_timeout))
        else:
            scale_driver = ComposeDriver(compose_service, shlex.split(compose_cmd), compose_dir)
        if dry_run:
            scale_driver = DryRunDriver(scale_driver)

        metrics = AutoscaleMetrics()
        if metrics_port:
            metrics.serve(metrics_port)
        group_id = group or settings.app_id
        reader = LagReader(group_id, topics or list(settings.ingest_topics), settings, offset_reset.value)
        options = LoopOptions(interval_s=interval, once=once, duration_s=duration,
                              echo=sys.stdout if (dry_run or once) else None)
        console.print(f"autoscale: group {group_id}, driver {scale_driver.name}, min {min_replicas} "
                      f"max {max_replicas} threshold {lag_threshold} window {window:.0f}s "
                      f"cooldown {cooldown:.0f}s" + (f", metrics :{metrics_port}" if metrics_port else ""))
        async def main() -> None:
            # SIGTERM (docker stop, the demo) ends the loop between ticks, never mid-change.
            stop = options.stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await run_with_reader(Autoscaler(policy), scale_driver, reader, options, metrics)

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())
