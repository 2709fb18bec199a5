"""Load the shipped handlers from functions/ by file name, as the worker does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.core.handlers import import_file
from pipeline.core.handlers.config import load_handler_config
from pipeline.core.handlers.registry import HandlerSpec

FUNCTIONS = Path(__file__).resolve().parents[3] / "functions"


@pytest.fixture(scope="session")
def shipped() -> Callable[[str], HandlerSpec]:
    """`shipped("harsh_driving")` -> the spec of that handler (file functions/<name>.py unless mapped)."""
    files = {"battery_alerts": "battery"}

    def get(name: str) -> HandlerSpec:
        specs = import_file(FUNCTIONS / f"{files.get(name, name)}.py")
        return next(s for s in specs if s.name == name)

    return get


@pytest.fixture(scope="session")
def shipped_zones():  # type: ignore[no-untyped-def]
    return load_handler_config(FUNCTIONS / "handlers.yaml").zones
