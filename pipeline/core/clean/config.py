"""The cleaning configuration (`rules/cleaning.yaml`): typed, validated, with line numbers.

Every field has a default, so a missing file section means the documented behaviour; an
unknown key, a wrong type or a contradictory value is rejected at load with the file,
line and dotted key (`ConfigError(rule="key spikes.Vehicle.Speed.window")`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.core.errors import ConfigError
from pipeline.core.paths import REPO_ROOT
from pipeline.core.yamlfile import Loc, YamlDoc, line_in, load_yaml, parse_yaml

DEFAULT_PATH = REPO_ROOT / "rules" / "cleaning.yaml"
SUPPORTED_VERSIONS = (1,)

LATITUDE = "Vehicle.CurrentLocation.Latitude"
LONGITUDE = "Vehicle.CurrentLocation.Longitude"
ACCURACY = "Vehicle.CurrentLocation.HorizontalAccuracy"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeRules(_Section):
    """Timestamp plausibility against the frame's send time and the ingest time."""

    max_future_vs_sent_ms: int = Field(default=2_000, ge=0)
    max_future_vs_ingest_ms: int = Field(default=60_000, ge=0)
    max_age_ms: int = Field(default=7 * 86_400_000, gt=0, le=2**40)
    max_clock_step_back_ms: int | None = Field(default=2_000, ge=0)
    # Vehicle clock offset (send time minus record time) beyond which a frame's times are
    # repaired by the vehicle's estimated offset, or dropped when no estimate is stable.
    max_clock_skew_s: float | None = Field(default=5.0, gt=0)
    # Offsets of two frames this close are one clock error (network delay jitter below it).
    clock_agree_ms: int = Field(default=1_000, gt=0)

    @model_validator(mode="after")
    def _agree_below_skew(self) -> TimeRules:
        if self.max_clock_skew_s is not None and self.clock_agree_ms >= self.max_clock_skew_s * 1000:
            raise ValueError(f"clock_agree_ms ({self.clock_agree_ms}) must be below max_clock_skew_s "
                             f"({self.max_clock_skew_s} s)")
        return self


class DuplicateRules(_Section):
    """Resend detection: frames remembered per vehicle across batches."""

    frame_memory: int = Field(default=64, ge=0, le=4096)


class RangeRules(_Section):
    """Catalog min/max check; `exempt` signals are checked elsewhere (or not at all).

    `allowed_values` narrows enumerated signals (gears) to the values they can take.
    """

    exempt: tuple[str, ...] = (LATITUDE, LONGITUDE)
    allowed_values: dict[str, tuple[float, ...]] = Field(default_factory=dict)

    @field_validator("allowed_values")
    @classmethod
    def _not_empty(cls, value: dict[str, tuple[float, ...]]) -> dict[str, tuple[float, ...]]:
        for name, allowed in value.items():
            if not allowed:
                raise ValueError(f"{name}: the list of allowed values is empty")
        return value


class RateRules(_Section):
    """Maximum rate of change (catalog `max_rate` times `tolerance`), isolated excursions."""

    enabled: bool = True
    tolerance: float = Field(default=1.0, ge=1.0)
    edge_factor: float = Field(default=1.5, ge=1.0)  # stricter for the last of a series
    exempt: tuple[str, ...] = (LATITUDE, LONGITUDE)


class SpikeRule(_Section):
    """Hampel filter of one signal."""

    window: int = Field(default=7, ge=3, le=63)
    n_sigmas: float = Field(default=5.0, ge=0)  # 0: min_deviation alone
    min_deviation: float = Field(default=0.0, ge=0)
    action: Literal["drop", "repair"] = "drop"
    edge_factor: float = Field(default=1.5, ge=1.0)  # stricter where the window is one-sided
    circular: float | None = Field(default=None, gt=0)  # period of an angle (360 for heading)

    @field_validator("window")
    @classmethod
    def _odd_window(cls, window: int) -> int:
        if window % 2 == 0:
            raise ValueError(f"must be odd (a centred window), got {window}")
        return window

    @model_validator(mode="after")
    def _some_threshold(self) -> SpikeRule:
        if self.n_sigmas == 0 and self.min_deviation == 0:
            raise ValueError("n_sigmas and min_deviation cannot both be 0 (every change would be a spike)")
        return self


