"""SQL over the Parquet lake in the object store: DuckDB on Arrow datasets read through S3.

The lake is what the workers write (see `pipeline/runtime/segments.py`): clean readings under
`clean/`, derived events per type under `events/<type>/`, one manifest per segment under
`manifests/`. Objects are read with pyarrow's S3 filesystem and registered in an in-memory
DuckDB as views, so nothing is downloaded at run time (no DuckDB extension) and the Hive
partition folders (`year=/month=/date=/hour=`) are columns that filters prune on.

Views:
- `readings`: vin, signal, t, value, repaired, offset, year, month, date, hour;
- one view per event type, the type with `.` as `_` (`fleet_trip_ended`): the CloudEvent
  attributes (id, type, source, subject, time, ...) and the data fields, `data.` dropped and
  nested names joined with `_` (`location_lat`), plus the partition columns;
- `events`: every event type's attributes (id, type, source, subject, time);
- `manifests`: one row per segment (topic, partition, first/last offset, frames and readings
  totals, and the `counts`, `dead_letters` and `routed` maps as JSON text);
- `reading_outcomes`: the manifests' reading counts in long form (topic, partition,
  first_offset, outcome, reason, readings), outcome `kept`, `repaired` or `dropped`;
- `dead_letters`: the manifests' dead-letter counts in long form (topic, partition,
  first_offset, stage, reason, frames).

A function `geohash(lat, lon, precision)` gives the grid cell the charging-demand handler uses.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from pipeline.core.errors import PipelineError
from pipeline.runtime.settings import Settings

MANIFEST_FIELDS = ("topic", "partition", "first_offset", "last_offset", "frames_in", "frames_ok",
                   "frames_dead_lettered", "readings_in", "readings_kept", "readings_repaired",
                   "readings_dropped")
EVENT_ATTRIBUTES = ("id", "type", "source", "subject", "time")
_VIEW_NAME = re.compile(r"[^a-z0-9_]")
DUCKDB_TYPES = {"string": "VARCHAR", "number": "DOUBLE", "integer": "BIGINT", "boolean": "BOOLEAN"}


def declared_event_fields(functions_dir: Any) -> dict[str, dict[str, str]]:
    """Event type -> field -> declared type, of the handlers in `functions_dir`."""
    from pipeline.core.handlers.loader import load_functions

    out: dict[str, dict[str, str]] = {}
    for spec in load_functions(functions_dir):
        for event_type in spec.emits:
            out[event_type] = {f.name: f.type for f in spec.fields.get(event_type, ())}
    return out


class LakeError(PipelineError):
    """The lake cannot be read (store unreachable, bucket missing) or a query failed."""


@dataclass
class Lake:
    """What `open_lake` found: the DuckDB connection and the views registered in it."""

    connection: Any
    views: dict[str, str] = field(default_factory=dict)  # view name -> what it holds
    # one statement at a time: a DuckDB connection is not for concurrent use (the page's threads)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def query(self, sql: str) -> pa.Table:
        """Run one SQL statement; a DuckDB error becomes a LakeError with its message."""
        import duckdb

        try:
            with self.lock:
                return self.connection.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            known = ", ".join(sorted(self.views)) or "none (the lake is empty)"
            raise LakeError(f"{exc}\nviews: {known}") from None


def s3_filesystem(settings: Settings) -> Any:
    """pyarrow's S3 filesystem for the configured endpoint (path-style, as MinIO and S3Proxy want)."""
    import os

    from pyarrow import fs

    # The AWS SDK under pyarrow asks for response checksums (an `x-amz-checksum-mode` header)
    # that S3Proxy answers with 501 Not Implemented; checksums only where an API requires
    # them works with AWS, MinIO and S3Proxy alike. Read when the client is created.
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    return fs.S3FileSystem(
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        endpoint_override=settings.s3_host,
        scheme="https" if settings.s3_use_tls else "http",
        region=settings.s3_region,
        connect_timeout=5,
        request_timeout=30,
    )


def view_name(event_type: str) -> str:
    """`fleet.trip.ended` -> `fleet_trip_ended` (a name SQL takes unquoted)."""
    return _VIEW_NAME.sub("_", event_type.lower())


def column_alias(name: str) -> str:
    """Parquet column of an event -> view column: `data.location.lat` -> `location_lat`."""
    if name.startswith("data."):
        name = name[len("data."):]
    return name.replace(".", "_")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _list_dirs(filesystem: Any, path: str) -> list[str]:
    from pyarrow import fs

    try:
        infos = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    except OSError as exc:
        raise LakeError(f"cannot list s3://{path}: {exc}") from None
    return sorted(i.base_name for i in infos if i.type == fs.FileType.Directory)


