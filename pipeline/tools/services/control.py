"""Start, stop, reset and report the services, locally or through `docker compose`, and the
`python -m pipeline.tools.services` command line."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.tools.services.common import (
    LOG_TAIL_ON_FAILURE,
    NAMES,
    POLL_INTERVAL_S,
    REPO_ROOT,
    ServiceError,
    ServiceSettings,
    probe,
    say,
    select_mode,
)
from pipeline.tools.services.local import (
    _kafka,
    _local_services,
    _s3,
    _start_local,
    _stop_local,
    tail,
)

# --------------------------------------------------------------------------------------
# Docker compose mode

COMPOSE_NAMES = {"kafka": "kafka", "s3": "minio"}


def _compose(args: list[str], check: bool = True) -> int:
    done = subprocess.run(["docker", "compose", *args], cwd=REPO_ROOT, check=False)
    if check and done.returncode != 0:
        raise ServiceError(
            f"docker compose {' '.join(args)} failed with exit code {done.returncode}"
        )
    return done.returncode


def _start_docker(settings: ServiceSettings) -> None:
    started = time.monotonic()
    say("starting kafka and minio with docker compose...")
    _compose(["up", "-d", "kafka", "minio", "minio-init"])
    deadline = started + settings.timeout_s
    for name in NAMES:
        while (why := probe(name, settings)) is not None:
            if time.monotonic() >= deadline:
                logs = subprocess.run(
                    [
                        "docker",
                        "compose",
                        "logs",
                        "--no-color",
                        "--tail",
                        str(LOG_TAIL_ON_FAILURE),
                        COMPOSE_NAMES[name],
                    ],
                    cwd=REPO_ROOT,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                raise ServiceError(
                    f"{name}: no answer at {settings.endpoint(name)} within "
                    f"{settings.timeout_s:.0f}s (last: {why})\n--- docker compose logs "
                    f"{COMPOSE_NAMES[name]} ---\n{logs.stdout}{logs.stderr}"
                )
            time.sleep(POLL_INTERVAL_S)
        say(f"{name}: ready at {settings.endpoint(name)} in {time.monotonic() - started:.1f}s")


# --------------------------------------------------------------------------------------
# Public API


def start(settings: ServiceSettings | None = None) -> None:
    """Start Kafka and the S3 store unless they already answer; return when both answer."""
    settings = settings or ServiceSettings.from_settings()
    if select_mode(settings) == "docker":
        _start_docker(settings)
    else:
        _start_local(settings)


def stop(settings: ServiceSettings | None = None) -> None:
    """Stop the services; raises ServiceError if any process of theirs is left."""
    settings = settings or ServiceSettings.from_settings()
    if select_mode(settings) == "docker":
        _compose(["stop"])
    else:
        _stop_local(settings)


def reset(settings: ServiceSettings | None = None) -> None:
    """Stop the services and delete their data: topics, consumer offsets, handler state and
    objects. Local mode keeps the jar cache and logs; Docker mode runs `docker compose down
    --volumes` (every container of the project, and its volumes)."""
    settings = settings or ServiceSettings.from_settings()
    if select_mode(settings) == "docker":
        _compose(["down", "--volumes", "--remove-orphans"])
        return
    _stop_local(settings)
    for service in _local_services(settings):
        data = service.home / "data"
        if data.exists():
            try:
                shutil.rmtree(data)
            except OSError as exc:
                raise ServiceError(f"{service.name}: could not delete {data}: {exc}") from exc
            say(f"{service.name}: deleted its data in {data}")
        else:
            say(f"{service.name}: no data to delete")
    # the broker's storage is formatted again (new cluster id) on the next start
    (_kafka(settings).home / ".formatted").unlink(missing_ok=True)


def status(settings: ServiceSettings | None = None) -> dict[str, bool]:
    """Whether each endpoint answers now: {"kafka": ..., "s3": ...}."""
    settings = settings or ServiceSettings.from_settings()
    return {name: probe(name, settings) is None for name in NAMES}


def pids(settings: ServiceSettings | None = None) -> dict[str, int | None]:
    """The recorded pid of each local server (None where none runs from this folder)."""
    settings = settings or ServiceSettings.from_settings()
    return {service.name: service.recorded_pid() for service in _local_services(settings)}


def log_path(name: str, settings: ServiceSettings | None = None) -> Path:
    settings = settings or ServiceSettings.from_settings()
    return (_kafka(settings) if name == "kafka" else _s3(settings)).log


def _follow(path: Path) -> None:
    position = path.stat().st_size if path.exists() else 0
    while True:
        size = path.stat().st_size if path.exists() else 0
        if size < position:  # replaced by a restart
            position = 0
        if size > position:
            with path.open("rb") as handle:
                handle.seek(position)
                chunk = handle.read()
            position += len(chunk)
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        time.sleep(0.5)


def _print_status(settings: ServiceSettings) -> int:
    mode = select_mode(settings)
    answers = {}
    recorded = pids(settings) if mode == "local" else {}
    for name in NAMES:
        why = probe(name, settings)
        answers[name] = why is None
        state = "answers" if why is None else f"not answering ({why})"
        pid = recorded.get(name)
        extra = f", pid {pid}" if pid else ""
        say(f"{name:<6}{settings.endpoint(name):<24}{state}{extra}")
    say(f"mode: {mode}" + (f", folder {settings.base_dir}" if mode == "local" else ""))
    return 0 if all(answers.values()) else 3


def _logs(settings: ServiceSettings, names: list[str], follow: bool, lines: int) -> int:
    if select_mode(settings) == "docker":
        args = ["logs", "--no-color", "--tail", str(lines), *(["-f"] if follow else [])]
        return _compose([*args, *(COMPOSE_NAMES[name] for name in names)], check=False)
    if follow and len(names) != 1:
        raise ServiceError("logs -f follows one service: name kafka or s3")
    for name in names:
        path = log_path(name, settings)
        if len(names) > 1:
            say(f"==> {path} <==")
        if not path.exists():
            say(f"{name}: no log yet at {path}")
            continue
        say(tail(path, lines))
        if follow:
            with contextlib.suppress(KeyboardInterrupt):
                _follow(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/services",
        description="Kafka and the S3 store for the pipeline: Docker compose if it works, "
        "else local Java processes under .services/.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start_cmd = commands.add_parser("start", help="start both services (no-op for one that answers)")
    stop_cmd = commands.add_parser("stop", help="stop both services and check that nothing is left")
    commands.add_parser("reset", help="stop both services and delete their data (topics, offsets, "
                        "objects); stop the workers first")
    status_cmd = commands.add_parser("status", help="show each endpoint; exit 0 if both answer, else 3")
    for command in (start_cmd, stop_cmd, status_cmd):
        command.add_argument(
            "--regions", type=int, choices=(1, 2), default=1,
            help="2: also region B's broker and MirrorMaker 2 between the regions "
            "(pipeline/tools/region_services.py)")
    logs = commands.add_parser("logs", help="print a service's log")
    logs.add_argument("service", nargs="?", choices=NAMES, help="kafka or s3 (default both)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("-n", "--lines", type=int, default=200, help="lines to print (200)")
    args = parser.parse_args(argv)
    try:
        settings = ServiceSettings.from_settings()
        regions = getattr(args, "regions", 1)
        if args.command == "start":
            start(settings)
            if regions == 2:
                from pipeline.tools import region_services

                region_services.start_regions(region_services.RegionServices.from_settings(2, settings))
        elif args.command == "stop":
            if regions == 2:
                from pipeline.tools import region_services

                region_services.stop_regions(region_services.RegionServices.from_settings(2, settings))
            stop(settings)
        elif args.command == "reset":
            reset(settings)
        elif args.command == "status":
            code = _print_status(settings)
            if regions == 2:
                from pipeline.tools import region_services

                layout = region_services.RegionServices.from_settings(2, settings)
                for name, ok in region_services.region_status(layout).items():
                    say(f"{name:<14}{'answers' if ok else 'not answering'}")
                    code = code if ok else 3
            return code
        else:
            names = [args.service] if args.service else list(NAMES)
            return _logs(settings, names, args.follow, args.lines)
    except PipelineError as exc:  # a service failed, or a setting of the environment is invalid
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0

