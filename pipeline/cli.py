"""The `pipeline` command: one CLI for workers, replay, rules, functions and operations."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="pipeline",
    help="Connected-vehicle telemetry pipeline: Kafka frames in, clean Parquet and routed CloudEvents out.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Each module registers its own commands; listed here so `pipeline --help` is complete.
COMMAND_MODULES = (
    "pipeline.commands.ops",       # worker, status, config, services
    "pipeline.commands.traffic",   # simulate, replay
    "pipeline.commands.quality",   # quality
    "pipeline.commands.rules",     # rules check | test | show
    "pipeline.commands.functions", # functions list | test
    "pipeline.commands.reconcile", # reconcile
    "pipeline.commands.scale",     # workers start|stop|status, autoscale
)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # area not present in this build
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
