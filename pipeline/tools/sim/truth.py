"""The ground-truth file of a simulation: every injected fault, keyed as it was emitted.

One Parquet file (`<recording>.truth.parquet`) with a row per corrupted reading and a
row per faulty frame, written one row group per simulated window:

=============  =======  ==============================================================
column         type     meaning
=============  =======  ==============================================================
level          string   ``reading`` or ``frame``
vin            string   vehicle
signal         string   VSS name (reading rows; may be a name outside the catalog for
                        ``unknown_signal``); null for frame rows
t              int64    reading timestamp (epoch ms) exactly as emitted: shifted for
                        clock skew; for ``dropout`` the t the missing reading would have
                        had. Null for frame rows
seq            int64    seq of the frame the reading is (or would have been) in
kind           string   ``sensor`` or ``gps``: the frame's topic
fault          string   fault name (see `pipeline.tools.sim.faults.FAULTS`)
value          double   value as emitted (in the labelled unit for ``wrong_unit``; NaN
                        for ``nan`` and ``dropout``); null for frame rows
true_value     double   the clean value in the canonical unit; null for frame rows
sent_at        int64    frame rows: sent_at as emitted (skewed for ``clock_skew``)
timestamp_ms   int64    frame rows: Kafka record timestamp of the faulty copy (the
                        resend for ``duplicate``, the late arrival for ``late``)
n_readings     int64    frame rows: readings carried by the frame
detail         string   frame rows: variant (missing field, wrong type, truncation,
                        delay) ; reading rows of unit faults: the unit label
=============  =======  ==============================================================

A reading has at most one reading-level fault, except that the readings of a resent
frame are listed again as ``duplicate`` (the copy's readings) and the readings of a
skewed frame that carry no other fault are listed as ``clock_skew``. Readings inside
malformed frames (``bad_json``, ``missing_field``, ``wrong_type``, ``oversized``) carry
no reading rows: the frame row stands for them. ``late`` and ``out_of_order`` are frame
rows only (their readings are intact).

The Parquet key-value metadata ``pipeline.tools.simulate`` holds a JSON summary: the
configuration, totals (frames by kind, readings) and, per fault, the configured rate,
the injected count and the opportunities (units it could have hit), so achieved rates
can be checked without re-running the simulation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

SUMMARY_KEY = b"pipeline.tools.simulate"

SCHEMA = pa.schema([
    ("level", pa.string()),
    ("vin", pa.string()),
    ("signal", pa.string()),
    ("t", pa.int64()),
    ("seq", pa.int64()),
    ("kind", pa.string()),
    ("fault", pa.string()),
    ("value", pa.float64()),
    ("true_value", pa.float64()),
    ("sent_at", pa.int64()),
    ("timestamp_ms", pa.int64()),
    ("n_readings", pa.int64()),
    ("detail", pa.string()),
])


def truth_path(recording: Path | str) -> Path:
    """Where the truth file of a recording lives: beside it, `<name>.truth.parquet`."""
    rec = Path(recording)
    return rec.with_name(rec.name + ".truth.parquet")


@dataclass(slots=True)
class TruthRows:
    """Columns of truth rows for one window (any lengths; strings as object arrays)."""

    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(next(iter(self.columns.values())).shape[0]) if self.columns else 0


def reading_rows(vin: npt.NDArray[np.object_], signal: npt.NDArray[np.object_], t: npt.NDArray[np.int64],
                 seq: npt.NDArray[np.int64], kind: npt.NDArray[np.object_], fault: npt.NDArray[np.object_],
                 value: npt.NDArray[np.float64], true_value: npt.NDArray[np.float64],
                 detail: npt.NDArray[np.object_] | None = None) -> TruthRows:
    n = vin.shape[0]
    none_i = np.full(n, None, dtype=object)
    return TruthRows({
        "level": np.full(n, "reading", dtype=object), "vin": vin, "signal": signal, "t": t, "seq": seq,
        "kind": kind, "fault": fault, "value": value, "true_value": true_value, "sent_at": none_i,
        "timestamp_ms": none_i, "n_readings": none_i,
        "detail": detail if detail is not None else none_i,
    })


def frame_rows(vin: npt.NDArray[np.object_], seq: npt.NDArray[np.int64], kind: npt.NDArray[np.object_],
               fault: npt.NDArray[np.object_], sent_at: npt.NDArray[np.int64],
               timestamp_ms: npt.NDArray[np.int64], n_readings: npt.NDArray[np.int64],
               detail: npt.NDArray[np.object_]) -> TruthRows:
    n = vin.shape[0]
    none = np.full(n, None, dtype=object)
    return TruthRows({
        "level": np.full(n, "frame", dtype=object), "vin": vin, "signal": none, "t": none, "seq": seq,
        "kind": kind, "fault": fault, "value": none, "true_value": none, "sent_at": sent_at,
        "timestamp_ms": timestamp_ms, "n_readings": n_readings, "detail": detail,
    })


class TruthWriter:
    """Appends truth rows window by window; writes the summary when closed."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._writer = pq.ParquetWriter(self.path, SCHEMA, compression="zstd")
        self.rows = 0

    def write(self, parts: list[TruthRows]) -> None:
        parts = [p for p in parts if len(p)]
        if not parts:
            return
        arrays = []
        for f in SCHEMA:
            col = np.concatenate([p.columns[f.name] for p in parts])
            if col.dtype == object:
                arrays.append(pa.array(col.tolist(), type=f.type))
            else:
                arrays.append(pa.array(col, type=f.type))
        table = pa.Table.from_arrays(arrays, schema=SCHEMA)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self, summary: dict[str, Any]) -> None:
        self._writer.add_key_value_metadata({SUMMARY_KEY: json.dumps(summary, sort_keys=True).encode()})
        self._writer.close()


