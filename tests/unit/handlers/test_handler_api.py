"""The handler author's API is `pipeline.core.handlers` alone: functions/ and its README import
nothing else from `pipeline`, and every name the API lists is there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import pipeline.core.handlers as api

REPO = Path(__file__).resolve().parents[3]
FUNCTIONS = REPO / "functions"
PUBLIC = "pipeline.core.handlers"
# the worker's machinery: importable by the runtime, never part of the author's API
INTERNAL = ("HandlerRunner", "HandlerSpec", "Registry", "StateStore", "StateView", "FunctionsWatcher",
            "HandlerConfig", "BatchView", "build_runner", "load_functions", "load_handler_config",
            "silent_batch", "runner", "loader", "registry", "state", "config", "context", "view", "testing")


def off_api_imports(source: str, where: str) -> list[str]:
    """Imports of `pipeline` other than names of the public API's `__all__`, as `where:line name`."""
    bad: list[str] = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == PUBLIC:
                bad += [f"{where}:{node.lineno} {PUBLIC}.{a.name}" for a in node.names if a.name not in api.__all__]
            elif node.module.split(".")[0] == "pipeline":
                bad += [f"{where}:{node.lineno} {node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            bad += [f"{where}:{node.lineno} {a.name}" for a in node.names if a.name.split(".")[0] == "pipeline"]
    return bad


def readme_blocks() -> list[tuple[int, str]]:
    """(line, code) of each ```python block of functions/README.md."""
    text = (FUNCTIONS / "README.md").read_text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1))
            for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


def test_handler_files_import_only_the_public_api() -> None:
    files = sorted(FUNCTIONS.rglob("*.py"))
    assert files
    bad = [b for p in files for b in off_api_imports(p.read_text(), str(p.relative_to(REPO)))]
    assert bad == [], f"functions/ may import from pipeline only `from {PUBLIC} import <its __all__>`"


def test_readme_examples_import_only_the_public_api() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 3
    bad = [b for line, code in blocks for b in off_api_imports(code, f"functions/README.md:{line}")]
    assert bad == []


def test_the_check_sees_imports_past_the_api() -> None:
    source = ("from pipeline.core.handlers import handler, ops\n"
              "from pipeline.core.handlers import silent_batch\n"
              "from pipeline.core.handlers.testing import HandlerHarness\n"
              "from pipeline.core import batch\n"
              "def f():\n    import pipeline.core.handlers.runner\n")
    assert off_api_imports(source, "x.py") == [
        "x.py:2 pipeline.core.handlers.silent_batch", "x.py:3 pipeline.core.handlers.testing.HandlerHarness",
        "x.py:4 pipeline.core.batch", "x.py:6 pipeline.core.handlers.runner"]


def test_every_name_of_the_api_resolves_and_is_documented() -> None:
    assert sorted(set(api.__all__)) == sorted(api.__all__)
    missing = [n for n in api.__all__ if getattr(api, n, None) is None]
    assert missing == []
    namespace: dict[str, object] = {}
    exec(f"from {PUBLIC} import *", namespace)  # noqa: S102 - what a star import gives
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(api.__all__)
    doc = api.__doc__ or ""
    assert [n for n in api.__all__ if not re.search(rf"^  {n}\b", doc, re.M)] == []


def test_the_api_leaves_the_machinery_out() -> None:
    assert [n for n in INTERNAL if n in api.__all__] == []
    assert len(api.__all__) <= 16  # one small module: grow it only for what authors need


@pytest.mark.parametrize("module", ["runner", "loader", "registry", "state", "config"])
def test_the_machinery_stays_importable(module: str) -> None:
    import importlib

    assert importlib.import_module(f"{PUBLIC}.{module}").__name__ == f"{PUBLIC}.{module}"


def test_the_readmes_first_handler_and_its_test_run_as_documented(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    text = (FUNCTIONS / "README.md").read_text()
    first = text.split("## Write your first handler", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    test = text.split("### Test it with the in-memory helpers", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / "weak_12v.py").write_text(first)
    monkeypatch.chdir(tmp_path)  # the example opens functions/weak_12v.py
    namespace: dict[str, object] = {}
    exec(compile(test, "functions/README.md", "exec"), namespace)  # noqa: S102 - the documented test
    test_fn = namespace["test_weak_12v"]
    assert callable(test_fn)
    test_fn()
