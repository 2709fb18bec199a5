"""`pipeline reconcile`: input offsets vs. objects and dead letters, exit 1 on any gap."""

from __future__ import annotations

import asyncio

import orjson
import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def reconcile(
        group: str = typer.Option(None, help="Consumer group (default: APP_ID)."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Check that every committed input frame is in the store or the DLQ, and readings balance."""
        from pipeline.runtime.settings import get_settings
        from pipeline.tools.reconcile import reconcile as run

        reports = asyncio.run(run(get_settings(), group))
        ok = all(r.ok for r in reports)
        if json_out:
            typer.echo(orjson.dumps([{**{k: getattr(r, k) for k in r.__slots__}, "ok": r.ok}
                                     for r in reports], option=orjson.OPT_INDENT_2).decode())
        else:
            table = Table("partition", "log start", "committed", "end", "covered to", "manifests",
                          "overlaps", "frames", "dead", "in DLQ", "readings in", "kept", "repaired",
                          "dropped", "ok", title="reconcile")
            for r in reports:
                table.add_row(f"{r.topic}[{r.partition}]", str(r.log_start), str(r.committed),
                              str(r.log_end), str(r.covered_to), str(r.manifests), str(r.overlaps), str(r.frames_in),
                              str(r.frames_dead_lettered), str(r.dlq_found), str(r.readings_in),
                              str(r.readings_kept), str(r.readings_repaired), str(r.readings_dropped),
                              "[green]yes" if r.ok else "[red]NO")
            console.print(table)
            for r in reports:
                for problem in r.problems:
                    console.print(f"[red]{r.topic}[{r.partition}]: {problem}")
            totals = {k: sum(getattr(r, k) for r in reports) for k in
                      ("frames_in", "frames_dead_lettered", "readings_in", "readings_kept",
                       "readings_repaired", "readings_dropped", "overlaps")}
            committed = sum((r.committed or r.log_start) - r.log_start for r in reports)
            totals["frames_committed"] = committed
            totals["frames_reprocessed"] = max(0, totals["frames_in"] - committed)
            console.print("totals: " + ", ".join(f"{k}={v}" for k, v in totals.items()), soft_wrap=True)
            console.print("[green]balanced: nothing lost" if ok else "[red]NOT balanced")
        raise typer.Exit(0 if ok else 1)
