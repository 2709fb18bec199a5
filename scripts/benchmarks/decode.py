"""Decode throughput: `decode_records` against a per-reading Python loop, and encoder cost.

Frames are realistic: one vehicle each, the catalog's sensor signals of an electric vehicle,
5 s of samples at the catalog's intervals (slow signals appear in some frames only).
Prints readings/s and frames/s for batches of records; `--json` for machine-readable output.

    .venv/bin/python scripts/benchmarks/decode.py [--batches 20] [--batch-size 500] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.core.batch import RawRecord  # noqa: E402
from pipeline.core.catalog import Catalog, load_catalog  # noqa: E402
from pipeline.core.events import FRAME_KIND_OF_TYPE, decode_records, encode_frame  # noqa: E402

FRAME_MS = 5_000
T0 = 1_700_000_000_000


def ev_signals(catalog: Catalog) -> list[int]:
    """Sensor signals an electric vehicle sends (no combustion engine or fuel)."""
    return [i for i, s in enumerate(catalog.signals)
            if s.kind == "sensor" and ".CombustionEngine." not in s.name and ".FuelSystem." not in s.name]


def make_frames(catalog: Catalog, n: int, seed: int = 7) -> list[dict[str, Any]]:
    """`n` consecutive frames of vehicles cycling through a small fleet."""
    rng = np.random.default_rng(seed)
    signals = ev_signals(catalog)
    vins = [f"VF1SIM{i:011d}" for i in range(50)]
    frames = []
    for k in range(n):
        vin = vins[k % len(vins)]
        seq = k // len(vins)
        start = T0 + seq * FRAME_MS
        samples: dict[str, Any] = {}
        for i in signals:
            sig = catalog.signals[i]
            step = int(sig.interval_ms)
            first = -(-start // step) * step
            t = np.arange(first, start + FRAME_MS, step, dtype=np.int64)
            if t.size == 0:
                continue
            lo, hi = sig.min, sig.max
            v = np.clip(lo + (hi - lo) * (0.5 + 0.1 * rng.standard_normal(t.size)), lo, hi)
            values: list[Any] = (np.round(v).astype(int).tolist() if sig.is_integral
                                 else np.round(v, 3).tolist())
            samples[sig.name] = {"t": t.tolist(), "v": values}
        frames.append({"vin": vin, "seq": seq, "sent_at": start + FRAME_MS + 40, "samples": samples})
    return frames


def naive_decode(records: Sequence[RawRecord]) -> tuple[dict[str, np.ndarray], int]:
    """Baseline: the same checks, but a Python loop that appends every reading to lists."""
    vins: dict[str, int] = {}
    names: dict[str, int] = {}
    units: dict[str, int] = {"": 0}
    vehicle: list[int] = []
    signal: list[int] = []
    unit: list[int] = []
    t_col: list[int] = []
    v_col: list[float] = []
    frame_col: list[int] = []
    frames = 0
    for record in records:
        headers = {k.lower(): v for k, v in record.headers}
        if headers.get("ce_specversion") != b"1.0" or not headers.get("ce_id"):
            continue
        if headers.get("ce_type", b"").decode() not in FRAME_KIND_OF_TYPE:
            continue
        data = orjson.loads(record.value or b"")
        vin = data["vin"]
        if record.key is not None and record.key != vin.encode():
            continue
        vid = vins.setdefault(vin, len(vins))
        rows: list[tuple[int, int, int, int, float]] = []
        ok = True
        for name, sample in data["samples"].items():
            ts, vs = sample["t"], sample["v"]
            if len(ts) != len(vs):
                ok = False
                break
            sid = names.setdefault(name, len(names))
            uid = units.setdefault(sample.get("u") or "", len(units))
            for ti, vi in zip(ts, vs, strict=True):
                if not isinstance(ti, int) or not (vi is None or isinstance(vi, int | float)):
                    ok = False
                    break
                rows.append((vid, sid, uid, ti, np.nan if vi is None else float(vi)))
            if not ok:
                break
        if not ok:
            continue
        for vid_, sid, uid, ti, vi in rows:
            vehicle.append(vid_)
            signal.append(sid)
            unit.append(uid)
            t_col.append(ti)
            v_col.append(vi)
            frame_col.append(frames)
        frames += 1
    cols: dict[str, np.ndarray] = {
        "vehicle": np.array(vehicle, dtype=np.int32), "signal": np.array(signal, dtype=np.int32),
        "unit": np.array(unit, dtype=np.int16), "t": np.array(t_col, dtype=np.int64),
        "value": np.array(v_col, dtype=np.float64), "frame": np.array(frame_col, dtype=np.int32),
    }
    return cols, frames


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10, help="batches per timing run")
    parser.add_argument("--batch-size", type=int, default=500, help="records per batch")
    parser.add_argument("--repeat", type=int, default=5, help="timing runs (the best is reported)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    catalog = load_catalog()
    frames = make_frames(catalog, args.batches * args.batch_size)
    records = [encode_frame("sensor", f).to_raw("vehicle.sensor.raw", 0, i) for i, f in enumerate(frames)]
    batches = [records[i:i + args.batch_size] for i in range(0, len(records), args.batch_size)]
    n_readings = sum(len(s["t"]) for f in frames for s in f["samples"].values())
    n_frames = len(frames)

    # Both decoders must agree before their speed means anything.
    readings, dead = decode_records(batches[0])
    naive_cols, naive_frames = naive_decode(batches[0])
    assert not dead and naive_frames == len(readings.frames)
    for name, column in naive_cols.items():
        assert np.array_equal(getattr(readings, name), column, equal_nan=name == "value"), name

    def run_vectorised() -> None:
        for batch in batches:
            decode_records(batch)

    def run_naive() -> None:
        for batch in batches:
            naive_decode(batch)

    vec = min(timed(run_vectorised, args.repeat))
    naive = min(timed(run_naive, args.repeat))

    # One frame in ten carries a null value: decode takes the per-signal path for values.
    with_nulls = [dict(f, samples=dict(f["samples"])) for f in frames]
    for f in with_nulls[::10]:
        name = next(iter(f["samples"]))
        f["samples"][name] = {"t": f["samples"][name]["t"], "v": [None, *f["samples"][name]["v"][1:]]}
    null_records = [encode_frame("sensor", f).to_raw("vehicle.sensor.raw", 0, i) for i, f in enumerate(with_nulls)]
    null_batches = [null_records[i:i + args.batch_size] for i in range(0, len(null_records), args.batch_size)]

    def run_nulls() -> None:
        for batch in null_batches:
            decode_records(batch)

    nulls = min(timed(run_nulls, args.repeat))

    sample = frames[: min(2_000, len(frames))]

    def enc(via_sdk: bool) -> Callable[[], None]:
        def run() -> None:
            for f in sample:
                encode_frame("sensor", f, via_sdk=via_sdk)
        return run

    enc_direct = min(timed(enc(False), args.repeat)) / len(sample)
    enc_sdk = min(timed(enc(True), args.repeat)) / len(sample)
    as_numpy = [dict(f, samples={k: {"t": np.asarray(s["t"]), "v": np.asarray(s["v"], dtype=np.float64)}
                                 for k, s in f["samples"].items()}) for f in sample]

    def run_numpy() -> None:
        for f in as_numpy:
            encode_frame("sensor", f)

    enc_numpy = min(timed(run_numpy, args.repeat)) / len(sample)

    result = {
        "frames": n_frames,
        "readings": n_readings,
        "readings_per_frame": round(n_readings / n_frames, 1),
        "signals_per_frame": round(sum(len(f["samples"]) for f in frames) / n_frames, 1),
        "bytes_per_frame": round(sum(len(r.value or b"") for r in records) / n_frames),
        "batch_size": args.batch_size,
        "decode_records": {"readings_per_s": round(n_readings / vec), "frames_per_s": round(n_frames / vec),
                           "ms_per_batch": round(vec / len(batches) * 1e3, 2)},
        "naive_loop": {"readings_per_s": round(n_readings / naive), "frames_per_s": round(n_frames / naive),
                       "ms_per_batch": round(naive / len(batches) * 1e3, 2)},
        "speedup": round(naive / vec, 2),
        "decode_records_10pct_frames_with_null": {"readings_per_s": round(n_readings / nulls),
                                                  "frames_per_s": round(n_frames / nulls)},
        "encode_frame_us": {"direct": round(enc_direct * 1e6, 1), "sdk": round(enc_sdk * 1e6, 1),
                            "sdk_overhead": round(enc_sdk / enc_direct, 2),
                            "direct_numpy_samples": round(enc_numpy * 1e6, 1)},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{n_frames} frames, {n_readings} readings ({result['readings_per_frame']} per frame, "
              f"{result['signals_per_frame']} signals, {result['bytes_per_frame']} B), "
              f"batches of {args.batch_size}, best of {args.repeat}")
        for label, key in (("decode_records", "decode_records"), ("naive loop", "naive_loop")):
            r = result[key]
            print(f"  {label:15s} {r['readings_per_s']:>12,} readings/s {r['frames_per_s']:>9,} frames/s "
                  f"{r['ms_per_batch']:>8} ms/batch")
        print(f"  speedup         {result['speedup']}x")
        r = result["decode_records_10pct_frames_with_null"]
        print(f"  with nulls      {r['readings_per_s']:>12,} readings/s {r['frames_per_s']:>9,} frames/s "
              "(1 frame in 10 has a null)")
        e = result["encode_frame_us"]
        print(f"  encode_frame    direct {e['direct']} us/frame, via SDK {e['sdk']} us/frame "
              f"({e['sdk_overhead']}x); numpy samples {e['direct_numpy_samples']} us/frame")
    return result


if __name__ == "__main__":
    main()
