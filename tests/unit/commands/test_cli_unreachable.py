"""An unreachable broker or object store is a one-line error naming the endpoint, not a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_simulate_to_an_unreachable_broker_names_it() -> None:
    where = f"127.0.0.1:{closed_port()}"
    out = run_cli("simulate", "--vehicles", "2", "--duration", "5", "--to", "kafka", KAFKA_BOOTSTRAP=where)
    assert out.returncode == 1
    assert f"error: cannot reach Kafka at {where}" in out.stderr
    assert "scripts/services start" in out.stderr
    assert "Traceback" not in out.stderr and "╭" not in out.stderr
