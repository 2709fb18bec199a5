"""Which events of a take() batch the worker processes after a rebalance."""

from types import SimpleNamespace

from pipeline.app import current_events


def event(offset: int, generation: int | None, partition: int = 0, topic: str = "sensor") -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(topic=topic, partition=partition, offset=offset,
                                                   generation_id=generation))


def offsets(events: list[SimpleNamespace]) -> list[tuple[int, int]]:
    return [(e.message.partition, e.message.offset) for e in events]


def test_events_fetched_before_a_rebalance_are_left_for_the_owner() -> None:
    batch = [event(10, 3), event(11, 3), event(10, 4), event(11, 4), event(12, 4)]
    fresh, repeats, stale = current_events(batch, generation=4)
    assert offsets(fresh) == [(0, 10), (0, 11), (0, 12)]
    assert repeats == []
    assert stale == 2


def test_a_refetched_offset_is_processed_once_and_acked_with_it() -> None:
    batch = [event(5, 2), event(6, 2), event(5, 2), event(6, 2), event(7, 2), event(5, 2, partition=1)]
    fresh, repeats, stale = current_events(batch, generation=2)
    assert offsets(fresh) == [(0, 5), (0, 6), (0, 7), (1, 5)]
    assert offsets(repeats) == [(0, 5), (0, 6)]
    assert stale == 0


def test_same_offset_on_another_topic_is_not_a_repeat() -> None:
    batch = [event(1, 1, topic="sensor"), event(1, 1, topic="gps")]
    fresh, repeats, _ = current_events(batch, generation=1)
    assert len(fresh) == 2 and repeats == []


def test_messages_without_a_generation_are_kept() -> None:
    fresh, _, stale = current_events([event(1, None)], generation=7)
    assert len(fresh) == 1 and stale == 0
