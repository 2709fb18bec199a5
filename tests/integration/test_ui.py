"""`pipeline ui` in a real headless Chromium after a known replay through a real worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from pipeline.runtime.settings import REPO_ROOT
from tests.integration.conftest import Stack, free_port
from tests.integration.test_lake_and_contract import (
    cli,
    isolated_rules,
    manifests,
    wait_all_committed,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def start_ui(stack: Stack, rules: Path, metrics_port: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = open(stack.tmp / "ui.log", "ab")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.main", "ui", "--port", str(port), "--no-local",
                             "--refresh", "1", "--metrics", f"http://127.0.0.1:{metrics_port}/metrics"],
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **stack.env, "RULES_DIR": str(rules)})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (stack.tmp / "ui.log").read_text()
        try:
            if orjson.loads(urllib.request.urlopen(url + "healthz", timeout=2).read())["ok"]:
                return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("pipeline ui did not answer within 60 s:\n" + (stack.tmp / "ui.log").read_text())


def test_the_page_shows_the_replay_in_chromium(stack: Stack, request: pytest.FixtureRequest) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: scripts/test installs it (apt-get install chromium)"
    settings = stack.settings
    rules = isolated_rules(stack.tmp, settings.app_id.removeprefix("it-"))
    worker = stack.worker(RULES_DIR=str(rules)).start()
    cli(stack, "simulate", "--vehicles", "40", "--duration", "600", "--start", "2024-05-14T18:00:00+01:00",
        "--seed", "11", "--fault-rate", "bad_json=0.01,missing_field=0.01,spike=0.001", "--to", "kafka")
    frames = wait_all_committed(settings)
    readings = sum(m["readings_in"] for m in manifests(settings))
    assert readings > 0

    out = REPO_ROOT / ".services" / "test-logs" / request.node.name
    out.mkdir(parents=True, exist_ok=True)
    proc, url = start_ui(stack, rules, worker.metrics_port)
    errors: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                str(stack.tmp / "chromium-profile"), executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1800})
            try:
                page = browser.new_page()
                page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
                page.goto(url)
                page.wait_for_function(
                    "([f, r]) => document.getElementById('frames-in').textContent === f && "
                    "document.getElementById('readings-in').textContent === r",
                    arg=[f"{frames:,}", f"{readings:,}"], timeout=30_000)
                assert page.locator("#lag tr").count() == 1 + 2 * settings.partitions  # header + ingest partitions
                assert "Autoscaler:" in page.locator("#autoscaler").inner_text()
                page.wait_for_selector("#map circle.vehicle", timeout=30_000)
                assert page.locator("#map circle.vehicle").count() >= 1
                assert page.locator("#dead-letters tr").count() >= 2  # the injected bad frames
                vehicle = page.locator("#map circle.vehicle").first
                vin = vehicle.get_attribute("data-vin")
                vehicle.click(force=True)
                page.wait_for_selector("#vehicle-events", timeout=30_000)
                assert vin and vin in page.locator("#vehicle h3").inner_text()
                page.screenshot(path=str(out / "ui.png"), full_page=True)
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(20)
        if (stack.tmp / "ui.log").exists():
            (out / "ui.log").write_bytes((stack.tmp / "ui.log").read_bytes())
    assert errors == [], errors
    assert (out / "ui.png").stat().st_size > 10_000
