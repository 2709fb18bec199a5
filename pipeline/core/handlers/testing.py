"""In-memory helpers to test handlers without Kafka: build batches, run handlers, read events.

Handler authors import them from `pipeline.core.handlers` (the public API):
```python
from pipeline.core.handlers import HandlerHarness
h = HandlerHarness(my_handler, config={"my_handler": {"limit": 3}})
out = h.run({"VIN1": {"Vehicle.Speed": ([0, 1000, 2000], [10, 20, 30])}})
assert out.events_of("fleet.x.y")[0]["vin"] == "VIN1"
```
State carries from one `run` to the next, like consecutive batches of one worker.
`h.silence(["VIN1"])` tells the handlers a vehicle fell silent, as the worker's idle timer does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.core.batch import DeadLetter, EventBatch, Frames, RawRecord, Readings
from pipeline.core.handlers.config import HandlerConfig, Zone
from pipeline.core.handlers.registry import HandlerSpec, Registry, spec_of
from pipeline.core.handlers.runner import HandlerRunner, HandlerStats, silent_batch
from pipeline.core.handlers.state import StateStore

BatchData = Mapping[str, Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]]]


def catalog_signal_names() -> list[str] | None:
    """The catalog's signal names, when the catalog file is there."""
    try:
        from pipeline.core.catalog import DEFAULT_PATH, load_catalog
    except ImportError:
        return None
    from pathlib import Path

    return list(load_catalog(DEFAULT_PATH).names) if Path(DEFAULT_PATH).exists() else None


def make_readings(data: BatchData, *, signal_names: Sequence[str] | None = None,
                  topic: str = "vehicle.sensor.raw", partition: int = 0, offset: int = 0,
                  ) -> tuple[Readings, list[RawRecord]]:
    """Clean-style readings from `{vin: {signal: (t_ms, values)}}`, one record per vehicle.

    Rows are sorted by (vehicle, signal, t) like the cleaning stage's output; signal
    indexes follow `signal_names` (default: the catalog, else the names used here).
    """
    used = sorted({s for sigs in data.values() for s in sigs})
    names = list(signal_names) if signal_names is not None else (catalog_signal_names() or used)
    names += [s for s in used if s not in names]
    sid = {n: i for i, n in enumerate(names)}
    vins = list(data)
    veh, sig, t, v, frame = [], [], [], [], []
    for vi, vin in enumerate(vins):
        for name, (ts, vals) in data[vin].items():
            ta, va = np.asarray(ts, dtype=np.int64), np.asarray(vals, dtype=np.float64)
            if ta.shape != va.shape:
                raise ValueError(f"{vin} {name}: {ta.shape[0]} times but {va.shape[0]} values")
            veh.append(np.full(ta.shape[0], vi, np.int32))
            sig.append(np.full(ta.shape[0], sid[name], np.int32))
            t.append(ta)
            v.append(va)
            frame.append(np.full(ta.shape[0], vi, np.int32))
    if veh:
        cat = np.concatenate
        vehicle, signal, tt, value, fr = cat(veh), cat(sig), cat(t), cat(v), cat(frame)
        order = np.lexsort((tt, signal, vehicle))
        vehicle, signal, tt, value, fr = vehicle[order], signal[order], tt[order], value[order], fr[order]
    else:
        vehicle = signal = fr = np.empty(0, np.int32)
        tt, value = np.empty(0, np.int64), np.empty(0)
    records = [RawRecord(topic, partition, offset + i, vin.encode(), b"{}") for i, vin in enumerate(vins)]
    n_per = np.bincount(vehicle, minlength=len(vins)).astype(np.int64) if len(vins) else np.empty(0, np.int64)
    sent = np.array([int(np.max(np.concatenate([np.asarray(x[0], np.int64) for x in data[vin].values()] or
                                               [np.zeros(1, np.int64)]), initial=0)) for vin in vins],
                    dtype=np.int64)
    frames = Frames(record=np.arange(len(vins), dtype=np.int64), vehicle=np.arange(len(vins), dtype=np.int32),
                    seq=np.zeros(len(vins), np.int64), sent_at=sent, received_at=sent, n_readings=n_per)
    readings = Readings(vehicle, signal, np.zeros(vehicle.shape[0], np.int16), tt, value, fr, vins, names,
                        [""], frames)
    return readings, records


