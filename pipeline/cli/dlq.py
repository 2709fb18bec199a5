"""`pipeline dlq replay --route R`: send a route's failed events to that route's targets again.

A route's failures are kept in its dead-letter topic as the routed CloudEvents themselves,
marked with `dlqroute`, `dlqreason`, ... (`pipeline/core/rules/failures.py`). Replaying them
re-delivers exactly those events, with their ids, to the route's topic targets, and runs
no other route (the source frame is not replayed).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer


@dataclass
class ReplayReport:
    """What a replay read and sent."""

    read: int = 0
    replayed: int = 0
    other: int = 0  # frames, other routes' events, other reasons
    sent: dict[str, int] = field(default_factory=dict)
    skipped_targets: list[str] = field(default_factory=list)


async def replay_route(settings: Any, route_name: str, rules_dir: Path, *, reason: str | None = None,
                       dry_run: bool = False) -> ReplayReport:
    """Read the route's dead-letter topic up to its current end and re-deliver the route's events."""
    from aiokafka import AIOKafkaProducer

    from pipeline.core.batch import RawRecord
    from pipeline.core.errors import DecodeError
    from pipeline.core.events import encode_event, read_event
    from pipeline.core.rules.failures import REASON, as_routed, is_failure_of
    from pipeline.core.rules.loader import load_rules
    from pipeline.core.rules.schema import TopicTarget
    from pipeline.runtime.topics import read_to_end

    ruleset = load_rules(rules_dir, env={})
    try:
        route = ruleset.get(route_name)
    except KeyError:
        raise typer.BadParameter(f"no route {route_name!r} in {rules_dir}", param_hint="--route") from None
    dead = route.spec.dead_letter
    if not isinstance(dead, TopicTarget):
        raise typer.BadParameter(f"route {route_name!r} dead-letters to {dead.describe()}, not a topic", param_hint="--route")
    source_topic = dead.topic
    topics = [t.topic for t in route.spec.to if isinstance(t, TopicTarget)]
    report = ReplayReport(skipped_targets=[t.describe() for t in route.spec.to if not isinstance(t, TopicTarget)])

    producer = None if dry_run else AIOKafkaProducer(**settings.kafka_client_kwargs(), acks="all",
                                                     enable_idempotence=True)
    if producer is not None:
        await producer.start()
    try:
        sends = []
        async for messages in read_to_end(settings, source_topic):
            for m in messages:
                report.read += 1
                record = RawRecord(m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers or ()))
                try:
                    attributes, data = read_event(record)
                except DecodeError:
                    report.other += 1  # not a CloudEvent: nothing a route emitted
                    continue
                if not is_failure_of(attributes, route_name) or (reason and attributes.get(REASON) != reason):
                    report.other += 1  # a dead-lettered frame, another route's event, another reason
                    continue
                encoded = encode_event(as_routed(attributes), data if isinstance(data, dict) else {})
                report.replayed += 1
                for topic in topics:
                    report.sent[topic] = report.sent.get(topic, 0) + 1
                    if producer is not None:
                        sends.append(await producer.send(topic, encoded.value, key=encoded.key,
                                                         headers=list(encoded.headers),
                                                         timestamp_ms=encoded.timestamp_ms))
        if sends:
            await asyncio.gather(*sends)
    finally:
        if producer is not None:
            await producer.stop()
    return report


def register(app: typer.Typer) -> None:
    """Add the `dlq` command group to the pipeline CLI."""
    dlq_app = typer.Typer(help="Dead letters of the routes: replay a route's failed events.", no_args_is_help=True)

    @dlq_app.command("replay")
    def replay(route: str = typer.Option(..., "--route", help="The route whose failed events are sent again."),
               rules: Path | None = typer.Option(None, "--rules", help="Rules directory (default: <rules_dir>/routes)."),
               reason: str | None = typer.Option(None, "--reason", help="Only events dead-lettered for this reason."),
               dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be sent, send nothing."),
               ) -> None:
        """Send a route's failed events (from its dead-letter topic) to that route's topic targets again.

        Only that route's events are sent, with their ids (consumers drop duplicates); frames and
        other routes' events in the same topic are left alone. Webhook and object targets are
        listed as not replayed.
        """
        from pipeline.runtime.settings import get_settings

        settings = get_settings()
        rules_dir = rules or Path(settings.rules_dir) / "routes"
        report = asyncio.run(replay_route(settings, route, rules_dir, reason=reason, dry_run=dry_run))
        verb = "would send" if dry_run else "sent"
        targets = ", ".join(f"{topic} ({n})" for topic, n in report.sent.items()) or "nothing"
        typer.echo(f"{route}: {report.replayed} failed events of {report.read} dead letters read; {verb} to {targets}; "
                   f"{report.other} others left alone")
        for target in report.skipped_targets:
            typer.echo(f"not replayed: {target} (only topic targets are replayed)")

    app.add_typer(dlq_app, name="dlq")
