"""`pipeline functions list|test`: what handlers are loaded from functions/, and a dry run of one file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.errors import ConfigError


def register(app: typer.Typer) -> None:
    """Add the `functions` command group to the CLI."""
    group = typer.Typer(help="Function handlers in functions/: list them, try one file.",
                        no_args_is_help=True)

    @group.command("list")
    def list_handlers(
        directory: Annotated[Path | None, typer.Option("--dir", help="Handlers folder (default: settings)")] = None,
    ) -> None:
        """Table of handlers: name, inputs, outputs, state and source file; load errors after it."""
        from rich.console import Console
        from rich.table import Table

        from pipeline.core.handlers.loader import load_functions

        folder = _folder(directory)
        registry = load_functions(folder)
        table = Table(title=f"handlers in {folder}")
        for col in ("name", "consumes", "emits", "state", "timeout/retries", "source"):
            table.add_column(col, overflow="fold")
        for spec in registry.ordered():
            inputs = list(spec.consumes) + [f"({s})" for s in spec.optional]
            table.add_row(spec.name, "\n".join(inputs), "\n".join(spec.emits), "yes" if spec.state else "no",
                          f"{spec.timeout_ms} ms / {spec.retries}", _relative(spec.where))
        console = Console(width=max(Console().width, 180))
        console.print(table)
        for err in registry.errors:
            console.print(f"[red]not loaded:[/red] {err}")
        if registry.errors:
            raise typer.Exit(1)

    @group.command("test")
    def test_file(
        file: Annotated[Path, typer.Argument(help="A handler file, e.g. functions/my_handler.py")],
        vehicles: Annotated[int, typer.Option(help="Vehicles in the synthetic batch")] = 50,
        seconds: Annotated[int, typer.Option(help="Seconds of data per vehicle")] = 30,
    ) -> None:
        """Import and validate one file, then run its handlers on a synthetic fleet batch."""
        import numpy as np

        from pipeline.core.handlers.config import load_handler_config
        from pipeline.core.handlers.loader import CONFIG_FILE, import_file
        from pipeline.core.handlers.registry import Registry
        from pipeline.core.handlers.runner import HandlerRunner
        from pipeline.core.handlers.testing import catalog_signal_names, synthetic_fleet

        try:
            specs = import_file(file)
            registry = Registry(specs)
            registry.validate(catalog_signal_names())
            config = load_handler_config(file.resolve().parent / CONFIG_FILE)
            for spec in specs:
                config.check_keys(spec.name, spec.defaults)
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        if not specs:
            typer.echo(f"{file}: no @handler functions")
            raise typer.Exit(1)
        runner = HandlerRunner(registry, config)
        failed = False
        rows_seen = dict.fromkeys((spec.name for spec in specs), 0)
        fleet_signals: set[str] = set()
        try:
            for k in range(2):
                readings, records = synthetic_fleet(vehicles, seconds, start_ms=1_700_000_000_000 + k * seconds * 1000)
                fleet_signals.update(readings.signal_names[i] for i in np.unique(readings.signal).tolist())
                result = runner.run(readings, records)
                for name, st in result.stats.items():
                    rows_seen[name] = rows_seen.get(name, 0) + st.rows_in
                    typer.echo(f"batch {k}: {name}: rows_in={st.rows_in} events={st.events_out} "
                               f"errors={st.errors} {st.latency_s * 1000:.1f} ms")
                for dl in result.dead_letters[:3]:
                    failed = True
                    typer.echo(f"  dead letter {dl.stage} {dl.reason}: {dl.error} "
                               f"[{dl.detail.get('traceback', '')}]", err=True)
        finally:
            runner.close()
        for spec in specs:
            if rows_seen.get(spec.name, 0) == 0:
                # Passing on no input would prove nothing about the handler.
                failed = True
                typer.echo(f"error: {spec.name} saw no rows, so it was not tested: the test fleet has none of "
                           f"what it consumes ({', '.join(spec.consumes)}); the test fleet has "
                           f"{', '.join(sorted(fleet_signals))}", err=True)
        if failed:
            raise typer.Exit(1)

    app.add_typer(group, name="functions")


def _folder(directory: Path | None) -> Path:
    if directory is not None:
        return directory
    from pipeline.runtime.settings import get_settings

    return Path(get_settings().functions_dir)


def _relative(where: str) -> str:
    try:
        return str(Path(where.rsplit(":", 1)[0]).resolve().relative_to(Path.cwd())) + ":" + where.rsplit(":", 1)[1]
    except (ValueError, IndexError):
        return where
