"""Run the Kafka broker and the S3 store that the pipeline needs: start, stop, status, logs.

With Docker (engine and compose plugin) this drives `docker compose`. Without it, it runs
the real Apache Kafka 3.9.1 broker (KRaft, single node) from its Maven Central jars and
S3Proxy 2.7.0 on a local folder, both on the machine's Java 17, under one folder
(`<repo>/.services`, or `PIPELINE_SERVICES_DIR`)::

    cache/kafka-libs, cache/s3proxy-libs   jars fetched once by Maven (PIPELINE_SERVICES_CACHE)
    kafka/                                 server.properties, log4j.properties, data/
    s3/                                    s3proxy.properties, logback.xml, data/
    logs/kafka.log, logs/s3proxy.log       each process's output
    run/kafka.pid, run/s3proxy.pid         process ids

Readiness is asked, never slept: a Kafka metadata request, an S3 bucket listing.
Environment, read with the rest of the settings (`Settings.services`, and the store's
credentials `Settings.s3_access_key` and `s3_secret_key`): KAFKA_PORT (9092),
KAFKA_CONTROLLER_PORT (9093), S3_PORT (9000), S3_ACCESS_KEY, S3_SECRET_KEY, SERVICES_TIMEOUT
(90 s), PIPELINE_SERVICES_MODE (docker|local), PIPELINE_SERVICES_DIR, PIPELINE_SERVICES_CACHE.
`ServiceSettings.from_settings` makes the services' view of them.

    python -m pipeline.tools.services start | stop | reset | status | logs [kafka|s3] [-f]

`reset` stops the services and deletes what they hold (topics, consumer offsets, handler
state, objects); the jar cache stays. Stop the workers first.

Modules: `common` (settings, probes, mode), `local` (the Java processes), `control` (the
operations above and the command line). Import from this package, not from its modules.
"""

from pipeline.tools.services.common import (
    KAFKA_VERSION,
    LOCALHOST,
    MAVEN_DIR,
    POLL_INTERVAL_S,
    REPO_ROOT,
    ServiceError,
    ServiceSettings,
    _port_in_use,
    _quiet_aiokafka,
    _run_coroutine,
    probe,
    say,
)
from pipeline.tools.services.control import log_path, main, pids, reset, start, status, stop
from pipeline.tools.services.local import (
    LocalService,
    _alive,
    _failure,
    _java,
    _kafka,
    _launch,
    _prepare_kafka,
    _terminate,
    _wait_all_ready,
    _write,
    ensure_jars,
)

__all__ = [
    "KAFKA_VERSION", "LOCALHOST", "MAVEN_DIR", "POLL_INTERVAL_S", "REPO_ROOT", "LocalService", "ServiceError",
    "ServiceSettings", "_alive", "_failure", "_java", "_kafka", "_launch", "_port_in_use", "_prepare_kafka",
    "_quiet_aiokafka", "_run_coroutine", "_terminate", "_wait_all_ready", "_write", "ensure_jars", "log_path",
    "main", "pids", "probe", "reset", "say", "start", "status", "stop",
]