class StuckRule(_Section):
    """Stuck-at detection of one signal, optionally cross-checked against another signal.

    With `against`, a held run counts as stuck only once the reference signal (same
    vehicle) shows activity of at least `min_reference` since the run began: `change`
    |ref(t) - ref(start)|, `integral` |integral of ref dt| (seconds), `integral_abs` the
    integral of |ref| dt. Gaps in the reference longer than `max_gap_ms` add nothing.
    Held values in `ignore_values` or at or above `rest_above` are resting values, never
    stuck (a regulated temperature). `also`: more checks of the same signal (each a rule of
    its own, without `also`), judged on the same readings as this one: a run is stuck when
    any check finds it so.
    """

    min_duration_ms: int = Field(default=60_000, gt=0)
    min_count: int = Field(default=10, ge=2)
    ignore_values: tuple[float, ...] = ()
    rest_above: float | None = None
    against: str | None = None
    measure: Literal["change", "integral", "integral_abs"] = "change"
    min_reference: float = Field(default=0.0, ge=0)
    max_gap_ms: int = Field(default=5_000, gt=0)
    also: tuple[StuckRule, ...] = ()

    @model_validator(mode="after")
    def _reference_threshold(self) -> StuckRule:
        if self.against is not None and self.min_reference <= 0:
            raise ValueError("min_reference must be above 0 when the rule is checked against a signal")
        if any(rule.also for rule in self.also):
            raise ValueError("a check listed under also cannot have checks of its own")
        return self


class Bounds(_Section):
    """Operating area of the fleet, degrees."""

    lat_min: float = Field(default=-90.0, ge=-90, le=90)
    lat_max: float = Field(default=90.0, ge=-90, le=90)
    lon_min: float = Field(default=-180.0, ge=-180, le=180)
    lon_max: float = Field(default=180.0, ge=-180, le=180)

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if self.lat_min >= self.lat_max:
            raise ValueError(f"lat_min ({self.lat_min}) must be below lat_max ({self.lat_max})")
        if self.lon_min >= self.lon_max:
            raise ValueError(f"lon_min ({self.lon_min}) must be below lon_max ({self.lon_max})")
        return self


class GpsRules(_Section):
    """Checks of a fix (latitude and longitude joined by vehicle and time)."""

    latitude: str = LATITUDE
    longitude: str = LONGITUDE
    accuracy: str | None = ACCURACY
    null_island_deg: float = Field(default=1e-4, ge=0, le=1)
    bounds: Bounds = Bounds()
    max_horizontal_accuracy_m: float | None = Field(default=100.0, gt=0)
    track: bool = True
    max_speed_kmh: float | None = Field(default=250.0, gt=0)
    jump_m: float = Field(default=30.0, gt=0)
    max_accel_ms2: float = Field(default=1.5, ge=0)
    velocity_window: int = Field(default=5, ge=3, le=15)
    relocate_after_ms: int = Field(default=120_000, gt=0)

    @field_validator("velocity_window")
    @classmethod
    def _odd_velocity_window(cls, window: int) -> int:
        if window % 2 == 0:
            raise ValueError(f"must be odd (a centred window), got {window}")
        return window

    @model_validator(mode="after")
    def _distinct(self) -> GpsRules:
        if self.latitude == self.longitude:
            raise ValueError("latitude and longitude must be different signals")
        return self


class StateRules(_Section):
    """Bounds on the per-vehicle history."""

    max_vehicles: int = Field(default=50_000, ge=1)


@dataclass(frozen=True, slots=True)
class StuckCheckSpec:
    """One stuck check: `key` names its history (the signal, or `signal#n` for its n-th
    `also` check), `path` its place in the file."""

    key: str
    signal: str
    rule: StuckRule
    layer: int
    path: tuple[str, ...]


# The checks, in the order they run. Those on each reading in input order come first, in
# this order (each needs the one before: times are repaired before they are judged, resends
# found before clocks are compared); those on the rows sorted by (vehicle, signal, t)
# follow, in any order the config gives.
ROW_CHECKS = ("signals", "clock_skew", "timestamps", "resends", "clock_back")
GROUP_CHECKS = ("duplicates", "range", "spikes", "gps", "rate_of_change", "stuck")