def _parquet_files(filesystem: Any, path: str) -> list[str]:
    from pyarrow import fs

    infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == fs.FileType.File and i.path.endswith(".parquet"))


def _dataset(filesystem: Any, files: list[str], base: str) -> Any:
    import pyarrow.dataset as ds

    return ds.dataset(files, filesystem=filesystem, format="parquet",
                      partitioning=ds.partitioning(flavor="hive"), partition_base_dir=base)


def read_manifests(filesystem: Any, bucket: str, threads: int = 8) -> list[dict[str, Any]]:
    """Every manifest JSON of the bucket (read several at a time)."""
    from pyarrow import fs

    infos = filesystem.get_file_info(fs.FileSelector(f"{bucket}/manifests", recursive=True,
                                                     allow_not_found=True))
    paths = sorted(i.path for i in infos if i.type == fs.FileType.File and i.path.endswith(".json"))

    def read(path: str) -> dict[str, Any]:
        with filesystem.open_input_stream(path) as stream:
            manifest: dict[str, Any] = orjson.loads(stream.read())
            return manifest

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(read, paths))


def manifest_tables(manifests: Iterable[dict[str, Any]]) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(manifests, reading_outcomes, dead_letters) as Arrow tables."""
    rows: dict[str, list[Any]] = {name: [] for name in (*MANIFEST_FIELDS, "counts", "dead_letters", "routed")}
    outcomes: dict[str, list[Any]] = {"topic": [], "partition": [], "first_offset": [], "outcome": [],
                                      "reason": [], "readings": []}
    dead: dict[str, list[Any]] = {"topic": [], "partition": [], "first_offset": [], "stage": [],
                                  "reason": [], "frames": []}
    for m in manifests:
        for name in MANIFEST_FIELDS:
            rows[name].append(m.get(name))
        for name in ("counts", "dead_letters", "routed"):
            rows[name].append(orjson.dumps(m.get(name) or {}, option=orjson.OPT_SORT_KEYS).decode())
        for code, n in sorted((m.get("counts") or {}).items()):
            outcome, _, reason = code.partition(".")
            outcomes["topic"].append(m["topic"])
            outcomes["partition"].append(m["partition"])
            outcomes["first_offset"].append(m["first_offset"])
            outcomes["outcome"].append(outcome)
            outcomes["reason"].append(reason or None)
            outcomes["readings"].append(int(n))
        for code, n in sorted((m.get("dead_letters") or {}).items()):
            stage, _, reason = code.partition(":")
            dead["topic"].append(m["topic"])
            dead["partition"].append(m["partition"])
            dead["first_offset"].append(m["first_offset"])
            dead["stage"].append(stage)
            dead["reason"].append(reason)
            dead["frames"].append(int(n))
    ints = {"partition", "first_offset", "last_offset", "frames_in", "frames_ok", "frames_dead_lettered",
            "readings_in", "readings_kept", "readings_repaired", "readings_dropped", "readings", "frames"}

    def table(columns: dict[str, list[Any]]) -> pa.Table:
        return pa.table({k: pa.array(v, pa.int64() if k in ints else pa.string()) for k, v in columns.items()})

    return table(rows), table(outcomes), table(dead)


def _geohash_udf(lat: pa.Array, lon: pa.Array, precision: pa.Array) -> pa.Array:
    """`geohash(lat, lon, precision)` in SQL: the handlers' own geohash, so cells agree."""
    import numpy as np

    from pipeline.core.handlers.ops import geohash

    la = lat.to_numpy(zero_copy_only=False).astype(np.float64)
    lo = lon.to_numpy(zero_copy_only=False).astype(np.float64)
    valid = ~(np.isnan(la) | np.isnan(lo))
    digits = precision.to_numpy(zero_copy_only=False)
    out: list[str | None] = [None] * len(la)
    for p in np.unique(digits[valid]).tolist() if valid.any() else []:
        rows = np.flatnonzero(valid & (digits == p))
        for row, cell in zip(rows.tolist(), geohash(la[rows], lo[rows], int(p)).tolist(), strict=True):
            out[row] = cell
    return pa.array(out, pa.string())


