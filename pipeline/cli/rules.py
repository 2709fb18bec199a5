"""`pipeline rules check | test | show`: validate, test and list the routing rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.core.rules.loader import (
    DEFAULT_RULES_DIR,
    CompiledRoute,
    RulesError,
    RuleSet,
    check_rules,
)
from pipeline.core.rules.patterns import AllOf, AnyOf, FieldCondition, Node, NoneOf

PATH_ARG = typer.Argument(None, help="Rules directory or file (default: rules/routes).", show_default=False)


def _describe(node: Node) -> str:
    if isinstance(node, FieldCondition):
        return f"{node.path} in [{' | '.join(leaf.describe() for leaf in node.leaves)}]"
    if isinstance(node, AllOf):
        return " AND ".join(f"({_describe(c)})" if isinstance(c, AnyOf) else _describe(c) for c in node.children) or "every event"
    if isinstance(node, AnyOf):
        return " OR ".join(_describe(c) for c in node.children)
    if isinstance(node, NoneOf):
        return f"NOT ({_describe(node.child)})"
    return repr(node)


def _route_info(route: CompiledRoute, default: bool) -> dict[str, Any]:
    spec = route.spec
    return {
        "name": spec.name,
        "file": f"{route.file}:{route.line}",
        "default": default,
        "match": "events no other route matches" if default else _describe(route.predicate),
        "transform": [next(k for k in step if k not in ("if_missing", "description")) for step in spec.transform],
        "to": [t.describe() for t in spec.to],
        "dead_letter": spec.dead_letter.describe(),
        "retry": spec.retry.model_dump(),
        "policy": spec.policy.model_dump(exclude_defaults=True) if spec.policy else None,
        "description": spec.description,
    }


def _load_or_exit(path: Path | None, err: Console) -> RuleSet:
    ruleset, errors = check_rules(path, env={})
    if errors or ruleset is None:
        for error in errors:
            err.print(str(error), markup=False, highlight=False, soft_wrap=True)
        err.print(f"{len(errors)} error{'s' if len(errors) != 1 else ''}", style="bold red")
        raise typer.Exit(1)
    return ruleset


def _system_warnings(ruleset: RuleSet, functions: Path | None) -> list[str]:
    from pipeline.core.handlers.loader import load_functions
    from pipeline.core.rules.system import handler_emitters, system_warnings

    if functions is None:
        from pipeline.runtime.settings import get_settings

        functions = Path(get_settings().functions_dir)
    if not functions.is_dir():
        return [f"{functions}: no such handler folder, so the rules were not checked against the handlers"]
    registry = load_functions(functions)
    warnings = [f"handler file not loaded, its events are not known: {e}" for e in registry.errors]
    return warnings + system_warnings(ruleset, handler_emitters(registry))


def register(app: typer.Typer) -> None:
    """Add the `rules` command group to the pipeline CLI."""
    rules_app = typer.Typer(help="Routing rules under rules/routes: check, test and show them.", no_args_is_help=True)

    @rules_app.command("check")
    def check(path: Path | None = PATH_ARG,
              functions: Path | None = typer.Option(
                  None, "--functions", help="Handler folder the rules are checked against (default: the configured functions_dir)."),
              ) -> None:
        """Validate the rules: print every error as file:line: route: field: problem; exit 1 on any.

        Then check them against the handlers (warnings, file:line): type patterns no handler
        or vehicle emits, and identity fields a route under a VIN policy lets out unhashed.
        """
        err = Console(stderr=True)
        ruleset = _load_or_exit(path, err)
        default = f", default route '{ruleset.default.name}'" if ruleset.default else ", no default route"
        disabled = f", {len(ruleset.disabled)} disabled" if ruleset.disabled else ""
        typer.echo(f"ok: {len(ruleset.routes)} routes{default}{disabled} in {len(ruleset.files)} files "
                   f"(version {ruleset.digest[:12]})")
        for warning in _system_warnings(ruleset, functions):
            typer.echo(f"warning: {warning}")

    @rules_app.command("test")
    def test(path: Path | None = PATH_ARG,
             tests: Path | None = typer.Option(None, "--tests", help="Test file or directory (default: rules/tests beside the routes)."),
             ) -> None:
        """Run the rules' test files: input events -> expected routes and outputs; exit 1 on a failure."""
        from pipeline.core.rules.testing import run_tests

        err = Console(stderr=True)
        ruleset = _load_or_exit(path, err)
        outcomes = run_tests(path, tests, ruleset=ruleset)
        if not outcomes:
            err.print(f"no tests found (looked in {tests or ((path or DEFAULT_RULES_DIR).parent / 'tests')})", style="bold red")
            raise typer.Exit(1)
        failed = [o for o in outcomes if not o.passed]
        for outcome in outcomes:
            mark = "ok  " if outcome.passed else "FAIL"
            typer.echo(f"{mark} {outcome.file}:{outcome.line}: {outcome.name}")
            for failure in outcome.failures:
                typer.echo(f"       {failure}")
        typer.echo(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed")
        if failed:
            raise typer.Exit(1)

    @rules_app.command("show")
    def show(path: Path | None = PATH_ARG,
             as_json: bool = typer.Option(False, "--json", help="Print the routes as JSON."),
             reference: bool = typer.Option(False, "--reference", help="Print the format reference (rules/README.md)."),
             ) -> None:
        """List the routes: what they match, how they transform, where they deliver."""
        if reference:
            from pipeline.core.rules.docs import reference_markdown

            typer.echo(reference_markdown(), nl=False)
            return
        err = Console(stderr=True)
        ruleset = _load_or_exit(path, err)
        infos = [_route_info(r, r is ruleset.default) for r in ruleset.all_routes()]
        if as_json:
            typer.echo(json.dumps({"version": ruleset.digest, "routes": infos, "disabled": list(ruleset.disabled)}, indent=2))
            return
        table = Table(title=f"rules version {ruleset.digest[:12]}", show_lines=True)
        for column in ("route", "match", "transform", "to", "policy"):
            table.add_column(column, overflow="fold")
        for info in infos:
            policy = ", ".join(f"{k}={v}" for k, v in (info["policy"] or {}).items()) or "-"
            cells = (info["name"] + (" (default)" if info["default"] else ""), info["match"],
                     ", ".join(info["transform"]) or "-", "\n".join(info["to"]) + f"\ndead letters: {info['dead_letter']}",
                     policy)
            table.add_row(*(escape(c) for c in cells))
        Console().print(table)

    app.add_typer(rules_app, name="rules")


__all__ = ["RulesError", "register"]
