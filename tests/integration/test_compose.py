"""docker-compose.yml loads with compose-go, the loader `docker compose` uses (no Docker needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_is_valid_and_lists_the_services() -> None:
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "check-compose")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    services = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("service ")}
    assert {"kafka", "minio", "minio-init", "worker", "replay", "autoscaler", "ui", "prometheus",
            "grafana"} <= services
    assert "service grafana image=grafana/grafana" in done.stdout and "profiles=monitoring" in done.stdout
    # the two-region profile: region b's broker and workers, and MirrorMaker 2
    assert {"kafka-b", "worker-b", "mirrormaker"} <= services
    assert "service mirrormaker image=apache/kafka:3.9.1 profiles=regions" in done.stdout


def test_compose_check_rejects_an_invalid_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services: {worker: {image: 1, depends_on: 7}}\n")
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "check-compose"), str(broken)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode != 0
    assert "services.worker.image must be a string" in done.stderr
