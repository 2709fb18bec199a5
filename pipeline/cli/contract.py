"""`pipeline contract`: the AsyncAPI 3.0 document of the deployment's topics."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def contract(
        out: Path = typer.Option(None, "--out", "-o", help="Write the document here (default: stdout)."),
        fmt: str = typer.Option("yaml", "--format", "-f", help="yaml or json."),
        version: str = typer.Option("1.0.0", help="The document's info.version."),
    ) -> None:
        """AsyncAPI 3.0 contract: a channel per topic, CloudEvents headers, a JSON Schema per event type."""
        import orjson
        import yaml

        from pipeline.core.errors import ConfigError
        from pipeline.runtime.settings import get_settings
        from pipeline.tools.contract import build_contract, load_contract_inputs

        if fmt not in ("yaml", "json"):
            typer.echo(f"error: --format must be yaml or json, not {fmt!r}", err=True)
            raise typer.Exit(2)
        settings = get_settings()
        try:
            ruleset, registry = load_contract_inputs(settings)
            document = build_contract(ruleset, registry, settings, version=version)
        except ConfigError as exc:  # a rules or handler file, or a transform the contract cannot run
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        if fmt == "json":
            text = orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
        else:
            text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
        if out:
            out.write_text(text)
            typer.echo(f"wrote {out} ({len(document['channels'])} channels, "
                       f"{len(document['components']['messages'])} messages)", err=True)
        else:
            sys.stdout.write(text)
