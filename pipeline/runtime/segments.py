"""Per-partition segments: what accumulates between object-store flushes, and its objects.

A segment is a contiguous run of offsets of one input partition. It starts at the first
offset after the last flush (= the committed offset after a restart), so a replay after a
crash rebuilds the same segments and writes the same keys with the same content. It is
flushed when it reaches a record or reading count, or when the consumer has caught up;
never on a wall-clock timer.

Every flush writes, under deterministic keys:
- `clean/year=/month=/date=/hour=/<segment>.parquet`, one per record-time hour, with the
  reading counts by reason in its metadata;
- `events/<type>/year=.../<segment>.parquet` for derived events;
- `manifests/<topic>/<partition>/<first>-<last>.json`: the account of the segment
  (frames in, ok and dead-lettered; readings in, kept, repaired, dropped by reason; keys),
  which `pipeline reconcile` checks against the topics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from pipeline.core.batch import EventBatch, RawRecord, Readings
from pipeline.core.process import BatchResult
from pipeline.runtime.sinks import (
    HOUR_MS,
    OFFSET_WIDTH,
    PutObject,
    events_table,
    hive_prefix,
    metadata_value,
    parquet_bytes,
    readings_table,
    segment_name,
)

MANIFEST_PREFIX = "manifests"


def manifest_key(topic: str, partition: int, first: int, last: int) -> str:
    return f"{MANIFEST_PREFIX}/{topic}/{partition:03d}/{first:0{OFFSET_WIDTH}d}-{last:0{OFFSET_WIDTH}d}.json"


@dataclass(slots=True)
class Segment:
    """Accumulated output of one partition since its last flush."""

    topic: str
    partition: int
    first: int = -1
    last: int = -1
    records: list[RawRecord] = field(default_factory=list)
    clean: list[tuple[Readings, np.ndarray, list[RawRecord]]] = field(default_factory=list)
    events: list[EventBatch] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    frames_in: int = 0
    frames_dead: int = 0
    readings_in: int = 0
    dead_offsets: list[int] = field(default_factory=list)  # frames dead-lettered before cleaning
    dead_letters: dict[str, int] = field(default_factory=dict)
    routed: dict[str, int] = field(default_factory=dict)
    pending: list[Any] = field(default_factory=list)  # adapter's un-acked events
    clean_rows: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def add_count(self, name: str, n: int) -> None:
        if n:
            self.counts[name] = self.counts.get(name, 0) + int(n)


def split_batch(result: BatchResult) -> dict[tuple[str, int], dict[str, Any]]:
    """Split one core batch result by input (topic, partition): rows, counts, events."""
    records = result.records
    keys = [(r.topic, r.partition) for r in records]
    position = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    uniq = list(position)
    seg_of_record = np.fromiter((position[k] for k in keys), dtype=np.int64, count=len(records))
    by_record = result.readings_by_record()
    frames_ok = result.frames_ok()
    dead_by_record: dict[int, list[str]] = {}
    record_pos = {id(r): i for i, r in enumerate(records)}
    for dl in result.dead_letters:
        dead_by_record.setdefault(record_pos.get(id(dl.record), -1), []).append(f"{dl.stage}:{dl.reason}")

    clean_seg = seg_of_record[result.clean.frames.record[result.clean.frame]] if len(result.clean) else \
        np.empty(0, dtype=np.int64)
    event_seg = seg_of_record[result.events.origin] if len(result.events) else np.empty(0, dtype=np.int64)
    routed_seg = {route: seg_of_record[ev.origin] for route, ev in result.routed.items()}

    out: dict[tuple[str, int], dict[str, Any]] = {}
    for s, key in enumerate(uniq):
        rec_mask = seg_of_record == s
        idx = np.flatnonzero(rec_mask)
        reasons = by_record[idx].sum(axis=0) if len(idx) else np.zeros(len(result.reasons), dtype=np.int64)
        dead: dict[str, int] = {}
        for i in idx.tolist():
            for code in dead_by_record.get(i, ()):
                dead[code] = dead.get(code, 0) + 1
        cmask = clean_seg == s
        out[key] = {
            "records": [records[i] for i in idx.tolist()],
            "frames_ok": int(frames_ok[idx].sum()),
            "reason_counts": {result.reasons[j]: int(c) for j, c in enumerate(reasons.tolist()) if c},
            "readings_in": int(reasons.sum()),
            "clean": result.clean.take(cmask) if len(result.clean) else result.clean,
            "repaired": result.repaired[cmask] if len(result.clean) else result.repaired,
            "events": result.events.take(event_seg == s) if len(result.events) else result.events,
            "routed": {r: int((rs == s).sum()) for r, rs in routed_seg.items()},
            "dead_letters": dead,
            "dead_offsets": [records[i].offset for i in idx.tolist() if not frames_ok[i]],
        }
    return out


def add_to_segment(seg: Segment, part: dict[str, Any], all_records: list[RawRecord]) -> None:
    """Fold one batch's share of a partition into its open segment."""
    recs: list[RawRecord] = part["records"]
    if not recs:
        return
    if seg.first < 0:
        seg.first = recs[0].offset
    seg.last = max(seg.last, recs[-1].offset)
    seg.records.extend(recs)
    seg.frames_in += len(recs)
    seg.frames_dead += len(recs) - part["frames_ok"]
    seg.dead_offsets.extend(part["dead_offsets"])
    seg.readings_in += part["readings_in"]
    for name, n in part["reason_counts"].items():
        seg.add_count(name, n)
    clean: Readings = part["clean"]
    if len(clean):
        seg.clean.append((clean, part["repaired"], all_records))
        seg.clean_rows += len(clean)
    if len(part["events"]):
        seg.events.append(part["events"])
    for code, n in part["dead_letters"].items():
        seg.dead_letters[code] = seg.dead_letters.get(code, 0) + n
    for route, n in part["routed"].items():
        if n:
            seg.routed[route] = seg.routed.get(route, 0) + n


