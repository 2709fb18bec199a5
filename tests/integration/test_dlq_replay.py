"""`pipeline dlq replay --route R` on the real broker: only that route's failed events, same ids."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline.core.events import encode_event, encode_frame
from pipeline.core.rules.columns import batch_from_events
from pipeline.core.rules.failures import failure_events
from pipeline.runtime.settings import REPO_ROOT
from tests.integration.conftest import Stack, produce
from tests.integration.test_route_policies import consume

VIN = "VF1AG000712345678"


def routed(i: int) -> dict:
    return {"id": f"ev-{i}/dept.r/0", "type": "fleet.trip.ended", "source": "/pipeline/routes/dept.r",
            "subject": "ref-1", "partitionkey": "ref-1", "time": 1_700_000_000_000 + i, "data": {"km": float(i)}}


def test_replay_sends_only_that_routes_failed_events(stack: Stack) -> None:
    s, uid = stack.settings, stack.settings.app_id
    dlq, target = f"it.{uid}.r.dlq", f"route.{uid}.r"
    routes = stack.tmp / "routes"
    routes.mkdir()
    (routes / "r.yaml").write_text(f"routes:\n  - name: dept.r\n    match: {{type: [fleet.trip.ended]}}\n"
                                   f"    to: [{{topic: {target}}}, {{webhook: 'https://crm.example/h'}}]\n"
                                   f"    dead_letter: {{topic: {dlq}}}\n")
    mine = failure_events(batch_from_events([routed(1), routed(2)]), [0, 1], route="dept.r",
                          target=f"topic:{target}", reason="topic_error", attempts=3, error="broker said no")
    other = failure_events(batch_from_events([routed(3)]), [0], route="dept.other",
                           target="topic:route.other", reason="topic_error", attempts=3)
    frame = encode_frame("sensor", {"vin": VIN, "seq": 1, "sent_at": 1_700_000_000_000, "samples": {}})
    messages = [(dlq, encode_event(a, d)) for batch in (mine, other) for a, d in batch.rows()] + [(dlq, frame)]
    produce(s, messages)

    env = {**os.environ, **stack.env}
    cmd = [sys.executable, "-m", "pipeline.cli.main", "dlq", "replay", "--route", "dept.r", "--rules", str(routes)]
    dry = subprocess.run([*cmd, "--dry-run"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert f"dept.r: 2 failed events of 4 dead letters read; would send to {target} (2); 2 others left alone" in dry.stdout
    assert consume(stack, [target], settle_s=1.0)[target] == []

    done = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "not replayed: webhook:https://crm.example/h" in done.stdout

    from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka_event

    got = [from_kafka_event(KafkaMessage(headers=h, key=k, value=v)) for h, k, v in consume(stack, [target])[target]]
    assert sorted(e.get_attributes()["id"] for e in got) == ["ev-1/dept.r/0", "ev-2/dept.r/0"]
    assert all(not any(k.startswith("dlq") for k in e.get_attributes()) for e in got)
    assert sorted(e.get_data()["km"] for e in got) == [1.0, 2.0]
