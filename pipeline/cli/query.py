"""`pipeline query "SQL"`: DuckDB over the Parquet lake in the object store."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import sys
from enum import StrEnum
from typing import Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

console = Console()


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _plain(value: Any) -> Any:
    """JSON for what DuckDB hands back: decimals (sums) as numbers, dates as ISO text."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.date | dt.datetime | dt.time | dt.timedelta):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def render(table: Any, fmt: Format) -> str:
    """A query result as CSV or JSON text (a list of row objects)."""
    if fmt is Format.csv:
        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        return buf.getvalue().decode()
    return orjson.dumps(table.to_pylist(), default=_plain, option=orjson.OPT_INDENT_2).decode() + "\n"


def register(app: typer.Typer) -> None:
    @app.command()
    def query(
        sql: str = typer.Argument(None, help="SQL over the views (see --views); omit with --example."),
        fmt: Format = typer.Option(Format.table, "--format", "-f", help="table, csv or json."),
        example_name: str = typer.Option(None, "--example", "-e", help="Run a documented example (see --examples)."),
        list_examples: bool = typer.Option(False, "--examples", help="List the example questions and their SQL."),
        list_views: bool = typer.Option(False, "--views", help="List the views of the lake and their columns."),
    ) -> None:
        """SQL over the lake: clean readings, events per type and manifests, Hive partitions as columns."""
        from pipeline.runtime.settings import get_settings
        from pipeline.tools.lake import (
            EXAMPLES,
            LakeError,
            declared_event_fields,
            example,
            open_lake,
        )

        if list_examples:
            for ex in EXAMPLES:
                typer.echo(f"{ex.name}: {ex.question}\n  {ex.sql}\n")
            return
        try:
            if example_name:
                if sql:
                    raise LakeError("give SQL or --example, not both")
                sql = example(example_name).sql
            if not sql and not list_views:
                raise LakeError('no SQL given: pipeline query "SELECT ..." (or --example NAME, --views)')
            settings = get_settings()
            lake = open_lake(settings, declared=declared_event_fields(settings.functions_dir))
            if list_views:
                for name, what in sorted(lake.views.items()):
                    columns = lake.query(f"DESCRIBE {name}")
                    cols = ", ".join(f"{n} {t}" for n, t in zip(columns.column("column_name").to_pylist(),
                                                               columns.column("column_type").to_pylist(),
                                                               strict=True))
                    typer.echo(f"{name}: {what}\n  {cols}")
                return
            result = lake.query(sql)
        except LakeError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if fmt is Format.table:
            table = Table(*result.column_names, title=example_name or None)
            for row in result.to_pylist():
                table.add_row(*("" if v is None else str(v) for v in row.values()))
            console.print(table)
            console.print(f"{result.num_rows} row{'s' if result.num_rows != 1 else ''}")
        else:
            sys.stdout.write(render(result, fmt))
