"""Local worker replicas for the no-Docker path.

Each replica is a detached process group (its own session) with its own metrics port
(base + index), web port, data dir and log file under `.services/workers/`. The replica
list lives in a JSON state file there, so any later command (`pipeline workers status`,
the autoscaler) finds and manages the replicas an earlier one started.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.runtime.settings import REPO_ROOT, Settings, get_settings

DEFAULT_ROOT = REPO_ROOT / ".services" / "workers"
STATE_FILE = "state.json"
LOCK_FILE = "supervisor.lock"
_HAVE_PROC = Path("/proc/self/stat").exists()


class SupervisorError(PipelineError):
    """A replica could not be started or stopped as asked."""


def default_worker_command() -> list[str]:
    """`PIPELINE_WORKER_CMD` (shell words) if set, else this interpreter's `pipeline worker`."""
    configured = os.environ.get("PIPELINE_WORKER_CMD")
    if configured:
        return shlex.split(configured)
    return [sys.executable, "-m", "pipeline.cli.main", "worker"]


@dataclass
class Replica:
    """One supervised worker process and what it was given."""

    index: int
    pid: int
    started_at: float  # epoch seconds
    proc_start: int | None  # kernel start time of the pid: guards against pid reuse
    metrics_port: int
    web_port: int
    data_dir: str
    log: str


@dataclass(frozen=True)
class ReplicaStatus:
    """A replica as found now."""

    replica: Replica
    alive: bool

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self.replica), "alive": self.alive}


@dataclass
class ScaleResult:
    """What a `scale` call did, by replica index."""

    replicas: int = 0
    started: list[int] = field(default_factory=list)
    stopped: list[int] = field(default_factory=list)  # exited after SIGTERM within the deadline
    killed: list[int] = field(default_factory=list)  # needed SIGKILL
    exited: list[int] = field(default_factory=list)  # found dead and removed from the state
    not_ready: list[int] = field(default_factory=list)  # started, metrics port silent at deadline

    def summary(self) -> str:
        parts = [f"replicas={self.replicas}"]
        for name in ("started", "stopped", "killed", "exited", "not_ready"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name}={value}")
        return " ".join(parts)


@dataclass
class WorkerConfig:
    """How replicas are launched; stored with the state so later commands launch alike."""

    command: list[str]
    env: dict[str, str]
    metrics_base: int
    web_base: int


# --- process facts (Linux /proc, with a portable fallback) ---------------------------------


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time) of a pid, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[2]), int(fields[19])


def _reap(pid: int) -> None:
    """Collect the exit status if the pid is our own child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _pid_alive(pid: int, proc_start: int | None) -> bool:
    _reap(pid)
    if _HAVE_PROC:
        stat = _proc_stat(pid)
        if stat is None or stat[0] == "Z":
            return False
        return proc_start is None or stat[2] == proc_start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    if not _HAVE_PROC:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None and stat[1] == pgid and stat[0] != "Z":
            members.append(int(entry.name))
    return members


def _replica_running(replica: Replica) -> bool:
    """The replica's leader is alive, or (leader gone) its group still has members."""
    if _pid_alive(replica.pid, replica.proc_start):
        return True
    leader = _proc_stat(replica.pid) if _HAVE_PROC else None
    if leader is not None and leader[0] != "Z":
        return False  # the pid now belongs to someone else; so does any group of that id
    return bool(_group_members(replica.pid))


