"""The no-Docker mode: the Kafka broker and S3Proxy as local Java processes from Maven Central
jars, their configuration files, start with readiness, and stop of only what was started."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.tools.services.common import (
    KAFKA_VERSION,
    LOCALHOST,
    LOG_TAIL_ON_FAILURE,
    MAVEN_DIR,
    POLL_INTERVAL_S,
    S3PROXY_VERSION,
    STOP_GRACE_S,
    ServiceError,
    ServiceSettings,
    _port_in_use,
    probe,
    say,
)

# --------------------------------------------------------------------------------------
# Processes


def _proc_args(pid: int) -> list[str] | None:
    """The argv of a process, or None when it is gone (a zombie's argv is empty)."""
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            raw = (proc / "cmdline").read_bytes()
        except OSError:
            return None
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part] or None
    done = subprocess.run(
        ["ps", "-p", str(pid), "-o", "args="], capture_output=True, text=True, check=False
    )
    line = done.stdout.strip()
    return line.split() if done.returncode == 0 and line else None


def _all_pids() -> list[int]:
    if Path("/proc").is_dir():
        return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    done = subprocess.run(["ps", "-A", "-o", "pid="], capture_output=True, text=True, check=False)
    return [int(word) for word in done.stdout.split() if word.isdigit()]