@dataclass(slots=True)
class Truth:
    """A loaded truth file: reading faults, frame faults and the run's summary.

    `readings` has numpy columns vin, signal, t, fault, seq, kind, value, true_value,
    detail; `frames` has vin, seq, kind, fault, sent_at, timestamp_ms, n_readings, detail.
    Strings are object arrays.
    """

    readings: dict[str, np.ndarray]
    frames: dict[str, np.ndarray]
    summary: dict[str, Any]

    def reading_keys(self, fault: str | None = None) -> set[tuple[str, str, int]]:
        """{(vin, signal, t)} of reading faults (of one fault type if given)."""
        r = self.readings
        mask = np.ones(r["vin"].shape[0], dtype=bool) if fault is None else r["fault"] == fault
        return set(zip(r["vin"][mask].tolist(), r["signal"][mask].tolist(), r["t"][mask].tolist(), strict=True))

    def frame_keys(self, fault: str | None = None) -> set[tuple[str, int]]:
        """{(vin, seq)} of frame faults (of one fault type if given)."""
        f = self.frames
        mask = np.ones(f["vin"].shape[0], dtype=bool) if fault is None else f["fault"] == fault
        return set(zip(f["vin"][mask].tolist(), f["seq"][mask].tolist(), strict=True))


def load_truth(path: Path | str) -> Truth:
    """Read a truth file (or the truth beside a recording, if given the recording's path)."""
    p = Path(path)
    if not p.name.endswith(".parquet"):
        p = truth_path(p)
    pf = pq.ParquetFile(p)
    meta = pf.metadata.metadata or {}
    summary = json.loads(meta[SUMMARY_KEY]) if SUMMARY_KEY in meta else {}
    table = pf.read()
    level = np.asarray(table.column("level").to_pylist(), dtype=object)

    def cols(names: tuple[str, ...], mask: npt.NDArray[np.bool_]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        sub = table.filter(pa.array(mask))
        for name in names:
            column = sub.column(name)
            if pa.types.is_string(column.type):
                out[name] = np.asarray(column.to_pylist(), dtype=object)
            elif pa.types.is_floating(column.type):
                out[name] = column.to_numpy(zero_copy_only=False).astype(np.float64)
            else:
                out[name] = column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        return out

    readings = cols(("vin", "signal", "t", "fault", "seq", "kind", "value", "true_value", "detail"),
                    level == "reading")
    frames = cols(("vin", "seq", "kind", "fault", "sent_at", "timestamp_ms", "n_readings", "detail"),
                  level == "frame")
    return Truth(readings, frames, summary)