def summarise(counts: dict[str, int]) -> dict[str, int]:
    """kept / repaired / dropped totals from reason counts."""
    kept = counts.get("kept", 0)
    repaired = sum(v for k, v in counts.items() if k.startswith("repaired"))
    dropped = sum(v for k, v in counts.items() if k.startswith("dropped"))
    return {"kept": kept, "repaired": repaired, "dropped": dropped}


def event_objects(events: EventBatch, name: str, metadata: dict[str, str]) -> list[PutObject]:
    """Derived events as Parquet, one object per type: `events/<type>/<hour of its first
    event>/<name>.parquet`, with the type and row count added to `metadata`."""
    objects = []
    types = events.attrs["type"]
    for etype in sorted(set(types.tolist())):
        sel = events.take(types == etype)
        hour = int(sel.attrs["time"].min()) // HOUR_MS * HOUR_MS
        objects.append(PutObject(f"events/{etype}/{hive_prefix(hour)}/{name}.parquet", parquet_bytes(events_table(sel)),
                                 "application/vnd.apache.parquet",
                                 dict(metadata, rows=str(len(sel)), **{"event-type": etype})))
    return objects


def segment_objects(seg: Segment) -> list[PutObject]:
    """The objects of a segment: clean Parquet per record hour, events per type, manifest last."""
    import pyarrow as pa

    name = segment_name(seg.topic, seg.partition, seg.first, seg.last)
    totals = summarise(seg.counts)
    common_meta = {
        "source-topic": seg.topic,
        "source-partition": str(seg.partition),
        "first-offset": str(seg.first),
        "last-offset": str(seg.last),
        "frames-in": str(seg.frames_in),
        "readings-in": str(seg.readings_in),
        "readings-kept": str(totals["kept"]),
        "readings-repaired": str(totals["repaired"]),
        "readings-dropped": str(totals["dropped"]),
        "counts": metadata_value(seg.counts),
    }
    objects: list[PutObject] = []
    clean_keys: list[str] = []
    if seg.clean:
        tables = [readings_table(r, rep, recs) for r, rep, recs in seg.clean]
        table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
        t_ms = np.asarray(table.column("t").to_numpy().astype("datetime64[ms]").astype(np.int64))
        hours = t_ms // HOUR_MS
        order = np.lexsort((t_ms, hours))
        table = table.take(pa.array(order))
        hours = hours[order]
        for h in np.unique(hours).tolist():
            rows = np.flatnonzero(hours == h)
            part = table.slice(int(rows[0]), len(rows))
            key = f"clean/{hive_prefix(h * HOUR_MS)}/{name}.parquet"
            clean_keys.append(key)
            meta = dict(common_meta, rows=str(len(rows)))
            objects.append(PutObject(key, parquet_bytes(part), "application/vnd.apache.parquet", meta))
    event_keys: list[str] = []
    if seg.events:
        written = event_objects(EventBatch.concat(seg.events), name, common_meta)
        event_keys = [o.key for o in written]
        objects.extend(written)
    manifest = {
        "topic": seg.topic,
        "partition": seg.partition,
        "first_offset": seg.first,
        "last_offset": seg.last,
        "frames_in": seg.frames_in,
        "frames_ok": seg.frames_in - seg.frames_dead,
        "frames_dead_lettered": seg.frames_dead,
        "dead_lettered_offsets": seg.dead_offsets,
        "readings_in": seg.readings_in,
        **{f"readings_{k}": v for k, v in totals.items()},
        "counts": seg.counts,
        "dead_letters": seg.dead_letters,
        "routed": seg.routed,
        "clean_objects": clean_keys,
        "event_objects": event_keys,
    }
    objects.append(PutObject(manifest_key(seg.topic, seg.partition, seg.first, seg.last),
                             orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2),
                             "application/json", common_meta))
    return objects
