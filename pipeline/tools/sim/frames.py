"""Simulated frames on their way out, and their encoding as Kafka records.

`SimFrame` is one frame with its arrival time and the fault it carries. `to_record` encodes
one frame dict (`pipeline.core.events.encode_frame`) and breaks the payload of a malformed
frame (`_malformed`: cut JSON, a missing field, a wrong type, an oversized frame).
`_json_frames` makes the payloads of a whole window without frame dicts: each signal's
samples are serialized once (`_json_runs`) and each frame's JSON is cut out of that text,
byte for byte what orjson makes of the dict.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from pipeline.core.events import encode_frame
from pipeline.tools.recording import Record

KINDS = ("sensor", "gps")
_MALFORMED = frozenset({"missing_field", "wrong_type", "oversized", "bad_json"})  # payloads broken on the way out
_BROKEN_FROM_DICT = _MALFORMED - {"bad_json"}  # built by editing the frame dict (bad_json cuts the bytes)
_COMMA, _CUT = ord(","), ord("|")  # "|" never occurs in JSON numbers


@dataclass(slots=True)
class SimFrame:
    """One frame on its way out: what to send, when it arrives, and how it is broken."""

    arrival_ms: int  # Kafka record timestamp
    kind: str  # sensor | gps
    frame: dict[str, Any]  # empty for frames encoded straight to bytes, unless a fault edits it
    n_readings: int
    vehicle: int  # index of the vehicle in the fleet (ordering ties)
    seq: int
    fault: str = ""  # frame-level fault name, "" if none
    detail: str = ""
    copy: int = 0  # 1 for the resend of a duplicated frame
    record: Record | None = None  # the encoded record, when encoding at generation time


def _json_frames(heads: list[bytes], tails: list[bytes], col_names: list[str], col_t: list[npt.NDArray[np.int64]],
                col_v: list[npt.NDArray[Any]], pair_col: npt.NDArray[np.int64], pair_n: npt.NDArray[np.int64],
                bounds: npt.NDArray[np.int64], pair_end: dict[int, bytes]) -> list[bytes]:
    """JSON objects of many frames whose samples are consecutive runs of shared columns.

    Frame f is `heads[f]`, then its pairs `bounds[f]:bounds[f + 1]`, comma-separated, then
    `tails[f]`. Pair p is `"<col_names[c]>":{"t":[..],"v":[..]}` for column c = `pair_col[p]`,
    its closing `]}` replaced by `pair_end[p]` if given; a column's pairs take its numbers
    in order, `pair_n[p]` each. The bytes equal orjson's for the same frames as dicts of
    numpy slices: orjson writes a number the same way whatever array holds it, so each
    column is serialized once and cut into runs, and frames are joined from the pieces.
    That avoids a dict, two arrays and orjson's per-array work for every pair.
    """
    n_cols, n_pairs = len(col_names), len(pair_col)
    order = np.argsort(pair_col, kind="stable")  # pairs column by column, each column in frame order
    col_end = np.cumsum(np.bincount(pair_col, minlength=n_cols)).tolist()
    runs_n = pair_n[order]
    t_runs: list[bytes] = []
    v_runs: list[bytes] = []
    lo = 0
    for j, hi in enumerate(col_end):
        t_runs += _json_runs(col_t[j], runs_n[lo:hi])
        v_runs += _json_runs(col_v[j], runs_n[lo:hi])
        lo = hi
    t_text = np.empty(n_pairs, dtype=object)
    t_text[order] = t_runs
    v_text = np.empty(n_pairs, dtype=object)
    v_text[order] = v_runs

    keys = [orjson.dumps(name) + b':{"t":[' for name in col_names]
    key_table = np.asarray([*keys, *(b"," + key for key in keys)], dtype=object)
    first = np.zeros(n_pairs, dtype=bool)
    first[bounds[:-1][bounds[1:] > bounds[:-1]]] = True
    opening: list[bytes] = key_table[np.where(first, pair_col, pair_col + n_cols)].tolist()
    closing = [b"]}"] * n_pairs
    for pair, text in pair_end.items():
        closing[pair] = text
    edges = bounds.tolist()
    for f, (lo, hi) in enumerate(itertools.pairwise(edges)):  # the frame's head and tail around its pairs
        if hi > lo:
            opening[lo] = heads[f] + opening[lo]
            closing[hi - 1] += tails[f]
    parts: list[bytes] = [b""] * (5 * n_pairs)
    parts[0::5] = opening
    parts[1::5] = t_text.tolist()
    parts[2::5] = [b'],"v":['] * n_pairs
    parts[3::5] = v_text.tolist()
    parts[4::5] = closing
    return [b"".join(parts[5 * lo:5 * hi]) if hi > lo else heads[f] + tails[f]
            for f, (lo, hi) in enumerate(itertools.pairwise(edges))]


def _json_runs(column: npt.NDArray[Any], lengths: npt.NDArray[np.int64]) -> list[bytes]:
    """orjson's text of `column` cut into consecutive runs of `lengths` numbers: `["1,2", "3"]`."""
    raw = np.frombuffer(orjson.dumps(column, option=orjson.OPT_SERIALIZE_NUMPY), dtype=np.uint8).copy()
    if lengths.size > 1:  # numbers hold no commas: mark the ones between runs, then split there
        commas = np.flatnonzero(raw == _COMMA)
        raw[commas[np.cumsum(lengths[:-1]) - 1]] = _CUT
    runs = raw[1:-1].tobytes().split(bytes([_CUT]))
    if len(runs) != lengths.size:
        raise RuntimeError(f"a column of {column.dtype} did not serialize as a flat JSON array")
    return runs


def to_record(sim: SimFrame, topics: dict[str, str], max_frame_bytes: int = 1_000_000) -> Record:
    """Encode a frame as the Kafka record it is sent as, breaking the payload if it is faulty."""
    encoded = encode_frame(sim.kind, sim.frame)  # type: ignore[arg-type]
    value = encoded.value
    if sim.fault in _MALFORMED:
        value = _malformed(sim, value, max_frame_bytes)
    return Record(topics[sim.kind], encoded.key, value, tuple(encoded.headers), sim.arrival_ms)


def _malformed(sim: SimFrame, value: bytes, max_frame_bytes: int) -> bytes:
    frame = dict(sim.frame)
    if sim.fault == "bad_json":
        cut = float(sim.detail.partition("@")[2] or 0.5)
        return value[:max(1, int(len(value) * cut))]
    if sim.fault == "missing_field":
        frame.pop(sim.detail or "samples", None)
    elif sim.fault == "wrong_type":
        what = sim.detail or "seq:str"
        samples = frame.get("samples") or {}
        first = next(iter(samples), None)
        if what == "seq:str":
            frame["seq"] = str(frame["seq"])
        elif what == "sent_at:str":
            frame["sent_at"] = datetime.fromtimestamp(frame["sent_at"] / 1000, UTC).isoformat()
        elif what == "samples:list":
            frame["samples"] = list(samples)
        elif first is not None:
            entry = dict(samples[first])
            key = what.partition(":")[0]
            entry[key] = [str(x) for x in entry[key]]
            frame["samples"] = {**samples, first: entry}
        else:
            frame["seq"] = str(frame["seq"])
    elif sim.fault == "oversized":
        pad = max_frame_bytes + 4096 - len(value)
        frame["diagnostics"] = {"dump": "0" * max(pad, 16)}
    return orjson.dumps(frame, option=orjson.OPT_SERIALIZE_NUMPY)
