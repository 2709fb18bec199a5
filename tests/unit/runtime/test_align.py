"""Event-time alignment of the co-partitioned ingest topics (pure, no Kafka)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.batch import RawRecord
from pipeline.runtime.align import Aligner

S, G = "sensor", "gps"


def recs(topic: str, partition: int, first_offset: int, times_s: list[int]) -> list[RawRecord]:
    return [RawRecord(topic, partition, first_offset + i, b"VIN", b"{}", (), t * 1000) for i, t in enumerate(times_s)]


def aligner(**kw: int) -> Aligner:
    a = Aligner((S, G), max_wait_ms=kw.get("max_wait_ms", 500), max_buffered=kw.get("max_buffered", 100))
    a.assign({0, 1})
    return a


def where(records: list[RawRecord]) -> list[tuple[str, int]]:
    return [(r.topic, r.offset) for r in records]


def test_the_leading_topic_is_held_until_the_other_catches_up() -> None:
    a = aligner()
    a.add(S, 0, recs(S, 0, 0, [0, 10, 20, 30, 40, 50, 60]))
    a.add(G, 0, recs(G, 0, 0, [0, 10, 20]))
    out = a.release(now_ms=0)
    assert max(r.timestamp_ms for r in out) == 20_000
    assert where(out) == [(S, 0), (G, 0), (S, 1), (G, 1), (S, 2), (G, 2)]  # merged by time
    assert a.buffered(S) == 4 and a.watermark(0) == 20_000
    a.add(G, 0, recs(G, 0, 3, [30, 40, 50, 60]))
    out = a.release(now_ms=100)
    assert [r.timestamp_ms // 1000 for r in out] == [30, 30, 40, 40, 50, 50, 60, 60]
    assert a.buffered() == 0


def test_a_quiet_topic_is_waited_for_then_marked_idle_until_it_delivers() -> None:
    a = aligner(max_wait_ms=500)
    a.add(S, 0, recs(S, 0, 0, [0, 1, 2]))
    assert a.release(now_ms=1_000) == []  # the GPS topic has said nothing yet: wait
    assert a.next_deadline() == 1_500
    assert a.release(now_ms=1_400) == []
    assert where(a.release(now_ms=1_500)) == [(S, 0), (S, 1), (S, 2)]
    assert (G, 0) in a.idle_topics()
    a.add(S, 0, recs(S, 0, 3, [3]))
    assert where(a.release(now_ms=1_600)) == [(S, 3)]  # idle: no more waiting
    a.add(G, 0, recs(G, 0, 0, [1, 2, 3]))  # it speaks again: aligned again
    assert (G, 0) not in a.idle_topics()
    a.add(S, 0, recs(S, 0, 4, [9]))
    assert where(a.release(now_ms=1_700)) == [(G, 0), (G, 1), (G, 2)]
    assert a.buffered(S) == 1


def test_progress_of_the_lagging_topic_restarts_the_wait() -> None:
    a = aligner(max_wait_ms=500)
    a.add(S, 0, recs(S, 0, 0, [0, 100]))
    a.add(G, 0, recs(G, 0, 0, [0]))
    a.release(now_ms=0)
    a.add(G, 0, recs(G, 0, 1, [50]))
    assert len(a.release(now_ms=400)) == 1  # GPS 50 s: progress
    assert a.release(now_ms=800) == []  # 400 ms since the progress: still waiting
    assert where(a.release(now_ms=900)) == [(S, 1)]


def test_partitions_are_aligned_independently() -> None:
    a = aligner()
    a.add(S, 0, recs(S, 0, 0, [0, 5]))
    a.add(G, 0, recs(G, 0, 0, [5]))
    a.add(S, 1, recs(S, 1, 0, [0, 5]))
    out = a.release(now_ms=0)
    assert sorted((r.partition, r.topic, r.offset) for r in out) == [(0, G, 0), (0, S, 0), (0, S, 1)]
    assert a.watermark(1) is None and a.watermark(0) == 5_000


def test_refetched_offsets_and_unassigned_partitions_are_skipped() -> None:
    a = aligner()
    assert a.add(S, 0, recs(S, 0, 10, [1, 2])) == 2
    assert a.add(S, 0, recs(S, 0, 10, [1, 2, 3])) == 1
    assert a.add(S, 7, recs(S, 7, 0, [1])) == 0
    assert a.buffered(S, 0) == 3


def test_full_buffers_are_reported_and_revoke_forgets_everything() -> None:
    a = aligner(max_buffered=3)
    a.add(S, 0, recs(S, 0, 0, [1, 2, 3, 4]))
    assert a.over_limit() == {(S, 0)}
    assert a.revoke({0}) == 4
    assert a.buffered() == 0 and 0 not in a.partitions
    a.assign({0})
    assert a.add(S, 0, recs(S, 0, 0, [1])) == 1  # re-read from the committed offset


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([S, G]), st.integers(0, 1), st.integers(1, 5),
                          st.integers(0, 30)), min_size=1, max_size=30))
def test_every_record_comes_out_once_in_offset_order_per_topic_partition(
        steps: list[tuple[str, int, int, int]]) -> None:
    """Whatever the arrival pattern, each record is released exactly once, each topic-partition's
    in offset order, and nothing is left once the clock passes every wait."""
    a = aligner(max_wait_ms=50)
    nxt: dict[tuple[str, int], int] = {}
    clock: dict[tuple[str, int], int] = {}
    out: list[RawRecord] = []
    now = 0
    for topic, p, n, step_s in steps:
        key = (topic, p)
        first = nxt.get(key, 0)
        base = clock.get(key, 0)
        times = [base + step_s * (i + 1) for i in range(n)]
        a.add(topic, p, recs(topic, p, first, times))
        nxt[key], clock[key] = first + n, times[-1]
        now += 20
        out.extend(a.release(now_ms=now))
    for _ in range(5):
        now += 100
        out.extend(a.release(now_ms=now))
    assert len(out) == sum(nxt.values())
    for key, n in nxt.items():
        offs = [r.offset for r in out if (r.topic, r.partition) == key]
        assert offs == list(range(n))


def test_watermarks_count_only_what_reached_the_core_and_skip_idle_topics() -> None:
    a = aligner()
    assert a.delivered_watermarks({(S, 0): 5_000}) == {}  # GPS of partition 0 not delivered yet
    assert a.delivered_watermarks({(S, 0): 5_000, (G, 0): 3_000}) == {0: 3_000}
    a.add(S, 0, recs(S, 0, 0, [9]))
    a.release(now_ms=0)
    a.release(now_ms=1_000)  # GPS quiet for the wait: idle
    assert (G, 0) in a.idle_topics()
    assert a.delivered_watermarks({(S, 0): 9_000, (G, 0): 3_000}) == {0: 9_000}


def test_a_topic_with_records_still_in_the_broker_is_slow_not_idle() -> None:
    backlog = {(G, 0): True}
    a = Aligner((S, G), max_wait_ms=500, max_buffered=100, backlog=lambda t, p: backlog.get((t, p), False))
    a.assign({0})
    a.add(S, 0, recs(S, 0, 0, [0, 1, 2]))
    a.release(now_ms=0)
    assert a.release(now_ms=5_000) == []  # the GPS records are on their way: keep waiting
    assert (G, 0) not in a.idle_topics()
    backlog[(G, 0)] = False  # fetched everything there was, and none of it came: quiet
    assert len(a.release(now_ms=5_001)) == 3 and (G, 0) in a.idle_topics()


def test_a_partition_given_straight_back_resumes_where_this_worker_stopped() -> None:
    a = aligner()
    a.add(S, 0, recs(S, 0, 0, [1, 2, 3, 4]))
    a.add(G, 0, recs(G, 0, 0, [1, 2]))
    a.release(now_ms=0)  # S 0..1 and G 0..1 handed on, S 2..3 held back
    resume = a.resume_offsets({0})
    assert resume == {(S, 0): 2, (G, 0): 2}
    a.revoke({0})
    a.assign({0}, resume)
    assert a.add(S, 0, recs(S, 0, 4, [5])) == 0  # the consumer kept its position: a gap
    assert a.gaps == {(S, 0): 2}
    assert a.add(S, 0, recs(S, 0, 0, [1, 2, 3, 4, 5])) == 3  # after a seek back (or from an older commit)
    assert a.gaps == {} and a.buffered(S, 0) == 3
