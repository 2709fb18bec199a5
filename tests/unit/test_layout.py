"""The package layout: imports point only downward (core <- runtime <- tools <- cli)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pipeline"
# what each layer may not import
FORBIDDEN = {
    "core": ("pipeline.runtime", "pipeline.tools", "pipeline.cli"),
    "runtime": ("pipeline.tools", "pipeline.cli"),
    "tools": ("pipeline.cli",),
}
LAYERS = ("core", "runtime", "tools", "cli")
MAX_LINES = 600


def imports_of(path: Path, top: str = "pipeline") -> list[tuple[int, str]]:
    """Every `pipeline...` (or other `top`) module a file imports, wherever the import is."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            out += [(node.lineno, n) for n in names if n.startswith(top)]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith(top)]
    return out


def violations(layer: str) -> list[str]:
    bad = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for line, name in imports_of(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN.get(layer, ())):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_point_only_downward(layer: str) -> None:
    assert violations(layer) == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from pipeline.runtime.settings import Settings\n    import pipeline.tools.quality\n")
    assert [n for _, n in imports_of(bad)] == ["pipeline.runtime.settings", "pipeline.runtime.settings.Settings",
                                                "pipeline.tools.quality"]


def test_the_package_imports_nothing_from_the_tests() -> None:
    """The test oracles (tests/oracles) and other test code do not ship with the package."""
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
           for path in sorted(PACKAGE.rglob("*.py")) for line, name in imports_of(path, "tests")
           if name == "tests" or name.startswith("tests.")]
    assert bad == []


def test_every_module_sits_in_a_layer() -> None:
    top = sorted(p.name for p in PACKAGE.iterdir() if p.name not in ("__pycache__",))
    assert top == sorted(["__init__.py", *LAYERS])


def test_each_package_says_what_lives_there() -> None:
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
        assert doc and ("import" in doc), layer


def test_modules_stay_under_the_line_limit() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, f"{rel}: {lines} lines"
