"""What every service mode shares: versions, ports and folders (`ServiceSettings`, a view of
the settings), readiness probes of the broker and the store, and the choice between Docker
and local processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError
from minio import Minio
from minio.error import MinioException

from pipeline.core.errors import PipelineError
from pipeline.runtime.settings import LocalServicesSettings, Settings, get_settings

KAFKA_VERSION = "3.9.1"
S3PROXY_VERSION = "2.7.0"
REPO_ROOT = Path(__file__).resolve().parents[3]
MAVEN_DIR = REPO_ROOT / "scripts" / "maven"
LOCALHOST = "127.0.0.1"
POLL_INTERVAL_S = 0.25
STOP_GRACE_S = 30.0
LOG_TAIL_ON_FAILURE = 30
NAMES = ("kafka", "s3")

T = TypeVar("T")


class ServiceError(PipelineError):
    """A local service could not be fetched, started, reached or stopped."""


def _default(name: str) -> Any:
    return LocalServicesSettings.model_fields[name].default


def _credential(name: str) -> str:
    value = Settings.model_fields[name].default
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)


@dataclass(frozen=True)
class ServiceSettings:
    """Ports, credentials and folders of one set of local services: a view of the settings
    (`Settings.services` and the store's credentials) made by `from_settings`, which a test
    or a second region may copy with other ports and folders. Defaults are the settings'."""

    base_dir: Path
    cache_dir: Path
    kafka_port: int = _default("kafka_port")
    controller_port: int = _default("kafka_controller_port")
    s3_port: int = _default("s3_port")
    access_key: str = _credential("s3_access_key")
    secret_key: str = field(default=_credential("s3_secret_key"), repr=False)
    timeout_s: float = _default("timeout_s")
    mode: str = _default("mode")

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ServiceSettings:
        """The local services of `settings` (default: the process's, `get_settings()`)."""
        settings = settings or get_settings()
        local = settings.services
        base = local.base_dir.resolve()
        return cls(
            base_dir=base,
            cache_dir=(local.cache_dir or base / "cache").resolve(),
            kafka_port=local.kafka_port,
            controller_port=local.kafka_controller_port,
            s3_port=local.s3_port,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            timeout_s=local.timeout_s,
            mode=local.mode,
        )

    @property
    def kafka_bootstrap(self) -> str:
        return f"{LOCALHOST}:{self.kafka_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{LOCALHOST}:{self.s3_port}"

    def endpoint(self, name: str) -> str:
        return self.kafka_bootstrap if name == "kafka" else self.s3_endpoint


def say(message: str) -> None:
    """Print one progress line at once (the caller may be a long-running script)."""
    print(message, flush=True)


# --------------------------------------------------------------------------------------
# Readiness probes: each returns None when the service answers, else why it does not.


@contextlib.contextmanager
def _quiet_aiokafka() -> Iterator[None]:
    """aiokafka logs every refused connection as an error; while polling that is noise."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _run_coroutine(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(make()))
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="services-probe")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


async def _kafka_metadata(bootstrap: str, timeout_s: float) -> str | None:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        metadata = await asyncio.wait_for(client.fetch_all_metadata(), timeout_s)
        if not metadata.brokers():
            return "metadata lists no broker yet"
        return None
    except (TimeoutError, KafkaError, OSError) as exc:
        return str(exc) if isinstance(exc, KafkaError) else f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await client.close()


def probe_kafka(settings: ServiceSettings, timeout_s: float = 3.0) -> str | None:
    """Ask the broker for cluster metadata; None when it answers."""
    with _quiet_aiokafka():
        return _run_coroutine(lambda: _kafka_metadata(settings.kafka_bootstrap, timeout_s))


def probe_s3(settings: ServiceSettings, timeout_s: float = 3.0) -> str | None:
    """List buckets with the configured credentials (SigV4, path style); None when it answers."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s), retries=False
    )
    client = Minio(
        f"{LOCALHOST}:{settings.s3_port}",
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        secure=False,
        region="us-east-1",
        http_client=http,
    )
    try:
        client.list_buckets()
        return None
    except MinioException as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'code', '') or exc}"
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        http.clear()


def probe(name: str, settings: ServiceSettings) -> str | None:
    """None when the service answers its real protocol, else a short reason."""
    port = settings.kafka_port if name == "kafka" else settings.s3_port
    if not _port_in_use(port):
        return f"nothing listens on port {port}"
    return probe_kafka(settings) if name == "kafka" else probe_s3(settings)


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((LOCALHOST, port)) == 0


# --------------------------------------------------------------------------------------
# Mode selection


def _command_works(args: list[str]) -> bool:
    try:
        done = subprocess.run(args, capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def select_mode(settings: ServiceSettings) -> str:
    """`docker` or `local`: PIPELINE_SERVICES_MODE if set, else docker when it fully works."""
    if settings.mode in ("docker", "local"):
        return settings.mode
    if settings.mode not in ("", "auto"):
        raise ServiceError(
            f"PIPELINE_SERVICES_MODE={settings.mode!r}: use docker, local or leave unset"
        )
    if (
        shutil.which("docker")
        and _command_works(["docker", "info"])
        and _command_works(["docker", "compose", "version"])
    ):
        return "docker"
    return "local"


