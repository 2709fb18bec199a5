"""`pipeline regions`: the region model, each region's worker settings, status, and the drill."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import typer
from rich.console import Console
from rich.table import Table

console = Console()
FILE_HELP = "Regions file (default: $REGIONS_FILE; without one, a single region)."


def register(app: typer.Typer) -> None:
    regions_app = typer.Typer(help="Regions: home of each vehicle, worker settings, replication status, drill.",
                              no_args_is_help=True)
    app.add_typer(regions_app, name="regions")

    @regions_app.command("home")
    def home(vins: list[str] = typer.Argument(..., help="VINs."),
             file: Path = typer.Option(None, "--file", help=FILE_HELP)) -> None:
        """Print each VIN's home region."""
        from pipeline.tools.regions import load

        regions = load(file)
        for vin in vins:
            typer.echo(f"{vin}\t{regions.home_of(vin)}")

    @regions_app.command("env")
    def env(region: str = typer.Argument(..., help="Region name."),
            file: Path = typer.Option(None, "--file", help=FILE_HELP)) -> None:
        """Print the environment of a region's workers (`export` lines for a shell)."""
        from pipeline.tools.regions import load

        regions = load(file)
        if region not in regions.regions:
            raise typer.BadParameter(f"unknown region {region!r}; known: {regions.names}")
        for key, value in regions.regions[region].worker_env().items():
            typer.echo(f"export {key}={value}")

    @regions_app.command("rehome")
    def rehome(vin: str = typer.Argument(..., help="The vehicle."),
               to: str = typer.Option(..., "--to", help="Its new home region."),
               source: str = typer.Option(None, "--from", help="Its old home (default: its home now)."),
               partitions: int = typer.Option(None, help="Ingest partitions in the new region "
                                              "(default PARTITIONS)."),
               file: Path = typer.Option(None, "--file", help=FILE_HELP)) -> None:
        """Carry a vehicle's handler state to its new home region (from MirrorMaker's replica of
        the old region's changelog). Then list the VIN under `home.vins` in the regions file and
        start (or restart) the new region's worker that owns its partition."""
        from pipeline.runtime.settings import get_settings
        from pipeline.tools.region_ops import rehome_state
        from pipeline.tools.regions import load

        regions = load(file)
        old = source or regions.home_of(vin)
        for name in (old, to):
            if name not in regions.regions:
                raise typer.BadParameter(f"unknown region {name!r}; known: {regions.names}")
        if old == to:
            raise typer.BadParameter(f"{vin} is already homed in {to}")
        carried = asyncio.run(rehome_state(vin, regions.regions[old], regions.regions[to],
                                           partitions or get_settings().partitions))
        typer.echo(f"{vin}: {carried} handler-state entries carried from {old} to {to}")
        typer.echo(f"next: add `{vin}: {to}` under home.vins in the regions file, and (re)start the "
                   f"worker of {to} that owns the vehicle's partition")

    @regions_app.command("status")
    def status(file: Path = typer.Option(None, "--file", help=FILE_HELP),
               topics: str = typer.Option(None, help="Regex of mirrored topics (default $MIRROR_TOPICS "
                                          "or route\\..*|pipeline\\.dlq|.*-handler-state)."),
               json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """Per region: workers' consumer lag, MirrorMaker's replication lag per topic, last checkpoint."""
        from pipeline.runtime.settings import get_settings
        from pipeline.tools.region_ops import region_status
        from pipeline.tools.regions import load

        settings = get_settings()
        pattern = topics or settings.services.mirror_topics  # $MIRROR_TOPICS, empty: the default
        rows = asyncio.run(region_status(load(file), list(settings.ingest_topics), pattern))
        if json_out:
            typer.echo(orjson.dumps([{k: getattr(r, k) for k in r.__slots__} for r in rows],
                                    option=orjson.OPT_INDENT_2).decode())
        else:
            table = Table("region", "reachable", "consumer lag", "from", "topic", "source end",
                          "replicated", "lag (records)", "lag (s)", "last checkpoint", title="regions")
            for r in rows:
                if not r.replication:
                    table.add_row(r.name, "yes" if r.reachable else f"[red]no[/] {r.error or ''}",
                                  str(r.consumer_lag), "", "", "", "", "", "", "")
                for t in r.replication:
                    age = r.last_checkpoint_age_s.get(t.source)
                    table.add_row(r.name, "yes", str(r.consumer_lag), t.source, t.topic, str(t.source_end),
                                  str(t.replicated), str(t.lag_records), f"{t.lag_s:.1f}",
                                  "none" if age is None else f"{age:.0f}s ago")
            console.print(table)
        raise typer.Exit(0 if all(r.reachable for r in rows) else 3)

    @regions_app.command("drill")
    def drill(outage: float = typer.Option(60.0, min=1, help="Seconds region A's broker is down."),
              before: float = typer.Option(10.0, min=1, help="Seconds of traffic before the outage."),
              after: float = typer.Option(20.0, min=1, help="Seconds of traffic after A's return."),
              vehicles: int = typer.Option(60, min=2, help="Simulated vehicles, split by home region."),
              json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """Outage drill on a private pair of regions (never the shared broker): exit 0 when
        nothing was lost, both reconciles balance and replication caught up within a minute."""
        import dataclasses
        import logging

        from pipeline.tools.region_drill import main as run

        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connections during the outage
        result = run(outage_s=outage, vehicles=vehicles, before_s=before, after_s=after)
        if json_out:
            typer.echo(orjson.dumps({**dataclasses.asdict(result), "ok": result.ok},
                                    option=orjson.OPT_INDENT_2).decode())
        else:
            for key, value in dataclasses.asdict(result).items():
                typer.echo(f"{key:<30} {value}")
            typer.echo("drill passed: nothing lost" if result.ok else "drill FAILED")
        raise typer.Exit(0 if result.ok else 1)
