"""`pipeline ui`: the operator's page for the whole deployment."""

from __future__ import annotations

import logging

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def ui(
        host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 in a container)."),
        port: int = typer.Option(8088, help="Port of the page."),
        metrics: list[str] = typer.Option(
            [], "--metrics", "-m",
            help="A replica's metrics URL (http://host:9100/metrics), or dns:HOST:PORT for every address "
                 "HOST resolves to (compose replicas). Repeatable. Local workers are added unless --no-local."),
        local: bool = typer.Option(True, "--local/--no-local", help="Add the replicas `pipeline workers start` runs."),
        autoscaler: str = typer.Option(None, help="Metrics URL of a running `pipeline autoscale` (e.g. "
                                                  "http://127.0.0.1:9290/metrics), to show what it last decided."),
        refresh: float = typer.Option(2.0, min=0.5, help="Seconds between refreshes."),
        tiles: str = typer.Option(None, help="Map tile URL template ({z}/{x}/{y}); default: no tiles, works offline."),
        max_replicas: int = typer.Option(3, help="Autoscaler policy shown: most replicas."),
        min_replicas: int = typer.Option(1, help="Autoscaler policy shown: fewest replicas."),
        lag_threshold: int = typer.Option(5000, help="Autoscaler policy shown: records of lag per replica."),
    ) -> None:
        """Web page: throughput, lag and the autoscaler, outcomes, dead letters, routes and a map."""
        from pipeline.runtime.settings import get_settings
        from pipeline.tools.autoscale import ScalePolicy
        from pipeline.tools.ui.collect import UiOptions
        from pipeline.tools.ui.server import run_ui

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
        options = UiOptions(metrics=list(metrics), local_workers=local, autoscaler=autoscaler,
                            policy=ScalePolicy(min_replicas=min_replicas, max_replicas=max_replicas,
                                               lag_threshold=lag_threshold))
        run_ui(get_settings(), options, host=host, port=port, refresh_s=refresh, tiles=tiles)
