"""Hand-made batches for the cleaning tests: frames as dicts -> `Readings` (no decoder)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.core.batch import Frames, Readings

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
SPEED = "Vehicle.Speed"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
LAT = "Vehicle.CurrentLocation.Latitude"
LON = "Vehicle.CurrentLocation.Longitude"
ACC = "Vehicle.CurrentLocation.HorizontalAccuracy"
TYRE = "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure"
ACCEL = "Vehicle.Acceleration.Longitudinal"
HUMIDITY = "Vehicle.Exterior.Humidity"
HEADING = "Vehicle.CurrentLocation.Heading"


def frame(vin: str, seq: int, sent_at: int, samples: dict[str, Any], *,
          received_at: int | None = None) -> dict[str, Any]:
    """A frame: samples map a signal to (t, v) or (t, v, unit)."""
    return {"vin": vin, "seq": seq, "sent_at": sent_at,
            "received_at": sent_at + 500 if received_at is None else received_at,
            "samples": samples}


def readings_of(frames: Sequence[dict[str, Any]]) -> Readings:
    """Columns of the frames, dictionaries in first-seen order (as the decoder builds them)."""
    vins: dict[str, int] = {}
    signals: dict[str, int] = {}
    units: dict[str, int] = {"": 0}
    cols: dict[str, list[Any]] = {k: [] for k in ("vehicle", "signal", "unit", "t", "v", "frame")}
    f_vehicle, f_seq, f_sent, f_recv, f_n = [], [], [], [], []
    for i, fr in enumerate(frames):
        veh = vins.setdefault(fr["vin"], len(vins))
        n = 0
        for name, sample in fr["samples"].items():
            t, v = list(sample[0]), list(sample[1])
            unit = sample[2] if len(sample) > 2 else ""
            sid = signals.setdefault(name, len(signals))
            uid = units.setdefault(unit, len(units))
            cols["vehicle"] += [veh] * len(t)
            cols["signal"] += [sid] * len(t)
            cols["unit"] += [uid] * len(t)
            cols["t"] += [int(x) for x in t]
            cols["v"] += [float(x) for x in v]
            cols["frame"] += [i] * len(t)
            n += len(t)
        f_vehicle.append(veh)
        f_seq.append(fr["seq"])
        f_sent.append(fr["sent_at"])
        f_recv.append(fr["received_at"])
        f_n.append(n)
    fr_cols = Frames(
        record=np.arange(len(frames), dtype=np.int64),
        vehicle=np.asarray(f_vehicle, dtype=np.int32),
        seq=np.asarray(f_seq, dtype=np.int64),
        sent_at=np.asarray(f_sent, dtype=np.int64),
        received_at=np.asarray(f_recv, dtype=np.int64),
        n_readings=np.asarray(f_n, dtype=np.int64),
    )
    return Readings(
        vehicle=np.asarray(cols["vehicle"], dtype=np.int32),
        signal=np.asarray(cols["signal"], dtype=np.int32),
        unit=np.asarray(cols["unit"], dtype=np.int16),
        t=np.asarray(cols["t"], dtype=np.int64),
        value=np.asarray(cols["v"], dtype=np.float64),
        frame=np.asarray(cols["frame"], dtype=np.int32),
        vins=list(vins),
        signal_names=list(signals),
        unit_names=list(units),
        frames=fr_cols,
    )


def seconds(start_s: float, n: int, step_s: float = 1.0) -> list[int]:
    """Epoch-ms times T0 + start, every `step_s` seconds."""
    return [T0 + int(round((start_s + k * step_s) * 1000)) for k in range(n)]


def random_batches(seed: int, *, vehicles: int = 6, batches: int = 3, seconds_per_batch: int = 30,
                   fault_rate: float = 0.03) -> list[list[dict[str, Any]]]:
    """Frames of a few vehicles with every kind of fault sprinkled in, split into batches."""
    rng = np.random.default_rng(seed)
    out: list[list[dict[str, Any]]] = []
    lat0 = rng.uniform(33.9, 34.1, vehicles)
    lon0 = rng.uniform(-6.9, -6.7, vehicles)
    speed = rng.uniform(0, 80, vehicles)
    soc = rng.uniform(20, 90, vehicles)
    seq = np.zeros(vehicles, dtype=np.int64)
    previous: list[dict[str, Any]] = []
    for b in range(batches):
        batch: list[dict[str, Any]] = []
        for v in range(vehicles):
            vin = f"VIN{v:014d}"
            start = b * seconds_per_batch
            for f0 in range(start, start + seconds_per_batch, 10):
                t = np.asarray(seconds(f0, 10))
                sp = np.clip(speed[v] + np.cumsum(rng.normal(0, 1.5, 10)), 0, 200)
                speed[v] = sp[-1]
                so = soc[v] - np.arange(1, 11) * 0.01
                soc[v] = so[-1]
                hold = rng.random() < 0.5  # real receivers hold positions between fixes
                steps = rng.normal(0, 8e-5, (10, 2)).cumsum(axis=0)
                if hold:
                    steps[1:5] = steps[0]
                lat = lat0[v] + steps[:, 0]
                lon = lon0[v] + steps[:, 1]
                lat0[v], lon0[v] = lat[-1], lon[-1]
                acc = rng.uniform(3, 20, 10)
                tyre = np.full(10, 235.0) + rng.normal(0, 0.1, 10)
                hum = 60 + rng.normal(0, 0.5, 10)
                heading = (355 + np.cumsum(rng.normal(0, 3, 10))) % 360  # wobbles across north
                sp, so, lat, lon, acc = sp.copy(), so.copy(), lat.copy(), lon.copy(), acc.copy()
                units = {"speed": ""}
                for k in range(10):
                    if rng.random() < fault_rate:
                        kind = rng.integers(0, 12)
                        if kind == 0:
                            sp[k] = np.nan
                        elif kind == 1:
                            sp[k] += rng.choice([-1, 1]) * 90
                        elif kind == 2:
                            lat[k], lon[k] = 0.0, 0.0
                        elif kind == 3:
                            lat[k] += 0.05
                        elif kind == 4:
                            acc[k] = 500.0
                        elif kind == 5:
                            so[k] = 130.0
                        elif kind == 6:
                            units["speed"] = "mph"
                        elif kind == 7:
                            so[k] -= 30
                        elif kind == 9:
                            hum[k] += 40
                            heading[k] = (heading[k] + 150) % 360
                        elif kind == 10:
                            so[k:] = so[k]  # stuck
                        elif kind == 11:
                            lat0[v] += 0.1  # moved with GPS off: the rest of the frame is far
                            lat[k:] += 0.1
                        else:
                            lat[k:k + 3] += 0.02
                            lon[k:k + 3] += 0.02
                seq[v] += 1
                sent = int(t[-1]) + 200
                speed_sample: tuple[Any, ...] = (t, sp)
                if units["speed"]:
                    speed_sample = (t, sp / 1.609344, "mph")
                samples: dict[str, Any] = {SPEED: speed_sample, SOC: (t, so),
                                           LAT: (t, lat), LON: (t, lon), ACC: (t, acc),
                                           TYRE: (t[:1], tyre[:1]), HUMIDITY: (t, hum),
                                           HEADING: (t, heading)}
                if rng.random() < 0.05:
                    samples["Vehicle.Bogus.Signal"] = (t[:2], [1, 2])
                if rng.random() < 0.05:
                    samples[TYRE] = (t[:1], tyre[:1], "furlong")
                if rng.random() < 0.05:
                    samples[SOC] = (np.append(t[:-1], t[-1] + 3_600_000), so)
                if rng.random() < 0.05:  # the vehicle clock is 20 s behind for this frame
                    sent -= 20_000
                    samples = {k: (np.asarray(v[0]) - 20_000, *v[1:]) for k, v in samples.items()}
                fr = frame(vin, int(seq[v]), sent, samples)
                batch.append(fr)
                if rng.random() < 0.08:
                    batch.append(dict(fr))  # resend within the batch
        if previous and rng.random() < 0.9:
            batch.append(dict(previous[int(rng.integers(0, len(previous)))]))  # resend across
        order = rng.permutation(len(batch)) if rng.random() < 0.5 else np.arange(len(batch))
        out.append([batch[i] for i in order])
        previous = batch
    return out
