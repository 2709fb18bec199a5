"""Webhook targets against a real local HTTP server: signature, retries, backoff, dead letters, timeouts."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pipeline.core.rules.columns import batch_from_events
from pipeline.core.rules.loader import RuleSet
from pipeline.core.rules.router import Router
from pipeline.core.rules.schema import RetryPolicy, WebhookTarget
from pipeline.core.rules.webhook import SIGNATURE_HEADER, WebhookSender, sign, verify_signature

from .conftest import VIN, event

SECRET = "hook-secret"


class Hook:
    """A local endpoint: answers with the queued statuses (then 200), after an optional delay."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes, float]] = []
        self.statuses: list[int] = []
        self.delay_s = 0.0
        self.answered = 0  # responses the endpoint finished (after its delay)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.requests.append((dict(self.headers.items()), body, time.monotonic()))
                if hook.delay_s:
                    time.sleep(hook.delay_s)
                hook.answered += 1
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


@pytest.fixture
def second_hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


def batch(n: int = 1) -> Any:
    return batch_from_events([{"id": f"e{i}", **event(soc_pct=float(i))} for i in range(n)])


def send(target: WebhookTarget, retry: RetryPolicy, events: Any, sleeps: list[float] | None = None) -> Any:
    async def fake_sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)

    async def run() -> Any:
        sender = WebhookSender(env={"HOOK_SECRET": SECRET}, sleep=fake_sleep if sleeps is not None else asyncio.sleep)
        try:
            return await sender.send("r", target, retry, events)
        finally:
            await sender.aclose()

    return asyncio.run(run())


def test_event_is_posted_in_binary_mode_with_a_verifiable_signature(hook: Hook) -> None:
    target = WebhookTarget(webhook=hook.url, secret_env="HOOK_SECRET", headers={"X-Tenant": "emea"})
    outcome = send(target, RetryPolicy(), batch())
    assert (outcome.delivered, outcome.dead_letters) == (1, [])
    ((headers, body, _),) = hook.requests
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["ce-id"] == "e0" and headers["ce-type"] == "fleet.battery.low_soc"
    assert headers["ce-subject"] == VIN and headers["ce-specversion"] == "1.0"
    assert headers["content-type"].startswith("application/json") and headers["x-tenant"] == "emea"
    assert json.loads(body) == {"vin": VIN, "soc_pct": 0.0}
    signature = headers[SIGNATURE_HEADER.lower()]
    assert verify_signature(SECRET.encode(), signature, body)
    assert not verify_signature(b"wrong-secret", signature, body)
    assert not verify_signature(SECRET.encode(), signature, body + b" ")
    stamp = int(signature.split(",")[0].removeprefix("t="))
    assert not verify_signature(SECRET.encode(), signature, body, now=stamp + 3600)  # replayed later
    assert sign(SECRET.encode(), body, stamp) == signature


def test_retries_with_exponential_backoff_then_success(hook: Hook) -> None:
    hook.statuses = [503, 429, 200]
    sleeps: list[float] = []
    outcome = send(WebhookTarget(webhook=hook.url), RetryPolicy(attempts=4, backoff_ms=100, max_backoff_ms=150), batch(), sleeps)
    assert outcome.delivered == 1 and outcome.attempts == 3
    assert sleeps == [0.1, 0.15]  # 100 ms, then doubled but capped at 150 ms
    assert len(hook.requests) == 3


def test_dead_letter_after_the_last_attempt(hook: Hook) -> None:
    hook.statuses = [500, 500, 500]
    sleeps: list[float] = []
    outcome = send(WebhookTarget(webhook=hook.url), RetryPolicy(attempts=3, backoff_ms=10), batch(), sleeps)
    assert outcome.delivered == 0
    assert outcome.dead_letters == [(0, "webhook_failed", "HTTP 500 (after 3 attempts)")]
    assert len(hook.requests) == 3 and sleeps == [0.01, 0.02]


def test_a_client_error_is_not_retried(hook: Hook) -> None:
    hook.statuses = [400]
    outcome = send(WebhookTarget(webhook=hook.url), RetryPolicy(attempts=5), batch(), [])
    assert outcome.dead_letters == [(0, "webhook_rejected", "HTTP 400")]
    assert len(hook.requests) == 1


def test_unreachable_endpoint_is_dead_lettered() -> None:
    outcome = send(WebhookTarget(webhook="http://127.0.0.1:9/nothing"), RetryPolicy(attempts=2, backoff_ms=1), batch(), [])
    assert [d[1] for d in outcome.dead_letters] == ["webhook_failed"]
    assert "ConnectError" in outcome.dead_letters[0][2]


def test_missing_secret_is_a_dead_letter_not_an_unsigned_request(hook: Hook) -> None:
    outcome = send(WebhookTarget(webhook=hook.url, secret_env="NOT_SET"), RetryPolicy(), batch(2), [])
    assert [d[1] for d in outcome.dead_letters] == ["webhook_secret_missing"] * 2 and hook.requests == []


def test_timeout_then_dead_letter(hook: Hook) -> None:
    hook.delay_s = 1.0
    outcome = send(WebhookTarget(webhook=hook.url, timeout_s=0.2), RetryPolicy(attempts=2, backoff_ms=0), batch(), [])
    # both attempts were made and the sender gave up before the endpoint answered either
    assert len(hook.requests) == 2 and hook.answered == 0
    assert outcome.dead_letters == [(0, "webhook_failed", "timed out after 0.2 s (after 2 attempts)")]


def test_a_slow_webhook_does_not_hold_up_other_routes(hook: Hook, second_hook: Hook,
                                                      rules_from: Callable[[str], RuleSet]) -> None:
    hook.delay_s = 0.8  # slow endpoint (times out)
    ruleset = rules_from(f"""
        routes:
          - name: slow
            to: [{{webhook: "{hook.url}", timeout_s: 0.3}}]
            retry: {{attempts: 2, backoff_ms: 50}}
          - name: fast
            to: [{{webhook: "{second_hook.url}"}}]
        """)
    result = Router(ruleset, b"k").route(batch(5))
    finished: dict[str, float] = {}

    async def run() -> Any:
        sender = WebhookSender(env={})
        original = sender.send

        async def timed(route: str, *args: Any) -> Any:
            outcome = await original(route, *args)
            finished[route] = time.monotonic()
            return outcome

        sender.send = timed  # type: ignore[method-assign]
        try:
            return await sender.deliver(result, ruleset)
        finally:
            await sender.aclose()

    started = time.monotonic()
    outcomes = {o.route: o for o in asyncio.run(run())}
    assert outcomes["fast"].delivered == 5 and outcomes["fast"].dead_letters == []
    assert len(outcomes["slow"].dead_letters) == 5
    assert finished["fast"] - started < 0.5 < finished["slow"] - started
    assert len(second_hook.requests) == 5
