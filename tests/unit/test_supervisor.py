"""Supervising a trivial long-running command: start, scale up and down, stop, crash, kill."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.tools.supervisor import Supervisor, SupervisorError

# A stand-in worker: serves HTTP on METRICS_PORT (so readiness can be asked), answers with its
# replica index and data dir, and keeps a child process in its group (stop must end it too).
STAND_IN = r"""
import http.server, os, signal, subprocess, sys, pathlib
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
pathlib.Path(os.environ["DATA_DIR"], "child.pid").write_text(str(child.pid))
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, lambda *_: print("TERM received, ignored", flush=True))
else:
    def stop(*_):
        child.terminate(); child.wait(); print("graceful stop", flush=True); os._exit(0)
    signal.signal(signal.SIGTERM, stop)
body = f"{os.environ['PIPELINE_REPLICA']} {os.environ['DATA_DIR']} {os.environ['WEB_PORT']}".encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args):
        pass
print("serving", os.environ["METRICS_PORT"], flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["METRICS_PORT"])), Handler).serve_forever()
"""


def free_base(span: int = 8) -> int:
    """A base port with `span` free ports above it (checked, not assumed)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + span >= 65535:
            continue
        ok = True
        for port in range(base, base + span):
            with socket.socket() as sock:
                try:
                    sock.bind(("0.0.0.0", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        return response.read().decode()


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    sup = Supervisor(tmp_path / "workers", command=[sys.executable, "-c", STAND_IN],
                     metrics_base=free_base(), web_base=free_base(), stop_timeout_s=5,
                     ready_timeout_s=20)
    yield sup
    sup.stop()


def pids(sup: Supervisor) -> dict[int, int]:
    return {s.replica.index: s.replica.pid for s in sup.status() if s.alive}


def child_pid(sup: Supervisor, index: int) -> int:
    return int((sup.root / f"worker-{index}" / "child.pid").read_text())


def test_start_two_scale_to_three_then_one_then_stop(supervisor: Supervisor) -> None:
    sup = supervisor
    result = sup.start(2)
    assert result.started == [0, 1]
    assert result.replicas == 2
    first = pids(sup)
    assert sorted(first) == [0, 1]
    config = sup.config()
    for index in (0, 1):
        replica_index, data_dir, web_port = fetch(config.metrics_base + index).split()
        assert int(replica_index) == index
        assert Path(data_dir) == sup.root / f"worker-{index}"
        assert int(web_port) == config.web_base + index
        log_lines = (sup.root / f"worker-{index}.log").read_text().splitlines()
        assert log_lines.count(f"serving {config.metrics_base + index}") == 1

    result = sup.scale(3)
    assert result.started == [2]
    now = pids(sup)
    assert now[0] == first[0] and now[1] == first[1]  # the running ones were left alone
    assert fetch(config.metrics_base + 2).startswith("2 ")

    children = {i: child_pid(sup, i) for i in (0, 1, 2)}
    result = sup.scale(1)
    assert result.stopped == [2, 1]  # highest index first
    assert result.killed == []
    assert not alive(now[2]) and not alive(now[1])
    assert not alive(children[2]) and not alive(children[1])
    assert alive(now[0]) and alive(children[0])
    assert "graceful stop" in (sup.root / "worker-2.log").read_text()
    assert pids(sup) == {0: first[0]}

    result = sup.stop()
    assert result.stopped == [0]
    assert result.replicas == 0
    assert not alive(now[0]) and not alive(children[0])
    assert sup.status() == []


def test_state_survives_the_supervisor_object(supervisor: Supervisor) -> None:
    supervisor.start(2)
    other = Supervisor(supervisor.root)  # a later command: no arguments, reads the state
    assert [s.alive for s in other.status()] == [True, True]
    assert other.config().command == supervisor.config().command
    state = json.loads(supervisor.state_path.read_text())
    assert [r["index"] for r in state["replicas"]] == [0, 1]
    other.scale(3)  # launched like the others: same command, next ports
    assert fetch(supervisor.config().metrics_base + 2).startswith("2 ")
    assert other.stop().stopped == [2, 1, 0]


def test_a_dead_replica_is_noticed_and_replaced(supervisor: Supervisor) -> None:
    supervisor.start(2)
    victim = pids(supervisor)[1]
    os.killpg(victim, 9)
    # the whole group goes, not only its leader: a replica counts as running while any member
    # of its group is left, and the members may outlive the leader by a moment
    deadline = time.monotonic() + 5
    while (alive(victim) or supervisor.alive_count() != 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(victim)
    assert supervisor.alive_count() == 1
    result = supervisor.scale(2)
    assert result.exited == [1]
    assert result.started == [1]
    assert pids(supervisor)[1] != victim


def test_sigterm_ignored_means_sigkill_after_the_deadline(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "w", command=[sys.executable, "-c", STAND_IN], env={"IGNORE_TERM": "1"},
                     metrics_base=free_base(), web_base=0, stop_timeout_s=0.5, ready_timeout_s=20)
    sup.start(1)
    pid = pids(sup)[0]
    child = child_pid(sup, 0)
    log = Path(sup.status()[0].replica.log)
    result = sup.stop()
    assert result.killed == [0]
    assert "TERM received, ignored" in log.read_text()  # SIGTERM came first, SIGKILL only after
    assert not alive(pid) and not alive(child)


def test_a_replica_that_dies_at_start_is_an_error_with_its_log(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "w", command=[sys.executable, "-c", "import sys; print('bad config'); sys.exit(3)"],
                     metrics_base=free_base(), web_base=0, ready_timeout_s=10)
    with pytest.raises(SupervisorError, match="bad config"):
        sup.start(1)
    assert sup.alive_count() == 0


def test_a_busy_port_is_refused_by_name(tmp_path: Path) -> None:
    base = free_base()
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", base + 1))
        holder.listen()
        sup = Supervisor(tmp_path / "w", command=[sys.executable, "-c", STAND_IN], metrics_base=base,
                         web_base=0, stop_timeout_s=5, ready_timeout_s=20)
        try:
            with pytest.raises(SupervisorError, match=f"metrics port {base + 1}"):
                sup.start(2)
            assert [s.replica.index for s in sup.status() if s.alive] == [0]
        finally:
            sup.stop()


def test_a_stopped_set_does_not_pin_the_next_start(tmp_path: Path) -> None:
    root = tmp_path / "w"
    first = Supervisor(root, command=[sys.executable, "-c", STAND_IN], metrics_base=free_base(),
                       web_base=0, stop_timeout_s=5, ready_timeout_s=20)
    first.start(1)
    assert Supervisor(root).config().command == first.config().command  # running: launched alike
    first.stop()
    # Nothing runs any more: a later start takes the defaults, not the old command.
    assert Supervisor(root).config().command != first.config().command