def make_events(rows: Sequence[Mapping[str, Any]], *, n_records: int = 1) -> EventBatch:
    """Events for handlers that consume event types: rows of `type`, `vin`, `time` and data."""
    if not rows:
        return EventBatch.empty()
    keys = sorted({k for r in rows for k in r} - {"type", "vin", "time", "origin"})
    data: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for k in keys:
        vals = [r.get(k) for r in rows]
        mask = np.array([x is not None for x in vals])
        if all(isinstance(x, int | float) or x is None for x in vals):
            data[k] = np.array([np.nan if x is None else x for x in vals], dtype=np.float64)
        else:
            data[k] = np.array(vals, dtype=object)
        if not mask.all():
            present[k] = mask
    vins = [r["vin"] for r in rows]
    data["vin"] = np.array(vins, dtype=object)
    return EventBatch.build(type=np.array([r["type"] for r in rows], dtype=object), source="/test",
                            vin=vins, time=[int(r["time"]) for r in rows],
                            origin=[int(r.get("origin", 0)) % max(n_records, 1) for r in rows],
                            ids=[f"test-{i}" for i in range(len(rows))], data=data, present=present)


def event_dicts(events: EventBatch, type: str | None = None) -> list[dict[str, Any]]:
    """Events as flat dicts: `type`, `time`, `subject`, `id`, `source`, `origin` and dotted data fields."""
    out: list[dict[str, Any]] = []
    attrs = {k: v.tolist() for k, v in events.attrs.items()}
    data = {k: v.tolist() for k, v in events.data.items()}
    masks = {k: events.is_present(k).tolist() for k in events.data}
    origin = events.origin.tolist()
    for i in range(len(events)):
        if type is not None and attrs["type"][i] != type:
            continue
        row: dict[str, Any] = {k: v[i] for k, v in attrs.items()}
        row["origin"] = origin[i]
        row.update({k: v[i] for k, v in data.items() if masks[k][i]})
        out.append(row)
    return out


@dataclass
class HarnessResult:
    """What one run produced."""

    events: EventBatch
    dead_letters: list[DeadLetter]
    stats: dict[str, HandlerStats]
    records: list[RawRecord]

    def events_of(self, type: str | None = None) -> list[dict[str, Any]]:
        return event_dicts(self.events, type)

    def types(self) -> list[str]:
        return [str(t) for t in self.events.attrs["type"].tolist()]


class HandlerHarness:
    """Runs one or more handlers over consecutive in-memory batches, keeping their state."""

    def __init__(self, *handlers: Callable[..., Any] | HandlerSpec,
                 config: Mapping[str, Mapping[str, Any]] | None = None, zones: Sequence[Zone] = (),
                 state: StateStore | None = None, signal_names: Sequence[str] | None = None) -> None:
        specs = [h if isinstance(h, HandlerSpec) else spec_of(h) for h in handlers]
        if any(s is None for s in specs):
            raise TypeError("every argument must be a @handler-decorated function")
        self.registry = Registry([s for s in specs if s is not None])
        self.config = HandlerConfig(handlers={k: dict(v) for k, v in (config or {}).items()},
                                    zones=tuple(zones))
        for spec in self.registry.ordered():
            self.config.check_keys(spec.name, spec.defaults)
        self.state = state if state is not None else StateStore()
        self.runner = HandlerRunner(self.registry, self.config, self.state)
        self.signal_names = list(signal_names) if signal_names is not None else catalog_signal_names()
        self._offset = 0
        self.last_record: dict[str, RawRecord] = {}  # each vehicle's latest frame so far

    def run(self, data: BatchData | tuple[Readings, list[RawRecord]],
            events: Sequence[Mapping[str, Any]] | EventBatch | None = None, *,
            watermark: npt.ArrayLike | Mapping[str, int] | None = None) -> HarnessResult:
        """One batch through the handlers; `events` are extra input events (rows or a batch).

        `watermark`: per vehicle of the batch (an array in `vins` order, or `{vin: t_ms}`)."""
        if isinstance(data, tuple):
            readings, records = data
        else:
            readings, records = make_readings(data, signal_names=self.signal_names, offset=self._offset)
        self._offset += max(len(records), 1)
        extra = events if isinstance(events, EventBatch) else make_events(list(events or ()),
                                                                            n_records=len(records))
        if isinstance(watermark, Mapping):
            watermark = np.array([watermark[v] for v in readings.vins], dtype=np.int64)
        res = self.runner.run(readings, records, events_in=extra, watermark=watermark)
        f = readings.frames
        for r, v in zip(f.record.tolist(), f.vehicle.tolist(), strict=True):
            rec = records[r]
            known = self.last_record.get(readings.vins[v])
            if known is None or (rec.topic, rec.partition, rec.offset) >= (known.topic, known.partition, known.offset):
                self.last_record[readings.vins[v]] = rec
        return HarnessResult(res.events, res.dead_letters, res.stats, records)

    def silence(self, vins: Sequence[str]) -> HarnessResult:
        """Tell the handlers these vehicles fell silent (each must have been in an earlier run):
        a `silent_batch` over their latest frames, as the worker's idle timer sends it."""
        records = [self.last_record[v] for v in vins]
        res = self.runner.run(silent_batch(list(vins), records, signal_names=self.signal_names or ()),
                              records, silent=np.arange(len(vins), dtype=np.int64))
        return HarnessResult(res.events, res.dead_letters, res.stats, records)

    def close(self) -> None:
        self.runner.close()


