"""scripts/services against real processes: idempotent start, status, stop that leaves nothing.

The main pair (Kafka and the S3 store at the configured ports) is started by scripts/test
before pytest runs; when it does not answer these tests fail. A second, independent pair
runs in a temporary folder on free ports, sharing only the jar cache.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.runtime.settings import Settings, get_settings
from pipeline.tools import services
from pipeline.tools.services import ServiceError, ServiceSettings

pytestmark = pytest.mark.integration


def _free_ports(count: int) -> list[int]:
    """Free ports below Linux's ephemeral range (32768+). A port from bind(0) lies inside
    it, and there a probe's own outgoing connection can take the port before the server
    binds it ("Address already in use")."""
    ports: list[int] = []
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError("no free ports between 20000 and 32000")


def _processes_using(path: Path) -> list[int]:
    """Live processes with `path` among their arguments (read from /proc, not the module)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(path) in args:
            found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still has a pid but no command line: it is not running.
    return not Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.fixture
def second_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceSettings]:
    """Environment for a second pair of services in tmp_path, on free ports, local mode."""
    main = ServiceSettings.from_settings(Settings())
    kafka_port, controller_port, s3_port = _free_ports(3)
    env = {
        "PIPELINE_SERVICES_MODE": "local",
        "PIPELINE_SERVICES_DIR": str(tmp_path / "services"),
        "PIPELINE_SERVICES_CACHE": str(main.cache_dir),
        "KAFKA_PORT": str(kafka_port),
        "KAFKA_CONTROLLER_PORT": str(controller_port),
        "S3_PORT": str(s3_port),
        "S3_ACCESS_KEY": "second-pair",
        "S3_SECRET_KEY": "second-pair-secret",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()  # the services read the process's settings, from this environment
    settings = ServiceSettings.from_settings(Settings())
    try:
        yield settings
    finally:
        services.stop(settings)  # also after a failed assertion: leave no process behind
        monkeypatch.undo()
        get_settings.cache_clear()  # later tests read the environment of the main pair again


def test_start_when_running_is_a_noop(capsys: pytest.CaptureFixture[str]) -> None:
    settings = ServiceSettings.from_settings(Settings())
    assert services.status(settings) == {"kafka": True, "s3": True}, (
        f"Kafka at {settings.kafka_bootstrap} and S3 at {settings.s3_endpoint} must answer "
        "(scripts/test starts them; by hand: scripts/services start)"
    )
    before = services.pids(settings)

    services.start(settings)

    assert services.pids(settings) == before
    assert services.status(settings) == {"kafka": True, "s3": True}
    out = capsys.readouterr().out
    assert f"kafka: already answering at {settings.kafka_bootstrap}" in out
    assert f"s3: already answering at {settings.s3_endpoint}" in out
    assert "starting pid" not in out


def test_second_pair_starts_stops_and_leaves_nothing(second_pair: ServiceSettings) -> None:
    services.start()  # reads the environment set by the fixture

    assert services.status() == {"kafka": True, "s3": True}
    pids = services.pids()
    kafka_pid, s3_pid = pids["kafka"], pids["s3"]
    assert kafka_pid is not None and s3_pid is not None
    kafka_config = second_pair.base_dir / "kafka" / "server.properties"
    s3_config = second_pair.base_dir / "s3" / "s3proxy.properties"
    assert _processes_using(kafka_config) == [kafka_pid]
    assert _processes_using(s3_config) == [s3_pid]
    assert (second_pair.base_dir / "kafka" / ".formatted").is_file()
    assert list((second_pair.base_dir / "logs").glob("*.log"))

    services.start()  # a second start changes nothing
    assert services.pids() == pids

    # A stray: the broker runs but its pid file is gone; stop finds it by its command line.
    (second_pair.base_dir / "run" / "kafka.pid").unlink()
    services.stop()

    assert _gone(kafka_pid) and _gone(s3_pid)
    assert _processes_using(kafka_config) == []
    assert _processes_using(s3_config) == []
    assert services.status() == {"kafka": False, "s3": False}
    assert services.pids() == {"kafka": None, "s3": None}
    assert not list((second_pair.base_dir / "run").glob("*.pid"))

    services.stop()  # stopping what is stopped is fine


def test_start_refuses_a_port_taken_by_something_else(second_pair: ServiceSettings) -> None:
    for port in (second_pair.kafka_port, second_pair.controller_port):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with pytest.raises(ServiceError, match=f"port {port} is taken"):
                services.start(second_pair)
    assert services.pids(second_pair) == {"kafka": None, "s3": None}


def test_broker_that_dies_is_reported_with_its_log(second_pair: ServiceSettings) -> None:
    # Marked as formatted but never formatted: the broker finds no meta.properties and exits.
    kafka_home = second_pair.base_dir / "kafka"
    kafka_home.mkdir(parents=True)
    (kafka_home / ".formatted").write_text("never-formatted\n")

    with pytest.raises(ServiceError) as failure:
        services.start(second_pair)

    message = str(failure.value)
    assert "exited before answering" in message
    assert str(second_pair.base_dir / "logs" / "kafka.log") in message
    assert "last 30 lines" in message
    assert "meta.properties" in message  # the broker's own words, from its log
    # Nothing is left half-started: the S3 server launched by the same call is stopped too.
    assert services.pids(second_pair) == {"kafka": None, "s3": None}
    assert _processes_using(second_pair.base_dir / "s3" / "s3proxy.properties") == []


def _topics(settings: ServiceSettings) -> set[str]:
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def listing() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(listing())


def _create_topic(settings: ServiceSettings, name: str) -> None:
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, 1, 1)])
        finally:
            await admin.close()

    asyncio.run(create())


def test_reset_deletes_topics_and_objects_and_starts_empty(second_pair: ServiceSettings) -> None:
    from minio import Minio

    services.start()
    _create_topic(second_pair, "reset-me")
    s3 = Minio(f"127.0.0.1:{second_pair.s3_port}", access_key=second_pair.access_key,
               secret_key=second_pair.secret_key, secure=False, region="us-east-1")
    s3.make_bucket("reset-bucket")
    assert "reset-me" in _topics(second_pair)
    first_cluster = (second_pair.base_dir / "kafka" / ".formatted").read_text()

    services.reset()

    assert services.pids() == {"kafka": None, "s3": None}
    assert not (second_pair.base_dir / "kafka" / "data").exists()
    assert not (second_pair.base_dir / "s3" / "data").exists()
    services.start()  # formats a new, empty broker
    assert services.status() == {"kafka": True, "s3": True}
    assert "reset-me" not in _topics(second_pair)
    assert not s3.bucket_exists("reset-bucket")
    assert (second_pair.base_dir / "kafka" / ".formatted").read_text() != first_cluster