def open_lake(settings: Settings, *, filesystem: Any = None,
              declared: Mapping[str, Mapping[str, str]] | None = None) -> Lake:
    """Register the bucket's readings, events and manifests as DuckDB views.

    `declared` (event type -> field -> declared type, see `declared_event_fields`) adds an
    empty view for each event type that has no objects yet.
    """
    import duckdb

    filesystem = filesystem or s3_filesystem(settings)
    bucket = settings.s3_bucket
    from pyarrow import fs

    try:
        info = filesystem.get_file_info(bucket)
    except OSError as exc:
        raise LakeError(f"cannot reach the object store at {settings.s3_endpoint}: {exc}") from None
    if info.type == fs.FileType.NotFound:
        raise LakeError(f"bucket {bucket!r} not found at {settings.s3_endpoint}")
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    lake = Lake(con)

    clean = _parquet_files(filesystem, f"{bucket}/clean")
    if clean:
        con.register("_readings", _dataset(filesystem, clean, f"{bucket}/clean"))
        # Plain VARCHAR and TIMESTAMP instead of the files' dictionaries and millisecond
        # timestamps: some DuckDB functions (epoch_ms) fail on TIMESTAMP_MS read from Arrow.
        con.execute("CREATE VIEW readings AS SELECT * REPLACE (CAST(vin AS VARCHAR) AS vin, "
                    "CAST(signal AS VARCHAR) AS signal, CAST(t AS TIMESTAMP) AS t) FROM _readings")
        lake.views["readings"] = f"clean readings, {len(clean)} objects"

    attribute_selects: list[str] = []
    for event_type in _list_dirs(filesystem, f"{bucket}/events"):
        files = _parquet_files(filesystem, f"{bucket}/events/{event_type}")
        if not files:
            continue
        dataset = _dataset(filesystem, files, f"{bucket}/events/{event_type}")
        raw = f"_events_{view_name(event_type)}"
        con.register(raw, dataset)
        names = dataset.schema.names
        taken = set(EVENT_ATTRIBUTES)
        columns = []
        for name in names:
            alias = column_alias(name)
            if name.startswith("data.") and alias in taken:  # a data field named like an attribute
                alias = "data_" + alias
            taken.add(alias)
            expr = f"CAST({_quote(name)} AS TIMESTAMP)" if name == "time" else _quote(name)
            columns.append(f"{expr} AS {_quote(alias)}")
        view = view_name(event_type)
        con.execute(f"CREATE VIEW {view} AS SELECT {', '.join(columns)} FROM {raw}")
        lake.views[view] = f"events {event_type}, {len(files)} objects"
        attrs = [a if a in names else f"NULL AS {a}" for a in EVENT_ATTRIBUTES]
        attribute_selects.append(f"SELECT {', '.join(_quote(a) if a in names else a for a in attrs)} FROM {raw}")
    for event_type, fields in sorted((declared or {}).items()):
        view = view_name(event_type)
        if view in lake.views:
            continue
        # no objects yet: an empty view with the declared columns, so questions still run
        cols = [f"CAST(NULL AS {t}) AS {a}" for a, t in (("id", "VARCHAR"), ("type", "VARCHAR"),
                ("source", "VARCHAR"), ("subject", "VARCHAR"), ("partitionkey", "VARCHAR"),
                ("time", "TIMESTAMP"))]
        cols += [f"CAST(NULL AS {DUCKDB_TYPES[t]}) AS {_quote(column_alias(name))}" for name, t in fields.items()
                 if column_alias(name) not in EVENT_ATTRIBUTES]
        cols += [f"CAST(NULL AS INTEGER) AS {p}" for p in ("year", "month", "date", "hour")]
        con.execute(f"CREATE VIEW {view} AS SELECT {', '.join(cols)} WHERE false")
        lake.views[view] = f"events {event_type}, none yet (declared by a handler)"
    if attribute_selects:
        con.execute("CREATE VIEW events AS " + " UNION ALL ".join(attribute_selects))
        lake.views["events"] = "attributes of every event type"

    manifests, outcomes, dead = manifest_tables(read_manifests(filesystem, bucket))
    for name, table, what in (("manifests", manifests, "segment manifests"),
                              ("reading_outcomes", outcomes, "readings by outcome and reason, per segment"),
                              ("dead_letters", dead, "dead-lettered frames by stage and reason, per segment")):
        con.register(f"_{name}", table)
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}")
        lake.views[name] = f"{what}, {manifests.num_rows} manifests"
    from duckdb import func, sqltypes

    con.create_function("geohash", _geohash_udf, [sqltypes.DOUBLE, sqltypes.DOUBLE, sqltypes.INTEGER],
                        sqltypes.VARCHAR, type=func.ARROW, null_handling=func.SPECIAL)
    return lake


