"""What to simulate: `SimConfig`, with the run's start time (`DEFAULT_START`, `parse_start`).

Every field has a default and is checked on construction; `FleetSimulator`
(`pipeline.tools.simulate`) runs one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.core.errors import InputError
from pipeline.tools.sim.city import CITIES
from pipeline.tools.sim.faults import parse_fault_rates

DEFAULT_START = "2024-05-14T07:30:00+01:00"  # a Tuesday, morning rush in Rabat


def parse_start(text: str) -> int:
    """An ISO 8601 time (UTC if no offset) as epoch milliseconds."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"start must be an ISO 8601 time like 2024-05-01T08:00:00, got {text!r}") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What to simulate; every field has a default, so `SimConfig()` is a small run."""

    vehicles: int = 1000
    duration_s: float = 600.0
    seed: int = 7
    start: str = DEFAULT_START
    ev_share: float = 0.6
    frame_seconds: float = 5.0
    fault_rates: dict[str, float] = field(default_factory=lambda: parse_fault_rates(None))
    city: str = "rabat"
    sensor_topic: str = "vehicle.sensor.raw"
    gps_topic: str = "vehicle.gps.raw"
    max_frame_bytes: int = 1_000_000
    window_s: float | None = None  # simulated seconds per generation window (default: by fleet size)

    def __post_init__(self) -> None:
        if self.vehicles < 1:
            raise InputError("vehicles must be at least 1")
        if not 0.0 <= self.ev_share <= 1.0:
            raise InputError("ev_share must be between 0 and 1")
        if self.duration_s <= 0:
            raise InputError("duration must be positive")
        if self.frame_seconds < 1 or (self.frame_seconds * 1000) % 1000:
            raise InputError("frame_seconds must be a whole number of seconds, at least 1")
        if self.city not in CITIES:
            raise InputError(f"unknown city {self.city!r}; known: {', '.join(CITIES)}")
        parse_start(self.start)

    @property
    def frame_ms(self) -> int:
        return int(self.frame_seconds * 1000)

    @property
    def start_ms(self) -> int:
        return parse_start(self.start)

    def as_dict(self) -> dict[str, Any]:
        return {"vehicles": self.vehicles, "duration_s": self.duration_s, "seed": self.seed,
                "start": self.start, "ev_share": self.ev_share, "frame_seconds": self.frame_seconds,
                "fault_rates": dict(self.fault_rates), "city": self.city,
                "topics": {"sensor": self.sensor_topic, "gps": self.gps_topic},
                "max_frame_bytes": self.max_frame_bytes}