# Servers launched by this Python process. Their Popen objects answer whether they still
# run (and collect the exit status, so a stopped server leaves no zombie when start() and
# stop() run in one process, as in tests).
_launched: dict[int, subprocess.Popen[bytes]] = {}


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        done = subprocess.run(
            ["ps", "-p", str(pid), "-o", "stat="], capture_output=True, text=True, check=False
        )
        return done.stdout.strip().startswith("Z")
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _alive(pid: int) -> bool:
    """Whether the process runs. Not judged by its command line: while the java launcher
    re-executes itself, /proc/PID/cmdline reads empty for a moment."""
    process = _launched.get(pid)
    if process is not None:
        if process.poll() is None:
            return True
        del _launched[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


@dataclass(frozen=True)
class LocalService:
    """One Java server run from cached Maven jars, identified by its config file."""

    name: str  # "kafka" or "s3"
    label: str  # for messages and the log file name
    settings: ServiceSettings

    @property
    def home(self) -> Path:
        return self.settings.base_dir / ("kafka" if self.name == "kafka" else "s3")

    @property
    def config(self) -> Path:
        """The properties file; its absolute path in argv marks this instance's process."""
        return self.home / ("server.properties" if self.name == "kafka" else "s3proxy.properties")

    @property
    def libs(self) -> Path:
        return self.settings.cache_dir / ("kafka-libs" if self.name == "kafka" else "s3proxy-libs")

    @property
    def pom(self) -> Path:
        return MAVEN_DIR / ("kafka" if self.name == "kafka" else "s3proxy") / "pom.xml"

    @property
    def log(self) -> Path:
        return self.settings.base_dir / "logs" / f"{self.label}.log"

    @property
    def pid_file(self) -> Path:
        return self.settings.base_dir / "run" / f"{self.label}.pid"

    @property
    def ports(self) -> list[tuple[int, str]]:
        """The ports this server listens on, with the variables that set them."""
        if self.name == "kafka":
            return [
                (self.settings.kafka_port, "KAFKA_PORT"),
                (self.settings.controller_port, "KAFKA_CONTROLLER_PORT"),
            ]
        return [(self.settings.s3_port, "S3_PORT")]

    def recorded_pid(self) -> int | None:
        """The pid in the pid file if that process is alive and is this instance's server."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_ours(pid) else None

    def _is_ours(self, pid: int) -> bool:
        if not _alive(pid):
            return False
        args = _proc_args(pid)
        return args is not None and str(self.config) in args

    def processes(self) -> list[int]:
        """Every live process running this instance's server: the recorded one and strays."""
        found = {pid for pid in _all_pids() if pid != os.getpid() and self._is_ours(pid)}
        recorded = self.recorded_pid()
        if recorded is not None:
            found.add(recorded)
        return sorted(found)


def _kafka(settings: ServiceSettings) -> LocalService:
    return LocalService("kafka", "kafka", settings)


def _s3(settings: ServiceSettings) -> LocalService:
    return LocalService("s3", "s3proxy", settings)


def _local_services(settings: ServiceSettings) -> list[LocalService]:
    return [_kafka(settings), _s3(settings)]


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    java = str(candidate) if candidate and candidate.exists() else shutil.which("java")
    if not java:
        raise ServiceError("java not found: install a Java 17+ runtime (or set JAVA_HOME)")
    done = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    text = done.stderr + done.stdout
    try:
        version = text.split('"')[1]
        major = int(version.split(".")[0])
    except (IndexError, ValueError):
        major = 0
    if major < 17:
        raise ServiceError(f"{java} is not Java 17 or newer:\n{text.strip()}")
    return java


def _jars(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jar")) if folder.is_dir() else []


def ensure_jars(service: LocalService) -> None:
    """Fetch the server's runtime jars with Maven once; a cache with jars is never refetched.

    Maven writes into a temporary folder that is renamed into place only when complete, so a
    half-finished download is never taken for a cache.
    """
    if _jars(service.libs):
        return
    version = S3PROXY_VERSION if service.name == "s3" else KAFKA_VERSION
    product = {"kafka": "Kafka", "s3": "S3Proxy", "mirrormaker": "MirrorMaker 2"}[service.name]
    mvn = shutil.which("mvn")
    if not mvn:
        raise ServiceError(f"no {product} jars in {service.libs} and mvn is not installed")
    if not service.pom.is_file():
        raise ServiceError(f"{service.pom} is missing (run from a checkout of the repository)")
    say(f"fetching {product} {version} jars with Maven (first run only)...")
    service.libs.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=f".{service.libs.name}.", dir=service.libs.parent))
    try:
        done = subprocess.run(
            [
                mvn,
                "-B",
                "-q",
                "-Dstyle.color=never",
                "-f",
                str(service.pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=service.pom.parent,
        )
        if done.returncode != 0 or not _jars(staging):
            output = (done.stdout + done.stderr).strip()
            raise ServiceError(f"Maven could not fetch the {product} jars:\n{output}")
        if service.libs.exists():  # an empty or broken folder from an old run
            shutil.rmtree(service.libs)
        staging.rename(service.libs)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    say(
        f"{service.name}: {len(_jars(service.libs))} jars in {service.libs} "
        f"({time.monotonic() - started:.1f}s)"
    )


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


KAFKA_LOG4J = """\
# reload4j (log4j 1.x API) config for the local broker: everything to stdout, which
# scripts/services redirects to logs/kafka.log.
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.controller=INFO
log4j.logger.state.change.logger=WARN
"""

S3PROXY_LOGBACK = """\
<configuration>
  <!-- Without a config logback logs at DEBUG; keep the local store at INFO, on stdout. -->
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>[%d{yyyy-MM-dd HH:mm:ss.SSS}] %-5level %msg \\(%logger{36}\\)%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
"""


def _kafka_properties(settings: ServiceSettings, data_dir: Path) -> str:
    port, controller = settings.kafka_port, settings.controller_port
    return f"""\
# Single-node KRaft broker for local development and tests (written by scripts/services).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{LOCALHOST}:{controller}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://{LOCALHOST}:{port},CONTROLLER://{LOCALHOST}:{controller}
advertised.listeners=PLAINTEXT://{LOCALHOST}:{port}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data_dir}
num.partitions=6
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
# A 2-core machine: few threads, and data kept a day at most.
num.network.threads=2
num.io.threads=4
# Replays carry their recorded (past) timestamps: time-based retention would delete them
# on arrival, so the local broker keeps data by size only.
log.retention.ms=-1
log.retention.bytes=1073741824
log.segment.bytes=67108864
log.retention.check.interval.ms=60000
"""


def _new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, url-safe base64 without padding, not led by '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _prepare_kafka(service: LocalService, java: str) -> list[str]:
    settings, home = service.settings, service.home
    data_dir = home / "data"
    log4j = home / "log4j.properties"
    _write(service.config, _kafka_properties(settings, data_dir))
    _write(log4j, KAFKA_LOG4J)
    log4j_flag = f"-Dlog4j.configuration=file:{log4j}"
    classpath = f"{service.libs}/*"
    marker = home / ".formatted"
    if not marker.exists():
        cluster_id = _new_cluster_id()
        say(f"kafka: formatting storage in {data_dir} (cluster id {cluster_id}, first run only)")
        done = subprocess.run(
            [
                java,
                log4j_flag,
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                "-t",
                cluster_id,
                "-c",
                str(service.config),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ServiceError(
                f"formatting Kafka storage failed:\n{(done.stdout + done.stderr).strip()}"
            )
        marker.write_text(cluster_id + "\n")
    return [
        java,
        "-Xmx1g",
        "-Xms256m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        log4j_flag,
        "-cp",
        classpath,
        "kafka.Kafka",
        str(service.config),
    ]


def _s3proxy_properties(settings: ServiceSettings, data_dir: Path) -> str:
    # S3Proxy quirks seen with the minio client (SigV4, path style, us-east-1):
    # - The legacy `filesystem` provider logs that it is deprecated and, in a recursive
    #   listing, also returns every folder as an extra key ("a/", "a/b/") after the objects.
    #   `filesystem-nio2` lists only objects, so it is used here; it requires
    #   jclouds.identity/credential to be set even though they are not checked.
    # - User metadata (x-amz-meta-*) round-trips, keys come back lower-cased; it is kept in
    #   extended attributes (user.*), so the data folder must be on a file system that has
    #   them (ext4, xfs, btrfs do; older tmpfs does not).
    # - Listing with include_user_meta (a MinIO extension) returns no metadata: use stat.
    return f"""\
# Local S3-compatible store for development and tests (written by scripts/services).
s3proxy.endpoint=http://{LOCALHOST}:{settings.s3_port}
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity={settings.access_key}
s3proxy.credential={settings.secret_key}
jclouds.provider=filesystem-nio2
jclouds.identity={settings.access_key}
jclouds.credential={settings.secret_key}
jclouds.filesystem.basedir={data_dir}
"""


def _prepare_s3(service: LocalService, java: str) -> list[str]:
    home = service.home
    data_dir = home / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    logback = home / "logback.xml"
    # Holds the secret key: readable by the owner only.
    _write(service.config, _s3proxy_properties(service.settings, data_dir), mode=0o600)
    _write(logback, S3PROXY_LOGBACK)
    return [
        java,
        "-Xmx512m",
        "-Djava.awt.headless=true",
        f"-Dlogback.configurationFile={logback}",
        "-cp",
        f"{service.libs}/*",
        "org.gaul.s3proxy.Main",
        "--properties",
        str(service.config),
    ]


def _launch(service: LocalService, command: list[str]) -> int:
    service.log.parent.mkdir(parents=True, exist_ok=True)
    service.pid_file.parent.mkdir(parents=True, exist_ok=True)
    if service.log.exists():  # keep one previous run for post-mortems
        service.log.replace(service.log.with_name(service.log.name + ".1"))
    with service.log.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=service.home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _launched[process.pid] = process
    service.pid_file.write_text(f"{process.pid}\n")
    return process.pid


def tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a text file (empty when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            block = min(size, max(65536, lines * 400))
            handle.seek(size - block)
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _failure(service: LocalService, why: str) -> ServiceError:
    last = tail(service.log, LOG_TAIL_ON_FAILURE)
    return ServiceError(
        f"{service.name}: {why}\n--- last {LOG_TAIL_ON_FAILURE} lines of {service.log} ---\n{last}"
    )


def _answers(service: LocalService, pid: int, since: float) -> bool:
    """One readiness poll: True once it answers; raises if it died or its deadline passed."""
    if not _alive(pid):
        raise _failure(service, f"process {pid} exited before answering")
    why = probe(service.name, service.settings)
    if why is None:
        return True
    if time.monotonic() >= since + service.settings.timeout_s:
        _terminate(service, [pid])
        raise _failure(
            service,
            f"no answer at {service.settings.endpoint(service.name)} within "
            f"{service.settings.timeout_s:.0f}s (last: {why}); stopped pid {pid}",
        )
    return False


def _wait_all_ready(waiting: list[tuple[LocalService, int, float]]) -> None:
    """Poll every starting server in turn until each answers (or one fails)."""
    pending = list(waiting)
    while pending:
        for entry in list(pending):
            service, pid, started = entry
            if _answers(service, pid, started):
                pending.remove(entry)
                elapsed = time.monotonic() - started
                say(f"{service.name}: started pid {pid}, ready in {elapsed:.1f}s")
        if pending:
            time.sleep(POLL_INTERVAL_S)


def _terminate(service: LocalService, pids: list[int]) -> list[int]:
    """SIGTERM each process group, wait up to a deadline, then SIGKILL; return survivors."""

    def send(sig: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:  # started as a session leader: take its group
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)

    def wait(seconds: float) -> list[int]:
        deadline = time.monotonic() + seconds
        while True:
            alive = [pid for pid in pids if _alive(pid)]
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(0.1)

    send(signal.SIGTERM)
    alive = wait(STOP_GRACE_S)
    if alive:
        say(f"{service.name}: still running after {STOP_GRACE_S:.0f}s, sending SIGKILL to {alive}")
        pids = alive
        send(signal.SIGKILL)
        alive = wait(10.0)
    return alive


def _warn_ephemeral_ports(ports: list[int]) -> None:
    """Say so when a port lies in the kernel's range for outgoing connections: any client
    (a readiness probe too) may be given it as its own port, and the server then fails to
    bind it with "Address already in use"."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return
    for port in ports:
        if low <= port <= high:
            say(
                f"warning: port {port} is in the ephemeral range {low}-{high}; prefer one below {low}"
            )


def _start_local(settings: ServiceSettings) -> None:
    services = _local_services(settings)
    to_start: list[LocalService] = []
    waiting: list[tuple[LocalService, int, float]] = []
    for service in services:
        endpoint = settings.endpoint(service.name)
        pid = service.recorded_pid()
        why = probe(service.name, settings)
        if why is None:
            owner = f" (pid {pid})" if pid else " (not started by this folder)"
            say(f"{service.name}: already answering at {endpoint}{owner}, nothing to do")
        elif pid is not None:
            say(f"{service.name}: pid {pid} is running but not answering yet, waiting for it")
            waiting.append((service, pid, time.monotonic()))
        elif taken := [(port, var) for port, var in service.ports if _port_in_use(port)]:
            port, variable = taken[0]
            raise ServiceError(
                f"{service.name}: port {port} is taken by a program that is not this "
                f"{service.name} server; free it or set {variable}"
            )
        else:
            to_start.append(service)
    if to_start:
        _warn_ephemeral_ports([port for service in to_start for port, _ in service.ports])
        java = _java()
        for service in to_start:
            ensure_jars(service)
        for service in to_start:
            prepare = _prepare_kafka if service.name == "kafka" else _prepare_s3
            command = prepare(service, java)
            started = time.monotonic()
            pid = _launch(service, command)
            say(
                f"{service.name}: starting pid {pid} at {settings.endpoint(service.name)} "
                f"(log {service.log})"
            )
            waiting.append((service, pid, started))
    try:
        _wait_all_ready(waiting)
    except ServiceError:
        # Leave nothing half-started: stop every server this call launched.
        for service, pid, _ in waiting:
            if service in to_start and _alive(pid):
                _terminate(service, [pid])
                say(f"{service.name}: stopped pid {pid} as well")
        raise


def _stop_local(settings: ServiceSettings) -> None:
    problems: list[str] = []
    for service in _local_services(settings):
        pids = service.processes()
        if not pids:
            say(f"{service.name}: not running")
        else:
            started = time.monotonic()
            survivors = _terminate(service, pids)
            if survivors:
                problems.append(f"{service.name}: pids {survivors} survived SIGKILL")
            else:
                say(
                    f"{service.name}: stopped pid {', '.join(map(str, pids))} "
                    f"in {time.monotonic() - started:.1f}s"
                )
        left = service.processes()
        if left:
            problems.append(f"{service.name}: processes {left} still run {service.config}")
        else:
            service.pid_file.unlink(missing_ok=True)
    if problems:
        raise ServiceError("; ".join(problems))


