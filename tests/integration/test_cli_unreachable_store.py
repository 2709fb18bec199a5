"""`pipeline reconcile` with the broker up but the object store unreachable: a one-line error
naming the store's endpoint, not a traceback. (Reconcile reads the broker first, so this
needs the real broker that scripts/test starts; the unreachable broker case is a unit test.)"""

from __future__ import annotations

import pytest

from tests.unit.commands.test_cli_unreachable import closed_port, run_cli

pytestmark = pytest.mark.integration


def test_reconcile_against_an_unreachable_store_names_it() -> None:
    where = f"http://127.0.0.1:{closed_port()}"
    out = run_cli("reconcile", S3_ENDPOINT=where)
    assert out.returncode == 1
    assert f"error: cannot reach the object store at {where}" in out.stderr
    assert "Traceback" not in out.stderr and "╭" not in out.stderr
