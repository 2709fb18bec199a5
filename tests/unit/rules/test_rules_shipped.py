"""The shipped rules: they check, their tests pass, the CLI reports mistakes, the reference is current."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli.rules import register
from pipeline.core.rules.docs import reference_markdown
from pipeline.core.rules.loader import DEFAULT_RULES_DIR, REPO_ROOT, load_rules
from pipeline.core.rules.testing import run_tests

SHIPPED = {"peak-shaving": "route.peak-shaving", "recommendation": "route.recommendation",
           "dept.finance": "route.dept.finance", "dept.customer-service": "route.dept.customer-service",
           "dept.maintenance": "route.dept.maintenance", "unmatched": "route.unmatched"}


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps `rules` a subcommand
    return app


def test_shipped_routes_and_their_topics() -> None:
    ruleset = load_rules(env={})
    topics = {r.name: [t.describe() for t in r.spec.to] for r in ruleset.all_routes()}
    assert {name: f"topic:{topic}" in topics[name] for name, topic in SHIPPED.items()} == dict.fromkeys(SHIPPED, True)
    assert ruleset.default is not None and ruleset.default.name == "unmatched"
    assert all(r.spec.policy is not None for r in ruleset.routes), "every department route declares a data policy"


def test_shipped_rules_pass_their_tests() -> None:
    outcomes = run_tests()
    assert outcomes, "no tests found beside the shipped rules"
    assert [o for o in outcomes if not o.passed] == []
    tested = {line.split(":", 1)[0] for o in outcomes for line in [Path(o.file).stem]}
    assert {p.stem for p in DEFAULT_RULES_DIR.glob("*.yaml")} <= tested, "every rules file has a test file"


def test_a_failing_rules_test_is_reported(tmp_path: Path) -> None:
    tests = tmp_path / "tests.yaml"
    tests.write_text("""\
tests:
  - name: wrong expectation
    events:
      - {type: fleet.dtc.appeared, source: /vehicles/V1, subject: V1, partitionkey: V1, time: 1,
         data: {vin: V1, dtc_count: 2, previous_count: 0}}
    expect:
      routes: [dept.finance]
      outputs:
        dept.customer-service:
          - data: {vin: V2}
""")
    (outcome,) = run_tests(tests_path=tests)
    assert not outcome.passed and outcome.line == 2
    assert any(f.startswith("routes: expected ['dept.finance'], got ['dept.customer-service', 'dept.maintenance']") for f in outcome.failures)
    assert "outputs.dept.customer-service[0].data.vin: expected 'V2', got 'V1'" in outcome.failures


def test_cli_check_ok_and_broken(cli: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["rules", "check"])
    assert ok.exit_code == 0 and ok.output.startswith("ok: 5 routes, default route 'unmatched'")
    broken = tmp_path / "routes"
    broken.mkdir()
    (broken / "x.yaml").write_text("routes:\n  - name: dept.x\n    match:\n      data: {soc_pct: [{numeric: ['<', 'ten']}]}\n"
                                   "    to: [{topic: route.x}, {topic: x.y}]\n")
    bad = runner.invoke(cli, ["rules", "check", str(broken)])
    assert bad.exit_code == 1
    lines = bad.output.strip().splitlines()
    assert lines[-1] == "2 errors"
    assert any(line.endswith("x.yaml:4: route 'dept.x': field 'match.data.soc_pct': `numeric`: '<' needs a number, got string 'ten'")
               for line in lines), lines


def test_cli_test_and_show(cli: typer.Typer) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["rules", "test"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].endswith("passed, 0 failed")
    shown = runner.invoke(cli, ["rules", "show", "--json"])
    assert shown.exit_code == 0
    assert '"name": "dept.finance"' in shown.output and '"default": true' in shown.output


def test_reference_document_is_generated_from_the_schema() -> None:
    committed = (REPO_ROOT / "rules" / "README.md").read_text()
    assert committed == reference_markdown(), "regenerate: pipeline rules show --reference > rules/README.md"
