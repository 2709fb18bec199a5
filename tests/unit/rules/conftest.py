"""Helpers for the rules tests: rules files in temporary directories and small event lists."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.rules.loader import RuleSet, load_rules

VIN = "VF1AG000712345678"


def event(type_: str = "fleet.battery.low_soc", *, vin: str = VIN, **data: Any) -> dict[str, Any]:
    """A derived event as the handlers emit it (subject, partitionkey and data.vin = VIN)."""
    return {"type": type_, "source": f"/vehicles/{vin}", "subject": vin, "partitionkey": vin,
            "time": 1_700_000_000_000, "data": {"vin": vin, **data}}


@pytest.fixture
def write_rules(tmp_path: Path) -> Callable[..., Path]:
    """Write YAML files into a fresh rules directory: write_rules(routes_yaml, name="r.yaml")."""
    rules_dir = tmp_path / "routes"
    rules_dir.mkdir()

    def write(text: str, name: str = "routes.yaml") -> Path:
        (rules_dir / name).write_text(textwrap.dedent(text))
        return rules_dir

    return write


@pytest.fixture
def rules_from(write_rules: Callable[..., Path]) -> Callable[[str], RuleSet]:
    """Load a RuleSet from YAML text."""

    def load(text: str) -> RuleSet:
        return load_rules(write_rules(text), env={})

    return load
