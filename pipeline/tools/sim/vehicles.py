"""The fleet model's data: what each vehicle is and the state the model advances.

State codes (modes, trip purposes, charger kinds), VINs (`make_vins`), each vehicle's
fixed attributes (`Vehicles`), the per-second state of all vehicles (`_State`, advanced
by `FleetModel` in `pipeline.tools.sim.fleet`) and a window of it as traced for the signal
layer (`Trace`, whose fields are `TRACE_FIELDS`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]

PARKED, DRIVING, CHARGING = 0, 1, 2
HOME, WORK, ERRAND, CHARGE = 0, 1, 2, 3
CHARGER_NONE, CHARGER_HOME, CHARGER_WORK, CHARGER_PUBLIC = 0, 1, 2, 3
DAY_MS = 86_400_000

_VIN_CHARS = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"
_VIN_VALUES = {**{str(d): d for d in range(10)},
               **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
               **dict(zip("JKLMN", range(1, 6), strict=True)), "P": 7, "R": 9,
               **dict(zip("STUVWXYZ", range(2, 10), strict=True))}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
_EV_WMI = ("VF1", "UU1", "WVW", "LRW", "VF3", "KNA", "WBY", "YV1")
_ICE_WMI = ("VF1", "UU1", "VF3", "VF7", "ZFA", "WVW", "KMH", "MA3", "JTD", "VSS")
# the same choices as arrays, converted once: `Generator.choice` draws the same from either
_VIN_CHAR_ARRAY, _EV_WMI_ARRAY, _ICE_WMI_ARRAY = (np.array(list(x)) for x in (_VIN_CHARS, _EV_WMI, _ICE_WMI))

# Traced per-second fields (vehicle x second); see `Trace`.
TRACE_FIELDS = (
    "speed", "accel", "x", "y", "heading", "yaw", "soc", "fuel", "odo", "coolant", "oil",
    "batt_temp", "cabin_temp", "tyre_temp", "tp0", "tp1", "tp2", "tp3", "dtc", "p_batt",
    "p_trac", "charge_kw", "ign_age", "charge_target",
)


def vin_check_digit(vin: str) -> str:
    """The ISO 3779 / North-American check digit (position 9) of a 17-character VIN."""
    total = sum(_VIN_VALUES[c] * w for c, w in zip(vin, _VIN_WEIGHTS, strict=True))
    r = total % 11
    return "X" if r == 10 else str(r)


def make_vins(rng: np.random.Generator, is_ev: npt.NDArray[np.bool_]) -> list[str]:
    """Distinct, plausible VINs (manufacturer prefix, check digit, model year 2020-2024)."""
    vins: list[str] = []
    seen: set[str] = set()
    for ev in is_ev.tolist():
        while True:
            wmi = str(rng.choice(_EV_WMI_ARRAY if ev else _ICE_WMI_ARRAY))
            vds = "".join(rng.choice(_VIN_CHAR_ARRAY, 5))
            year = "LMNPR"[int(rng.integers(0, 5))]
            plant = _VIN_CHARS[int(rng.integers(10, len(_VIN_CHARS)))]
            serial = f"{int(rng.integers(0, 1_000_000)):06d}"
            draft = wmi + vds + "0" + year + plant + serial
            vin = draft[:8] + vin_check_digit(draft) + draft[9:]
            if vin not in seen:
                seen.add(vin)
                vins.append(vin)
                break
    return vins


@dataclass(slots=True)
class Vehicles:
    """Fixed attributes of each vehicle (one array element per vehicle)."""

    vins: list[str]
    is_ev: npt.NDArray[np.bool_]
    battery_kwh: F64
    pack_v: F64
    ac_kw: F64
    dc_kw: F64
    soh: F64
    tank_l: F64
    automatic: npt.NDArray[np.bool_]
    mass: F64
    cda: F64
    crr: F64
    aggr: F64
    speed_factor: F64
    a_max: F64
    b_comf: F64
    a_turn: F64
    harsh_p: F64
    home: I32
    work: I32
    commuter: npt.NDArray[np.bool_]
    night: npt.NDArray[np.bool_]
    home_charger: npt.NDArray[np.bool_]
    home_kw: F64
    work_charger: npt.NDArray[np.bool_]
    plug_below: F64
    tyre_cold: F64  # (n, 4) kPa
    tyre_leak: F64  # (n, 4) kPa per second
    weak_12v: npt.NDArray[np.bool_]
    temp_bias: F64
    lights_always: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.vins)


@dataclass(slots=True)
class Trace:
    """Per-second state of every vehicle over one window: arrays (seconds + 1, vehicles).

    Row 0 is the state at the window start (the last row of the previous window), row j
    the state j seconds later. `accel[j]` is the acceleration applied in the second ending
    at row j. Scalars per second (ambient, humidity, hour) are (seconds + 1,).
    """

    start_ms: int
    seconds: int
    mode: npt.NDArray[np.int8]
    charger_dc: npt.NDArray[np.bool_]
    fields: dict[str, F64]
    ambient: F64
    humidity: F64
    hour: F64


@dataclass(slots=True)
class _State:
    traced: F64  # (len(TRACE_FIELDS), n): the per-second fields below are views of its rows
    mode: npt.NDArray[np.int8]
    node: I32
    dest: I32
    purpose: I32
    route: I32
    rlen: I32
    ri: I32
    se: F64
    v: F64
    a: F64
    hold: F64
    stop_end: npt.NDArray[np.bool_]
    harsh_t: F64
    harsh_a: F64
    x: F64
    y: F64
    heading: F64
    yaw: F64
    soc: F64
    fuel: F64
    odo: F64
    coolant: F64
    oil: F64
    batt_temp: F64
    cabin_temp: F64
    tyre_temp: F64
    tyre_cold: F64  # (4, n)
    dtc: F64
    p_batt: F64
    p_trac: F64
    charge_kw: F64
    charger_max: F64
    charger_dc: npt.NDArray[np.bool_]
    charge_target: F64
    ign_age: F64
    next_dep: npt.NDArray[np.int64]
    plans: list[deque[tuple[int, int, int]]] = field(default_factory=list)
    plan_day: list[int] = field(default_factory=list)