def run_handler(handler: Callable[..., Any], data: BatchData, *,
                config: Mapping[str, Any] | None = None, zones: Sequence[Zone] = (),
                events: Sequence[Mapping[str, Any]] | None = None) -> HarnessResult:
    """One handler on one batch: the shortest way to try a handler."""
    spec = spec_of(handler)
    if spec is None:
        raise TypeError("not a @handler-decorated function")
    h = HandlerHarness(handler, config={spec.name: dict(config or {})}, zones=zones)
    try:
        return h.run(data, events)
    finally:
        h.close()


def synthetic_fleet(n_vehicles: int = 200, seconds: int = 50, *, start_ms: int = 1_700_000_000_000,
                    seed: int = 7, signal_names: Sequence[str] | None = None,
                    records_per_vehicle: int = 2, epoch_ms: int = 1_700_000_000_000,
                    ) -> tuple[Readings, list[RawRecord]]:
    """A realistic clean batch: EVs driving, stopping and charging around Rabat.

    Per vehicle: speed 2 Hz, acceleration 10 Hz (longitudinal and lateral), GPS 1 Hz,
    SoC, battery power, 12 V voltage 1 Hz, charging flag and odometer 0.2 Hz, DTC count
    0.1 Hz. About 2 % of vehicles brake hard once, 10 % are charging, 20 % are parked.
    """
    rng = np.random.default_rng(seed)
    signals: dict[str, int] = {
        "Vehicle.Speed": 500, "Vehicle.Acceleration.Longitudinal": 100,
        "Vehicle.Acceleration.Lateral": 100, "Vehicle.CurrentLocation.Latitude": 1000,
        "Vehicle.CurrentLocation.Longitude": 1000,
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": 1000,
        "Vehicle.Powertrain.TractionBattery.CurrentPower": 1000,
        "Vehicle.LowVoltageBattery.CurrentVoltage": 1000,
        "Vehicle.Powertrain.TractionBattery.Charging.IsCharging": 5000,
        "Vehicle.TraveledDistance": 5000, "Vehicle.OBD.Status.DTCCount": 10000,
    }
    names = list(signal_names) if signal_names is not None else (catalog_signal_names() or sorted(signals))
    names += [s for s in signals if s not in names]
    sid = {n: i for i, n in enumerate(names)}
    mode = rng.choice(3, size=n_vehicles, p=[0.7, 0.2, 0.1])  # 0 driving, 1 parked, 2 charging
    base_speed = np.where(mode == 0, rng.uniform(20, 90, n_vehicles), 0.0)
    lat0 = 34.02 + rng.uniform(-0.05, 0.05, n_vehicles)
    lon0 = -6.83 + rng.uniform(-0.05, 0.05, n_vehicles)
    soc0 = rng.uniform(15, 95, n_vehicles)
    odo0 = rng.uniform(1e6, 5e7, n_vehicles)
    harsh = rng.random(n_vehicles) < 0.02
    parts: list[tuple[np.ndarray, ...]] = []
    for name, interval in signals.items():
        n_t = seconds * 1000 // interval
        tt = start_ms + np.arange(n_t, dtype=np.int64) * interval
        T = np.broadcast_to(tt, (n_vehicles, n_t))
        secs = (T - epoch_ms) / 1000.0
        noise = rng.normal(0, 1, (n_vehicles, n_t))
        b = base_speed[:, None]
        if name == "Vehicle.Speed":
            val = np.clip(b + 3 * np.sin(secs / 7) + noise, 0, None) * (b > 0)
        elif name == "Vehicle.Acceleration.Longitudinal":
            val = 0.3 * noise * (b > 0)
            val[harsh, n_t // 2:n_t // 2 + 8] = -6.0
        elif name == "Vehicle.Acceleration.Lateral":
            val = 0.5 * noise * (b > 0)
        elif name == "Vehicle.CurrentLocation.Latitude":
            val = lat0[:, None] + b / 3.6 * secs / 111_000.0
        elif name == "Vehicle.CurrentLocation.Longitude":
            val = np.broadcast_to(lon0[:, None], (n_vehicles, n_t)).astype(np.float64)
        elif name == "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current":
            val = soc0[:, None] + np.where(mode[:, None] == 2, 0.01, -0.002 * (b > 0)) * secs
        elif name == "Vehicle.Powertrain.TractionBattery.CurrentPower":
            val = np.where(mode[:, None] == 2, 7000.0, -b * 150.0) + 50 * noise
        elif name == "Vehicle.LowVoltageBattery.CurrentVoltage":
            val = 12.6 + 0.05 * noise
        elif name == "Vehicle.Powertrain.TractionBattery.Charging.IsCharging":
            val = np.broadcast_to((mode == 2).astype(np.float64)[:, None], (n_vehicles, n_t)).astype(np.float64)
        elif name == "Vehicle.TraveledDistance":
            val = np.round(odo0[:, None] + b / 3.6 * secs)
        else:
            val = np.zeros((n_vehicles, n_t))
        veh = np.broadcast_to(np.arange(n_vehicles, dtype=np.int32)[:, None], (n_vehicles, n_t))
        half = np.minimum(((T - start_ms) / 1000.0 * records_per_vehicle // max(seconds, 1)).astype(np.int64),
                          records_per_vehicle - 1)
        frame = veh.astype(np.int64) * records_per_vehicle + half
        parts.append((veh.ravel(), np.full(veh.size, sid[name], np.int32), T.ravel(),
                      np.asarray(val, np.float64).ravel(), frame.ravel().astype(np.int32)))
    vehicle, signal, t, value, frame = (np.concatenate([p[k] for p in parts]) for k in range(5))
    order = np.lexsort((t, signal, vehicle))
    vehicle, signal, t, value, frame = vehicle[order], signal[order], t[order], value[order], frame[order]
    n_frames = n_vehicles * records_per_vehicle
    vins = [f"SIM{i:014d}" for i in range(n_vehicles)]
    records = [RawRecord("vehicle.sensor.raw", i % 6, i, vins[i // records_per_vehicle].encode(), b"{}")
               for i in range(n_frames)]
    sent_at = np.full(n_frames, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(sent_at, frame.astype(np.int64), t)
    sent_at = np.where(sent_at == np.iinfo(np.int64).min, start_ms, sent_at)
    frames = Frames(record=np.arange(n_frames, dtype=np.int64),
                    vehicle=(np.arange(n_frames) // records_per_vehicle).astype(np.int32),
                    seq=np.zeros(n_frames, np.int64), sent_at=sent_at, received_at=sent_at + 200,
                    n_readings=np.bincount(frame, minlength=n_frames).astype(np.int64))
    return Readings(vehicle, signal, np.zeros(vehicle.shape[0], np.int16), t, value, frame.astype(np.int32),
                    vins, names, [""], frames), records
