"""A rules reload creates the topics of new routes, with the partitions and settings of the start."""

from __future__ import annotations

import asyncio
import time

from pipeline.runtime.settings import Settings
from tests.integration.conftest import Stack, produce
from tests.integration.test_reload_and_state import T0, drive, private_rules, route_file


def describe(s: Settings, topics: list[str]) -> dict[str, tuple[int, str | None]]:
    """Partition count and retention.ms of each topic that exists."""

    async def run() -> dict[str, tuple[int, str | None]]:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        admin = AIOKafkaAdminClient(**s.kafka_client_kwargs())
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            found = [t for t in topics if t in existing]
            if not found:
                return {}
            partitions = {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(found)}
            configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in found])
            retention: dict[str, str | None] = {}
            for response in configs:
                for resource in response.resources:
                    name, entries = resource[3], resource[4]
                    retention[name] = next((e[1] for e in entries if e[0] == "retention.ms"), None)
            return {t: (partitions[t], retention.get(t)) for t in found}
        finally:
            await admin.close()

    return asyncio.run(run())


def test_reload_creates_the_topics_of_a_new_route(stack: Stack) -> None:
    s = stack.settings
    uid = s.app_id
    rules = private_rules(stack, {"braking.yaml": route_file("it.braking", f"route.{uid}.braking",
                                                            ["fleet.driving.harsh_braking"])})
    worker = stack.worker(RULES_DIR=str(rules)).start()
    added, added_dlq = f"route.{uid}.added", f"it.{uid}.added.dlq"
    # The new route matches nothing this test produces: its topics can only come from the reload.
    text = route_file("it.added", added, ["fleet.dtc.appeared"]) + f"    dead_letter: {{topic: {added_dlq}}}\n"
    (rules / "routes" / "added.yaml").write_text(text)
    deadline = time.monotonic() + 20
    while worker.metric("pipeline_reloads_total", what="rules", result="ok") < 1:
        produce(s, drive(s, ["VF1RELOAD00000042"], int(time.monotonic() * 10) % 100_000, 5, 0.0, T0))
        assert time.monotonic() < deadline, f"rules not reloaded\n{worker.tail()}"
        time.sleep(0.3)
    assert describe(s, [added, added_dlq]) == {added: (s.partitions, str(s.topic_retention_ms)),
                                                added_dlq: (s.partitions, str(s.topic_retention_ms))}