def _signal_group(replica: Replica, sig: signal.Signals) -> None:
    if not _replica_running(replica):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(replica.pid, sig)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _answers(port: int, timeout_s: float = 0.5) -> bool:
    """The port serves HTTP (any status counts: the process is up and listening)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file (empty if missing)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --- the supervisor ----------------------------------------------------------------------


class Supervisor:
    """Starts, stops and reports local worker replicas.

    Arguments left as None come from the state file while replicas run (so new ones are
    launched like them), else from `Settings` (`METRICS_PORT`, `WEB_PORT`) and
    `default_worker_command()`.
    """

    def __init__(self, root: Path | None = None, *, command: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None, metrics_base: int | None = None,
                 web_base: int | None = None, stop_timeout_s: float = 30.0,
                 ready_timeout_s: float = 60.0, settings: Settings | None = None) -> None:
        self.root = Path(root) if root is not None else DEFAULT_ROOT
        self.stop_timeout_s = stop_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self._command = list(command) if command is not None else None
        self._env = dict(env) if env is not None else None
        self._metrics_base = metrics_base
        self._web_base = web_base
        self._settings = settings

    # state -------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def _read_state(self) -> tuple[WorkerConfig | None, list[Replica]]:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None, []
        except json.JSONDecodeError as exc:
            raise SupervisorError(f"{self.state_path}: unreadable state: {exc}") from exc
        config = WorkerConfig(**raw["config"]) if raw.get("config") else None
        return config, [Replica(**r) for r in raw.get("replicas", [])]

    def _write_state(self, config: WorkerConfig, replicas: list[Replica]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        body = {"config": asdict(config), "replicas": [asdict(r) for r in sorted(replicas, key=lambda r: r.index)]}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        os.replace(tmp, self.state_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One scale operation at a time across processes (CLI, autoscaler)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK_FILE).open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _config(self, stored: WorkerConfig | None) -> WorkerConfig:
        settings = self._settings or get_settings()
        return WorkerConfig(
            command=self._command or (stored.command if stored else default_worker_command()),
            env=self._env if self._env is not None else (stored.env if stored else {}),
            metrics_base=self._pick(self._metrics_base, stored.metrics_base if stored else None,
                                    settings.metrics_port),
            web_base=self._pick(self._web_base, stored.web_base if stored else None, settings.web_port),
        )

    @staticmethod
    def _pick(explicit: int | None, stored: int | None, default: int) -> int:
        if explicit is not None:
            return explicit
        return stored if stored is not None else default

    # queries -----------------------------------------------------------------------------
    def status(self) -> list[ReplicaStatus]:
        """Every recorded replica and whether it runs."""
        _, replicas = self._read_state()
        return [ReplicaStatus(r, _replica_running(r)) for r in replicas]

    def alive_count(self) -> int:
        return sum(1 for s in self.status() if s.alive)

    def config(self) -> WorkerConfig:
        """The launch configuration new replicas would get."""
        stored, replicas = self._read_state()
        return self._config(stored if any(_replica_running(r) for r in replicas) else None)

    # actions -----------------------------------------------------------------------------
    def start(self, replicas: int) -> ScaleResult:
        """Ensure `replicas` run (idempotent: the same as `scale`)."""
        return self.scale(replicas)

    def stop(self) -> ScaleResult:
        """Stop every replica: nothing of theirs is left running afterwards."""
        return self.scale(0)

    def scale(self, replicas: int) -> ScaleResult:
        """Run exactly replicas 0..n-1: start the missing ones, stop the rest (highest first).

        Replicas found dead are dropped from the state and, if wanted, started again.
        """
        if replicas < 0:
            raise SupervisorError(f"replica count must be >= 0, got {replicas}")
        with self._locked():
            stored, recorded = self._read_state()
            result = ScaleResult()
            running: dict[int, Replica] = {}
            for replica in recorded:
                if _replica_running(replica):
                    running[replica.index] = replica
                else:
                    result.exited.append(replica.index)
            # Launch like the running replicas; with none running, start from the defaults.
            config = self._config(stored if running else None)

            surplus = sorted((r for i, r in running.items() if i >= replicas), key=lambda r: -r.index)
            if surplus:
                stopped, killed = self._stop(surplus)
                result.stopped, result.killed = stopped, killed
                for replica in surplus:
                    running.pop(replica.index)
                self._write_state(config, list(running.values()))

            missing = [i for i in range(replicas) if i not in running]
            launched: list[Replica] = []
            try:
                for index in missing:
                    replica = self._launch(index, config)
                    launched.append(replica)
                    running[index] = replica
                    self._write_state(config, list(running.values()))
                result.not_ready = self._wait_ready(launched)
            except SupervisorError:
                self._write_state(config, [r for r in running.values() if _replica_running(r)])
                raise
            result.started = [r.index for r in launched]
            self._write_state(config, list(running.values()))
            result.replicas = len(running)
            return result

    def _launch(self, index: int, config: WorkerConfig) -> Replica:
        metrics_port = config.metrics_base + index if config.metrics_base else 0
        web_port = config.web_base + index if config.web_base else 0
        for name, port in (("metrics", metrics_port), ("web", web_port)):
            if port and not _port_free(port):
                raise SupervisorError(
                    f"replica {index}: {name} port {port} is already in use; stop what holds it "
                    f"or choose another base port"
                )
        data_dir = self.root / f"worker-{index}"
        data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.root / f"worker-{index}.log"
        env = dict(os.environ)
        env.update(config.env)
        env.update({
            "METRICS_PORT": str(metrics_port),
            "WEB_PORT": str(web_port),
            "DATA_DIR": str(data_dir),
            "PIPELINE_REPLICA": str(index),
        })
        with log_path.open("ab") as log_file:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            log_file.write(f"=== {stamp} replica {index}: {shlex.join(config.command)} "
                           f"(metrics {metrics_port}, web {web_port})\n".encode())
            log_file.flush()
            try:
                # Popen keeps no reference we need: the pid and /proc identify the replica later.
                proc = _spawn(config.command, env, log_file, cwd=REPO_ROOT)
            except OSError as exc:
                raise SupervisorError(f"replica {index}: cannot run {shlex.join(config.command)}: {exc}") from exc
        stat = _proc_stat(proc.pid) if _HAVE_PROC else None
        return Replica(index=index, pid=proc.pid, started_at=time.time(),
                       proc_start=stat[2] if stat else None, metrics_port=metrics_port,
                       web_port=web_port, data_dir=str(data_dir), log=str(log_path))

    def _wait_ready(self, launched: list[Replica]) -> list[int]:
        """Ask each new replica's metrics port until it answers; a replica that dies is an error."""
        deadline = time.monotonic() + self.ready_timeout_s
        pending = list(launched)
        while True:
            for replica in list(pending):
                if not _replica_running(replica):
                    raise SupervisorError(
                        f"replica {replica.index} (pid {replica.pid}) exited during start; "
                        f"log {replica.log}:\n{tail(Path(replica.log))}"
                    )
                if not replica.metrics_port or _answers(replica.metrics_port):
                    pending.remove(replica)
            if not pending or time.monotonic() >= deadline:
                return [r.index for r in pending]
            time.sleep(0.1)

    def _stop(self, replicas: list[Replica]) -> tuple[list[int], list[int]]:
        """SIGTERM each group (in the given order), wait with a deadline, then SIGKILL."""
        for replica in replicas:
            _signal_group(replica, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        remaining = [r for r in replicas if _replica_running(r)]
        while remaining and time.monotonic() < deadline:
            time.sleep(0.05)
            remaining = [r for r in remaining if _replica_running(r)]
        killed = [r.index for r in remaining]
        for replica in remaining:
            _signal_group(replica, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while remaining and time.monotonic() < deadline:
            time.sleep(0.05)
            remaining = [r for r in remaining if _replica_running(r)]
        if remaining:
            raise SupervisorError(f"replicas {[r.index for r in remaining]} survived SIGKILL")
        return [r.index for r in replicas if r.index not in killed], killed


def _spawn(command: Sequence[str], env: Mapping[str, str], log_file: Any,
           cwd: Path) -> subprocess.Popen[bytes]:
    """A detached replica: its own session and process group, output to its log."""
    return subprocess.Popen(
        list(command), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log_file,
        stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
    )
