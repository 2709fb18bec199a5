"""`functions/handlers.yaml`: per-handler settings and the geofence zones they share.

```yaml
version: 1
handlers:
  harsh_driving: {longitudinal_ms2: 4.4}   # overrides the handler's own defaults
  idling: {enabled: false}                  # switch a handler off without deleting it
zones:
  - {name: depot, circle: {lat: 34.02, lon: -6.83, radius_m: 250}, speed_limit_kmh: 20}
  - {name: old-town, polygon: [[34.02, -6.84], [34.03, -6.84], [34.03, -6.83]]}
```
Errors name the file, the handler or zone, the field and the line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import ConfigError
from pipeline.core.handlers import ops
from pipeline.core.yamlfile import Loc, YamlDoc, line_in, load_yaml

TOP_LEVEL = ("version", "handlers", "zones")
ZONE_FIELDS = ("name", "circle", "polygon", "speed_limit_kmh", "description")


@dataclass(frozen=True, slots=True)
class Zone:
    """A named area: a circle (centre, radius) or a polygon of [lat, lon] vertices."""

    name: str
    lat: float = 0.0
    lon: float = 0.0
    radius_m: float = 0.0
    polygon: tuple[tuple[float, float], ...] = ()
    speed_limit_kmh: float | None = None

    def contains(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Bool per point: inside this zone."""
        if self.polygon:
            return ops.points_in_polygon(lat, lon, np.asarray(self.polygon))
        # cheap bounding box first, exact distance only for the points near the circle
        dlat = self.radius_m / 111_000.0
        dlon = dlat / max(np.cos(np.radians(self.lat)), 1e-6)
        near = (np.abs(lat - self.lat) <= dlat) & (np.abs(lon - self.lon) <= dlon)
        out = np.zeros(lat.shape[0], dtype=bool)
        if near.any():
            out[near] = ops.haversine_m(lat[near], lon[near], self.lat, self.lon) <= self.radius_m
        return out


@dataclass(slots=True)
class HandlerConfig:
    """Settings of every handler plus the shared zones, as loaded from YAML."""

    handlers: dict[str, dict[str, Any]] = field(default_factory=dict)
    zones: tuple[Zone, ...] = ()
    path: str | None = None
    lines: dict[Loc, int] = field(default_factory=dict)

    def for_handler(self, name: str, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overlaid with the YAML section of `name` (without `enabled`)."""
        merged = dict(defaults or {})
        merged.update({k: v for k, v in self.handlers.get(name, {}).items() if k != "enabled"})
        return merged

    def enabled(self, name: str) -> bool:
        return bool(self.handlers.get(name, {}).get("enabled", True))

    def line_of(self, *path: str | int) -> int | None:
        """Line of `path` in the file, or of the deepest enclosing key written (None if none)."""
        return line_in(self.lines, path)

    def check_keys(self, name: str, defaults: Mapping[str, Any]) -> None:
        """Reject keys a handler does not define (catches typos in thresholds)."""
        for key in self.handlers.get(name, {}):
            if key != "enabled" and key not in defaults:
                known = ", ".join(sorted(defaults)) or "none"
                raise ConfigError(f"unknown setting (known: {known})", file=self.path,
                                  line=self.line_of("handlers", name, key),
                                  rule=f"handler {name}", field=key)


def load_handler_config(path: Path | None) -> HandlerConfig:
    """Read and validate handlers.yaml; a missing file means all defaults and no zones."""
    if path is None or not Path(path).exists():
        return HandlerConfig(path=str(path) if path else None)
    doc = load_yaml(path)
    file, data = doc.file, doc.data
    lines = dict(doc.lines)
    if data is None:
        return HandlerConfig(path=file, lines=lines)
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping", file=file, line=1)
    for key in data:
        if key not in TOP_LEVEL:
            raise ConfigError(f"unknown top-level key (known: {', '.join(TOP_LEVEL)})", file=file,
                              line=doc.line(str(key)), field=str(key))
    handlers = data.get("handlers") or {}
    if not isinstance(handlers, dict):
        raise ConfigError("must map handler names to settings", file=file,
                          line=doc.line("handlers"), field="handlers")
    for name, section in handlers.items():
        if section is None:
            handlers[name] = {}
        elif not isinstance(section, dict):
            raise ConfigError("settings must be a mapping", file=file,
                              line=doc.line("handlers", str(name)), rule=f"handler {name}")
        elif "enabled" in section and not isinstance(section["enabled"], bool):
            raise ConfigError("must be true or false", file=file,
                              line=doc.line("handlers", str(name), "enabled"),
                              rule=f"handler {name}", field="enabled")
    zones = _zones(data.get("zones") or [], doc)
    return HandlerConfig(handlers={str(k): dict(v) for k, v in handlers.items()}, zones=zones,
                         path=file, lines=lines)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def _zones(items: Any, doc: YamlDoc) -> tuple[Zone, ...]:
    file = doc.file
    if not isinstance(items, list):
        raise ConfigError("must be a list of zones", file=file, line=doc.line("zones"), field="zones")
    zones: list[Zone] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where: Loc = ("zones", i)

        def fail(message: str, fld: str | None = None, _where: Loc = where,
                 _item: Any = item, _i: int = i) -> None:
            name = _item.get("name") if isinstance(_item, dict) else None
            raise ConfigError(message, file=file, line=doc.line(*_where, fld) if fld else doc.line(*_where),
                              rule=f"key zone {name or _i}", field=fld)

        if not isinstance(item, dict):
            fail("a zone must be a mapping")
        for key in item:
            if key not in ZONE_FIELDS:
                fail(f"unknown field (known: {', '.join(ZONE_FIELDS)})", str(key))
        name = item.get("name")
        if not isinstance(name, str) or not name:
            fail("every zone needs a name", "name")
        if name in seen:
            fail("duplicate zone name", "name")
        seen.add(name)
        limit = item.get("speed_limit_kmh")
        if limit is not None and not (_number(limit) and limit > 0):
            fail("must be a positive number", "speed_limit_kmh")
        circle, polygon = item.get("circle"), item.get("polygon")
        if (circle is None) == (polygon is None):
            fail("give exactly one of circle or polygon", "circle")
        if circle is not None:
            if not isinstance(circle, dict) or not all(_number(circle.get(k)) for k in ("lat", "lon", "radius_m")):
                fail("circle needs numeric lat, lon and radius_m", "circle")
            if not (-90 <= circle["lat"] <= 90 and -180 <= circle["lon"] <= 180 and circle["radius_m"] > 0):
                fail("lat/lon out of range or radius_m not positive", "circle")
            zones.append(Zone(name, float(circle["lat"]), float(circle["lon"]), float(circle["radius_m"]),
                              speed_limit_kmh=float(limit) if limit is not None else None))
        else:
            if not isinstance(polygon, list) or len(polygon) < 3 or not all(
                    isinstance(p, list | tuple) and len(p) == 2 and all(_number(x) for x in p) for p in polygon):
                fail("polygon needs at least three [lat, lon] vertices", "polygon")
            if not all(-90 <= p[0] <= 90 and -180 <= p[1] <= 180 for p in polygon):
                fail("a vertex is out of range (order is [lat, lon])", "polygon")
            zones.append(Zone(name, polygon=tuple((float(p[0]), float(p[1])) for p in polygon),
                              speed_limit_kmh=float(limit) if limit is not None else None))
    if len(zones) > 62:
        raise ConfigError("at most 62 zones are supported", file=file, line=doc.line("zones"), field="zones")
    return tuple(zones)
