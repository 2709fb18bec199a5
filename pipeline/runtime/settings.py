"""Typed settings read from the environment (and an optional `.env`), defaults for local services.

One tree: `Settings` (the worker and the tools) and, under `Settings.services`, the local Kafka
and S3 services of `scripts/services` (`LocalServicesSettings`). Every name is its
environment variable; an invalid value is a ConfigError naming the variable.
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.core.errors import ConfigError
from pipeline.core.paths import DLQ_TOPIC, REPO_ROOT, ROUTE_TOPIC_PREFIX

__all__ = ["DEFAULT_MIRROR_TOPICS", "DLQ_TOPIC", "REPO_ROOT", "ROUTE_TOPIC_PREFIX", "LocalServicesSettings",
           "Settings", "get_settings"]

# routed events, dead letters, and handler-state changelogs (for re-homing a vehicle)
DEFAULT_MIRROR_TOPICS = r"route\..*|pipeline\.dlq|.*-handler-state"


class _EnvSettings(BaseSettings):
    """Settings from the environment and `.env`; an invalid value is a ConfigError naming its
    variable."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _settings_error(type(self), exc) from None


class LocalServicesSettings(_EnvSettings):
    """The local Kafka broker and S3 store (`scripts/services`; docker compose publishes the
    same host ports) and, with `--regions 2`, region B's broker and MirrorMaker 2.

    The variables the services have always read, with their defaults; an empty one means
    its default, as in docker-compose.yml. The store's credentials are the worker's
    (`Settings.s3_access_key`, `Settings.s3_secret_key`).
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore",
                                      env_ignore_empty=True, populate_by_name=True)

    kafka_port: int = Field(9092, ge=1, le=65535, description="Host port of the local Kafka broker.")
    kafka_controller_port: int = Field(9093, ge=1, le=65535, description="Its KRaft controller port.")
    s3_port: int = Field(9000, ge=1, le=65535, description="Host port of the local S3 store.")
    timeout_s: float = Field(90.0, gt=0, validation_alias="SERVICES_TIMEOUT",
                             description="Seconds `start` waits for both services to answer.")
    mode: str = Field("auto", validation_alias="PIPELINE_SERVICES_MODE",
                      description="docker, local, or auto: docker when its engine and compose plugin work.")
    base_dir: Path = Field(REPO_ROOT / ".services", validation_alias="PIPELINE_SERVICES_DIR",
                           description="Folder of the local services' configuration, data, logs and pids.")
    cache_dir: Path | None = Field(None, validation_alias="PIPELINE_SERVICES_CACHE",
                                   description="Jars fetched by Maven (default <base_dir>/cache).")
    region_names: str = Field("a,b,c,d", description="Local region names, comma separated; the first two run.")
    kafka_port_b: int | None = Field(None, ge=1, le=65535, description="Region B's broker port (KAFKA_PORT+100).")
    kafka_controller_port_b: int | None = Field(
        None, ge=1, le=65535, description="Region B's controller port (KAFKA_CONTROLLER_PORT+100).")
    mirror_topics: str = Field(DEFAULT_MIRROR_TOPICS, description="Regex of the topics MirrorMaker 2 replicates.")
    mirror_groups: str = Field(".*", description="Regex of the consumer groups whose offsets it translates.")

    @field_validator("mode", mode="before")
    @classmethod
    def _mode_words(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class Settings(_EnvSettings):
    """Every connection and topology setting of a worker, one place, typed.

    Names are the environment variables, case-insensitive (``KAFKA_BOOTSTRAP=...``).
    Secrets are `SecretStr`: they never appear in reprs, logs or `pipeline config`.
    The local services' settings are `services`.
    """

    _services: LocalServicesSettings | None = PrivateAttr(None)

    # --- Kafka -----------------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for Kafka TLS.")
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None

    # --- Object store ------------------------------------------------------------------------
    s3_endpoint: str = Field("http://127.0.0.1:9000", description="S3 endpoint URL (MinIO, S3Proxy, AWS).")
    s3_access_key: str = "pipeline"
    s3_secret_key: SecretStr = SecretStr("pipeline-secret")
    s3_bucket: str = "telemetry"
    s3_region: str = "us-east-1"
    s3_secure: bool | None = Field(None, description="Force TLS on/off; default follows the endpoint scheme.")
    s3_cert_check: bool = True

    # --- Topology ----------------------------------------------------------------------------
    app_id: str = Field("telemetry-pipeline", description="Faust app id = Kafka consumer group.")
    topic_sensor: str = "vehicle.sensor.raw"
    topic_gps: str = "vehicle.gps.raw"
    topic_dlq: str = DLQ_TOPIC
    topic_prefix_route: str = ROUTE_TOPIC_PREFIX
    partitions: int = Field(6, ge=1, description="Partition count of the ingest topics (ceiling on worker parallelism).")
    replication_factor: int = Field(1, ge=1)
    topic_retention_ms: int = Field(
        -1, ge=-1,
        description="retention.ms of topics the worker creates. Replays carry their recorded (past) "
        "timestamps, which time-based retention deletes on arrival; -1 keeps by size only.")

    # --- Worker ------------------------------------------------------------------------------
    batch_size: int = Field(
        4000, ge=1, description="Most records per core batch. Larger batches amortise per-batch costs (objects, "
        "handler set-up); a batch is formed as soon as the core is free, so at low rates batches stay small.")
    batch_wait_s: float = Field(0.2, gt=0, description="Longest a ready record waits for its batch to fill.")
    max_inflight_batches: int = Field(
        4, ge=1, description="Batches between assembly and commit at once: the bound on memory and the "
        "backpressure (a slow store slows consumption).")
    put_concurrency: int = Field(16, ge=1, description="Object PUTs in flight at once.")
    fetch_max_records: int = Field(2000, ge=1, description="Most records one fetch hands to the batch path.")
    fetch_max_partition_bytes: int = Field(4 << 20, ge=1 << 16, description="Most bytes a fetch returns per partition.")
    fetch_min_bytes: int = Field(
        256 << 10, ge=1, description="Bytes the broker gathers before it answers a fetch (or fetch_max_wait_ms passes).")
    fetch_max_wait_ms: int = Field(
        50, ge=1, le=1500, description="Longest the broker holds a fetch waiting for fetch_min_bytes.")
    plan_in_process: bool = Field(
        True, description="Encode output plans (Parquet, manifests, routed events) in a process of their own, "
        "in parallel with the core; false: in a thread of the worker.")
    encoder_nice: int = Field(
        10, ge=0, le=19, description="Niceness of the encoder process (Parquet, manifests). Its work is off the "
        "path of routed events: at a lower priority it yields the CPU to decoding and the core, so routed "
        "events wait less for a busy host, and the objects a little more (0: same priority as the worker).")
    decode_in_process: bool = Field(
        True, description="Decode frames in a process of their own, one batch ahead of the core; false: "
        "in the core's thread.")
    gil_switch_interval_s: float = Field(
        0.005, gt=0, description="Python's thread switch interval in the worker (sys.setswitchinterval); "
        "0.0005 suits PLAN_IN_PROCESS=false, where the encoder is a thread beside the core.")
    gc_gen0_threshold: int = Field(
        50_000, ge=0, description="Allocations between the worker's young-generation garbage collections "
        "(Python's default 700; 0 keeps Python's thresholds).")
    align_max_wait_ms: int = Field(
        500, ge=0, description="How long a partition's leading ingest topic is held back for the other to "
        "deliver (as Kafka Streams' max.task.idle.ms); then the quiet topic counts as idle.")
    align_max_buffered: int = Field(
        5000, ge=10, description="Records buffered per topic-partition before its fetching pauses.")
    revoke_timeout_s: float = Field(
        8.0, gt=0, description="On a rebalance, how long in-flight batches may take to become durable before "
        "they are left for the next owner (keep it under the 10 s session timeout).")
    vehicle_idle_timeout_s: float = Field(
        600.0, gt=0, description="Processing time without frames after which a vehicle gets an idle signal "
        "(trips end with reason `silent`, open sessions close).")
    max_frame_bytes: int = Field(1_000_000, ge=1024, description="Frames larger than this are dead-lettered as oversized.")
    metrics_port: int = Field(9100, ge=0, description="Prometheus endpoint port (0 = off).")
    web_port: int = Field(6066, ge=0, description="Faust web port.")
    handlers_enabled: bool = Field(True, description="Run the function handlers in functions/.")
    rules_enabled: bool = Field(True, description="Route derived events by the rules in rules/routes/.")
    rules_dir: Path = REPO_ROOT / "rules"
    functions_dir: Path = REPO_ROOT / "functions"
    data_dir: Path = Field(REPO_ROOT / ".services" / "worker", description="Faust table state folder.")
    hmac_secret: SecretStr = Field(SecretStr("local-dev-pseudonym-key"), description="Key for pseudonyms in rules (PIPELINE_HMAC_SECRET).", alias="PIPELINE_HMAC_SECRET")
    log_level: str = "INFO"

    @field_validator("s3_access_key", "s3_secret_key", mode="before")
    @classmethod
    def _empty_credential_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        # as docker compose's ${S3_ACCESS_KEY:-pipeline}: the store the services start has these
        if value == "" and info.field_name is not None:
            return cls.model_fields[info.field_name].default
        return value

    @model_validator(mode="after")
    def _distinct_ingest_topics(self) -> Settings:
        if self.topic_sensor == self.topic_gps:
            raise ValueError(f"TOPIC_SENSOR and TOPIC_GPS must be different topics, both are {self.topic_sensor!r}")
        return self

    # --- derived ----------------------------------------------------------------------------
    @property
    def services(self) -> LocalServicesSettings:
        """The local services' settings, read when first asked for. The worker never asks: it
        must not fail on a variable meant for something else (Kubernetes sets
        KAFKA_PORT=tcp://... in the pods beside a service named kafka)."""
        if self._services is None:
            self._services = LocalServicesSettings()
        return self._services

    @property
    def s3_host(self) -> str:
        return self.s3_endpoint.split("://", 1)[-1].rstrip("/")

    @property
    def s3_use_tls(self) -> bool:
        if self.s3_secure is not None:
            return self.s3_secure
        return self.s3_endpoint.startswith("https://")

    @property
    def ingest_topics(self) -> tuple[str, str]:
        return (self.topic_sensor, self.topic_gps)

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients: bootstrap, TLS and SASL passed through."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            ctx = ssl.create_default_context(cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None)
            if self.kafka_ssl_certfile:
                ctx.load_cert_chain(str(self.kafka_ssl_certfile), str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None)
            kwargs["ssl_context"] = ctx
        if self.kafka_sasl_mechanism:
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
            kwargs["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        return kwargs

    def minio_client(self) -> Any:
        """A `minio.Minio` client for the configured endpoint (TLS per `s3_use_tls`)."""
        from minio import Minio

        return Minio(
            self.s3_host,
            access_key=self.s3_access_key,
            secret_key=self.s3_secret_key.get_secret_value(),
            secure=self.s3_use_tls,
            region=self.s3_region,
            cert_check=self.s3_cert_check,
        )

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict safe to print, the local services' as `services.<name>`: secrets
        shown as '**********'."""
        out = {k: ("**********" if isinstance(v, SecretStr) else v) for k, v in self.__dict__.items()}
        try:
            out.update({f"services.{k}": v for k, v in self.services.__dict__.items()})
        except ConfigError as exc:  # shown, not raised: the worker's own settings are fine
            out["services"] = f"invalid: {exc}"
        return out


def env_name(model: type[BaseSettings], name: str) -> str:
    """The environment variable of a settings field (its alias, else its name in capitals)."""
    info = model.model_fields.get(name)
    alias = info.validation_alias or info.alias if info is not None else None
    return alias if isinstance(alias, str) else name.upper()


def _settings_error(model: type[BaseSettings], exc: ValidationError) -> ConfigError:
    """The first invalid setting as a ConfigError: the variable, what is wrong and the value."""
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"]]
    variable = env_name(model, loc[0]) if loc else None
    message = first["msg"].removeprefix("Value error, ")
    info = model.model_fields.get(loc[0]) if loc else None
    if info is not None and "input" in first and "SecretStr" not in str(info.annotation):
        message += f" (got {first['input']!r})"
    more = exc.error_count() - 1
    if more:
        message += f"; and {more} more invalid setting{'s' if more > 1 else ''}"
    return ConfigError(message, field=variable)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
