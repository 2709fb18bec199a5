"""The `pipeline` command: one CLI for workers, replay, rules, functions and operations."""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="pipeline",
    help="Connected-vehicle telemetry pipeline: Kafka frames in, clean Parquet and routed CloudEvents out.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Each module registers its own commands; listed here so `pipeline --help` is complete.
COMMAND_MODULES = (
    "pipeline.cli.worker",    # worker, status, config, services
    "pipeline.cli.traffic",   # simulate, replay
    "pipeline.cli.quality",   # quality
    "pipeline.cli.rules",     # rules check | test | show
    "pipeline.cli.functions", # functions list | test
    "pipeline.cli.reconcile", # reconcile
    "pipeline.cli.scale",     # workers start|stop|status, autoscale
    "pipeline.cli.query",     # query (SQL over the lake)
    "pipeline.cli.contract",  # contract (AsyncAPI document)
    "pipeline.cli.ui",        # ui (the operator's page)
    "pipeline.cli.dlq",       # dlq replay --route
    "pipeline.cli.regions",   # regions home | env | status | drill
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
    """Console-script entry point. An unreachable broker or object store is one line naming
    the endpoint and how to start the local services, not a traceback; so is any other
    `PipelineError` (a file, a setting or an option the user gave)."""
    from aiokafka.errors import KafkaConnectionError
    from urllib3.exceptions import MaxRetryError

    from pipeline.core.errors import PipelineError
    from pipeline.runtime.settings import get_settings

    try:
        app()
    except KafkaConnectionError as exc:
        sys.exit(f"error: cannot reach Kafka at {get_settings().kafka_bootstrap} ({exc}); "
                 f"`scripts/services start` starts a local broker, KAFKA_BOOTSTRAP points elsewhere")
    except MaxRetryError as exc:
        sys.exit(f"error: cannot reach the object store at {get_settings().s3_endpoint} ({exc.reason}); "
                 f"`scripts/services start` starts a local one, S3_ENDPOINT points elsewhere")
    except PipelineError as exc:  # a file, setting or option the user gave: the message says which
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