class CleaningConfig(_Section):
    """All cleaning rules. `source` and `lines` locate keys for later (catalog) checks."""

    version: int = 1
    checks: tuple[str, ...] = ROW_CHECKS + GROUP_CHECKS
    time: TimeRules = TimeRules()
    duplicates: DuplicateRules = DuplicateRules()
    range: RangeRules = RangeRules()
    rate_of_change: RateRules = RateRules()
    spikes: dict[str, SpikeRule] = Field(default_factory=dict)
    stuck: dict[str, StuckRule] = Field(default_factory=dict)
    gps: GpsRules = GpsRules()
    state: StateRules = StateRules()
    source: str | None = Field(default=None, exclude=True)
    lines: dict[Loc, int] = Field(default_factory=dict, exclude=True, repr=False)

    def stuck_checks(self) -> list[StuckCheckSpec]:
        """Every stuck check: each signal's rule, then the first of the checks their `also`
        lists, and so on (`layer` 0, 1, ...)."""
        out = []
        for layer in range(1 + max((len(r.also) for r in self.stuck.values()), default=0)):
            for name, rule in self.stuck.items():
                if layer == 0:
                    out.append(StuckCheckSpec(name, name, rule, 0, ("stuck", name)))
                elif layer <= len(rule.also):
                    out.append(StuckCheckSpec(f"{name}#{layer}", name, rule.also[layer - 1], layer,
                                              ("stuck", name, "also", str(layer - 1))))
        return out

    @model_validator(mode="after")
    def _supported(self) -> CleaningConfig:
        if self.version not in SUPPORTED_VERSIONS:
            raise ValueError(f"unsupported version {self.version}; supported: {SUPPORTED_VERSIONS}")
        return self

    @field_validator("checks")
    @classmethod
    def _known_checks(cls, checks: tuple[str, ...]) -> tuple[str, ...]:
        known = ROW_CHECKS + GROUP_CHECKS
        for name in checks:
            if name not in known:
                raise ValueError(f"unknown check {name!r}; known: {', '.join(known)}")
        if len(set(checks)) != len(checks):
            raise ValueError("a check is listed twice")
        if "signals" not in checks:
            raise ValueError("the signals check cannot be left out (every other check needs its catalog index)")
        rows = [c for c in checks if c in ROW_CHECKS]
        if list(checks[:len(rows)]) != rows or rows != [c for c in ROW_CHECKS if c in rows]:
            raise ValueError(f"the checks on each reading come first and in this order: {', '.join(ROW_CHECKS)}")
        return checks

    def line_of(self, *path: str) -> int | None:
        """Line of the deepest key of `path` that the file wrote (None if none)."""
        return line_in(self.lines, path)

    def error(self, message: str, *path: str) -> ConfigError:
        """A ConfigError pointing at `path` in this config's file."""
        return ConfigError(message, file=self.source, line=self.line_of(*path),
                           rule="key " + ".".join(path) if path else None,
                           field=path[-1] if path else None)


def parse_cleaning_config(text: str, *, file: str = "<cleaning>") -> CleaningConfig:
    """Parse and validate cleaning YAML text (ConfigError naming file, line and key)."""
    return _cleaning_config(parse_yaml(text, file))


def _cleaning_config(parsed: YamlDoc) -> CleaningConfig:
    file, doc = parsed.file, parsed.data
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError("the cleaning config must be a mapping of sections", file=file, line=1)
    for key in ("source", "lines"):
        if key in doc:
            raise ConfigError("unknown key", file=file, line=parsed.line(key), rule=f"key {key}",
                              field=key)
    try:
        config = CleaningConfig.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = tuple(str(p) for p in first["loc"])
        # Model-level checks report their section; Literal/union errors add a type tag.
        path = tuple(p for p in path if not p.startswith(("function-", "literal[")))
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        elif first["type"] == "missing":
            message = "missing required key"
        raise ConfigError(message, file=file, line=line_in(parsed.lines, path),
                          rule="key " + ".".join(path) if path else None,
                          field=path[-1] if path else None) from exc
    return config.model_copy(update={"source": file, "lines": dict(parsed.lines)})


def load_cleaning_config(path: Path | str | None = None) -> CleaningConfig:
    """Load and validate `rules/cleaning.yaml` (or `path`); defaults if the default file is absent."""
    resolved = Path(path if path is not None else DEFAULT_PATH)
    if not resolved.exists():
        if path is None:
            return CleaningConfig()
        raise ConfigError("cleaning config file not found", file=str(resolved))
    return _cleaning_config(load_yaml(resolved))
