"""`pipeline reconcile`: prove from outside that nothing was lost.

For each ingest partition, every offset from the log start up to the consumer group's
committed offset must be covered by a segment manifest in the object store, each
manifest's readings must balance (in = kept + repaired + dropped), and every frame a
manifest counts as dead-lettered must be in the dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.core.errors import PipelineError
from pipeline.runtime.segments import MANIFEST_PREFIX
from pipeline.runtime.settings import Settings
from pipeline.runtime.topics import read_to_end


class ReconcileError(PipelineError):
    """The lake cannot be reconciled at all (its bucket does not exist)."""


@dataclass(slots=True)
class PartitionReport:
    topic: str
    partition: int
    log_start: int
    committed: int | None
    log_end: int
    covered_to: int  # first offset not covered by a contiguous run of manifests
    manifests: int = 0
    overlaps: int = 0  # manifests re-covering offsets (replays after a crash)
    frames_in: int = 0
    frames_dead_lettered: int = 0
    dlq_found: int = 0
    readings_in: int = 0
    readings_kept: int = 0
    readings_repaired: int = 0
    readings_dropped: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def load_manifests(client: Any, bucket: str, topic: str) -> dict[int, list[dict[str, Any]]]:
    """All segment manifests of a topic from the store, by partition, sorted by first offset."""
    out: dict[int, list[dict[str, Any]]] = {}
    # ListObjects V1 (marker paging): S3Proxy rejects V2 continuation tokens past 1000 keys.
    for obj in client.list_objects(bucket, prefix=f"{MANIFEST_PREFIX}/{topic}/", recursive=True, use_api_v1=True):
        response = client.get_object(bucket, obj.object_name)
        try:
            manifest = orjson.loads(response.read())
        finally:
            response.close()
            response.release_conn()
        out.setdefault(int(manifest["partition"]), []).append(manifest)
    for items in out.values():
        items.sort(key=lambda m: (m["first_offset"], m["last_offset"]))
    return out


async def read_dead_letter_offsets(settings: Settings, timeout_s: float = 10.0) -> dict[tuple[str, int], set[int]]:
    """Offsets of input records found in the dead-letter topic at the decode stage."""
    found: dict[tuple[str, int], set[int]] = {}
    async for msgs in read_to_end(settings, settings.topic_dlq, timeout_s=timeout_s):
        for m in msgs:
            h = dict(m.headers or ())
            if h.get("dlq_stage") in (b"decode", b"core"):
                key = (h["dlq_topic"].decode(), int(h["dlq_partition"]))
                found.setdefault(key, set()).add(int(h["dlq_offset"]))
    return found


def check_partition(report: PartitionReport, manifests: Iterable[dict[str, Any]],
                    dlq_offsets: set[int]) -> PartitionReport:
    """Coverage from log start to committed, balance per manifest, dead letters present."""
    committed = report.committed if report.committed is not None else report.log_start
    if report.committed is not None and report.committed < report.log_start:
        report.problems.append(
            f"offsets {report.committed}..{report.log_start - 1} were deleted by the broker's retention "
            "before the group committed them (check retention.ms of the topic)")
    cursor = report.log_start
    seen_ranges: set[tuple[int, int]] = set()
    expected_dead: set[int] = set()
    for m in manifests:
        first, last = int(m["first_offset"]), int(m["last_offset"])
        if (first, last) in seen_ranges:
            continue  # same key overwritten by a replay: identical, not double counted
        seen_ranges.add((first, last))
        if last < cursor:
            report.overlaps += 1
            continue
        if first > cursor:
            break
        if first < cursor:
            report.overlaps += 1
        report.manifests += 1
        expected_dead.update(int(o) for o in m.get("dead_lettered_offsets", ()))
        report.frames_in += int(m["frames_in"])
        report.frames_dead_lettered += int(m["frames_dead_lettered"])
        report.readings_in += int(m["readings_in"])
        report.readings_kept += int(m["readings_kept"])
        report.readings_repaired += int(m["readings_repaired"])
        report.readings_dropped += int(m["readings_dropped"])
        balance = int(m["readings_kept"]) + int(m["readings_repaired"]) + int(m["readings_dropped"])
        if balance != int(m["readings_in"]):
            report.problems.append(
                f"offsets {first}..{last}: readings in {m['readings_in']} != kept+repaired+dropped {balance}")
        if int(m["frames_in"]) != last - first + 1:
            report.problems.append(f"offsets {first}..{last}: manifest counts {m['frames_in']} frames")
        cursor = max(cursor, last + 1)
    report.covered_to = cursor
    if cursor < committed:
        report.problems.append(
            f"gap: offsets {cursor}..{committed - 1} are committed but in no manifest")
    # Overlapping manifests (a range replayed after a crash or rebalance) name the same dead
    # frames again: compare sets of offsets, not counts.
    report.frames_dead_lettered = len(expected_dead)
    report.dlq_found = len(expected_dead & dlq_offsets)
    missing = sorted(expected_dead - dlq_offsets)
    if missing:
        report.problems.append(f"{len(missing)} dead-lettered frames missing from the DLQ, offsets {missing[:10]}")
    return report


async def reconcile(settings: Settings, group: str | None = None) -> list[PartitionReport]:
    from pipeline.runtime.lag import read_group_lag

    lag = await read_group_lag(group or settings.app_id, list(settings.ingest_topics), settings)
    client = settings.minio_client()
    if not client.bucket_exists(settings.s3_bucket):
        raise ReconcileError(f"bucket {settings.s3_bucket!r} does not exist at {settings.s3_endpoint}")
    dlq = await read_dead_letter_offsets(settings)
    reports: list[PartitionReport] = []
    manifests_by_topic = {t: load_manifests(client, settings.s3_bucket, t) for t in settings.ingest_topics}
    for p in lag.by_partition:
        report = PartitionReport(p.topic, p.partition, p.log_start, p.committed, p.log_end, p.log_start)
        reports.append(check_partition(report, manifests_by_topic.get(p.topic, {}).get(p.partition, []),
                                       dlq.get((p.topic, p.partition), set())))
    return reports