@dataclass(frozen=True)
class Example:
    """A documented question and the SQL that answers it (`pipeline query --example NAME`)."""

    name: str
    question: str
    sql: str


EXAMPLES: tuple[Example, ...] = (
    Example("trips-per-vehicle-day", "Trips per vehicle and day, with distance and energy.",
            "SELECT vin, CAST(time AS DATE) AS day, count(*) AS trips, "
            "round(sum(distance_km), 1) AS km, round(sum(energy_kwh), 2) AS kwh "
            "FROM fleet_trip_ended GROUP BY vin, day ORDER BY vin, day"),
    Example("harsh-braking-per-100km", "Harsh braking events per 100 km driven, per vehicle.",
            "WITH km AS (SELECT vin, sum(distance_km) AS km FROM fleet_trip_ended GROUP BY vin), "
            "braking AS (SELECT vin, count(*) AS n FROM fleet_driving_harsh_braking GROUP BY vin) "
            "SELECT vin, round(km, 1) AS km, coalesce(n, 0) AS harsh_brakings, "
            "round(100 * coalesce(n, 0) / km, 2) AS per_100km "
            "FROM km LEFT JOIN braking USING (vin) WHERE km > 0 ORDER BY per_100km DESC, vin"),
    Example("charging-energy-per-cell-hour",
            "Charging energy per grid cell (the peak-shaving cells) and hour: battery power while "
            "charging, times the time to the next power reading (at most 5 minutes), at the "
            "vehicle's last position.",
            "WITH r AS MATERIALIZED ( "
            "SELECT vin, signal, t, value FROM readings WHERE signal IN ('Vehicle.Powertrain.TractionBattery.CurrentPower', "
            "'Vehicle.Powertrain.TractionBattery.Charging.IsCharging', 'Vehicle.CurrentLocation.Latitude', "
            "'Vehicle.CurrentLocation.Longitude')), "
            "power AS (SELECT vin, t, value AS watts, lead(t) OVER (PARTITION BY vin ORDER BY t) AS t_next "
            "FROM r WHERE signal = 'Vehicle.Powertrain.TractionBattery.CurrentPower'), "
            "charging AS (SELECT vin, t, value AS is_charging FROM r WHERE signal = 'Vehicle.Powertrain.TractionBattery.Charging.IsCharging'), "
            "lat AS (SELECT vin, t, value AS lat FROM r WHERE signal = 'Vehicle.CurrentLocation.Latitude'), "
            "lon AS (SELECT vin, t, value AS lon FROM r WHERE signal = 'Vehicle.CurrentLocation.Longitude') "
            "SELECT geohash(lat, lon, 5) AS cell, date_trunc('hour', p.t) AS hour, count(DISTINCT p.vin) AS vehicles, "
            "round(sum(p.watts * (epoch_ms(p.t_next) - epoch_ms(p.t))) / 3.6e9, 3) AS kwh "
            "FROM power p "
            "ASOF JOIN charging c ON p.vin = c.vin AND p.t >= c.t "
            "ASOF JOIN lat ON p.vin = lat.vin AND p.t >= lat.t "
            "ASOF JOIN lon ON p.vin = lon.vin AND p.t >= lon.t "
            "WHERE c.is_charging >= 0.5 AND p.watts > 0 AND epoch_ms(p.t_next) - epoch_ms(p.t) <= 300000 "
            "GROUP BY ALL ORDER BY hour, cell"),
    Example("dropped-readings-by-reason", "Readings the cleaning stage dropped, by reason.",
            "SELECT reason, sum(readings)::BIGINT AS readings FROM reading_outcomes "
            "WHERE outcome = 'dropped' GROUP BY reason ORDER BY readings DESC, reason"),
    Example("dead-letters-by-reason", "Dead-lettered frames by stage and reason.",
            "SELECT stage, reason, sum(frames)::BIGINT AS frames FROM dead_letters "
            "GROUP BY stage, reason ORDER BY frames DESC, stage, reason"),
)


def example(name: str) -> Example:
    for ex in EXAMPLES:
        if ex.name == name:
            return ex
    raise LakeError(f"no example {name!r}; examples: {', '.join(e.name for e in EXAMPLES)}")
