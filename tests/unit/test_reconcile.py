"""reconcile.check_partition: coverage, balance and dead letters from manifests alone."""

from __future__ import annotations

from typing import Any

from pipeline.tools.reconcile import PartitionReport, check_partition


def manifest(first: int, last: int, dead: list[int] = (), kept: int = 10, dropped: int = 0,
             readings_in: int | None = None) -> dict[str, Any]:
    n = last - first + 1
    return {"first_offset": first, "last_offset": last, "frames_in": n, "frames_dead_lettered": len(dead),
            "dead_lettered_offsets": list(dead), "readings_in": readings_in if readings_in is not None else kept + dropped,
            "readings_kept": kept, "readings_repaired": 0, "readings_dropped": dropped}


def report(committed: int) -> PartitionReport:
    return PartitionReport("t", 0, 0, committed, committed, 0)


def test_contiguous_manifests_up_to_the_commit_balance() -> None:
    r = check_partition(report(30), [manifest(0, 9), manifest(10, 19, dead=[12]), manifest(20, 29)], {12})
    assert r.ok, r.problems
    assert (r.covered_to, r.frames_in, r.frames_dead_lettered, r.dlq_found) == (30, 30, 1, 1)


def test_a_gap_below_the_commit_is_reported() -> None:
    r = check_partition(report(30), [manifest(0, 9), manifest(20, 29)], set())
    assert not r.ok and "gap: offsets 10..29" in r.problems[0]


def test_readings_that_do_not_balance_are_reported() -> None:
    r = check_partition(report(10), [manifest(0, 9, kept=5, dropped=2, readings_in=8)], set())
    assert any("readings in 8" in p for p in r.problems)


def test_overlapping_replay_counts_each_dead_frame_once() -> None:
    # A range replayed after a crash, cut differently: the same dead frame appears twice.
    r = check_partition(report(40), [manifest(0, 19, dead=[15]), manifest(10, 39, dead=[15])], {15})
    assert r.ok, r.problems
    assert r.overlaps == 1 and r.frames_dead_lettered == 1


def test_a_dead_frame_missing_from_the_dlq_is_reported() -> None:
    r = check_partition(report(10), [manifest(0, 9, dead=[3, 4])], {3})
    assert not r.ok and "offsets [4]" in r.problems[0]


def test_records_deleted_by_retention_before_commit_are_reported() -> None:
    r = PartitionReport("t", 0, 50, 20, 60, 50)  # log start 50, committed 20
    r = check_partition(r, [manifest(50, 59)], set())
    assert not r.ok and "deleted by the broker's retention" in r.problems[0]
