"""Rules benchmark: events per second through 20 routes (matching + transformation, no Kafka).

Runs the vectorised router on synthetic batches of derived events (the event types of the
shared vocabulary, mixed) through the 6 shipped routes plus 14 more realistic ones, and a
per-event interpreter of the very same rules (`tests.oracles.rules`, dict walking)
in the same process, then prints both rates and their ratio.

    .venv/bin/python scripts/benchmarks/rules.py [--batch 100000] [--batches 5] [--json]

Two vectorised figures are printed: with deterministic event ids (what `Router.route`
returns by default: one BLAKE2b per routed event) and without (`assign_ids=False`, ids
left to the edge), because hashing is per event and dominates on a slow core. A third
runs without the value-level data-policy checks (`enforce_policies=False`), and the cost
of those checks is printed as a share of routing with them, from the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.core.rules.columns import events_from_batch  # noqa: E402
from pipeline.core.rules.loader import DEFAULT_RULES_DIR, RuleSet, load_rules  # noqa: E402
from pipeline.core.rules.router import Router  # noqa: E402
from pipeline.core.rules.sample import synthetic_events  # noqa: E402
from tests.oracles.rules import route_events  # noqa: E402

EXTRA_ROUTES = """\
routes:
  - name: insurance.speeding
    match:
      type: [fleet.driving.speeding]
      data: {speed_kmh: [{numeric: [">", 90]}]}
    transform:
      - pick: [data.vin, data.speed_kmh, data.limit_kmh, data.duration_ms, data.location]
      - hmac: {field: data.vin, to: data.driver_ref}
      - hmac: [subject, partitionkey]
      - coarsen: {field: data.location, precision_m: 5000}
      - set: {source: /pipeline/routes/insurance}
    to: [{topic: route.insurance.speeding}]
    policy: {vin: pseudonym, location_precision_m: 5000}
  - name: ops.depot-visits
    match:
      type: [fleet.geofence.entered, fleet.geofence.exited]
      data: {zone: [{prefix: depot-}]}
    transform:
      - pick: [data.vin, data.zone]
    to: [{topic: route.ops.depot-visits}]
  - name: ops.paris-harsh
    match:
      type: [{wildcard: "fleet.driving.harsh_*"}]
      data: {location: [{inside-circle: {lat: 48.8566, lon: 2.3522, radius_m: 15000}}]}
    transform:
      - pick: [data.accel_ms2, data.speed_kmh, data.location]
      - coarsen: {field: data.location, precision_m: 500}
    to: [{topic: route.ops.paris}]
  - name: ops.casablanca-harsh
    match:
      type: [{prefix: fleet.driving.harsh_}]
      data: {location: [{inside-box: {south: 33.45, west: -7.75, north: 33.70, east: -7.45}}]}
    transform:
      - pick: [data.vin, data.accel_ms2, data.location]
    to: [{topic: route.ops.casablanca}]
  - name: ops.berlin
    match:
      data: {location: [{inside-polygon: [[52.45, 13.2], [52.6, 13.2], [52.6, 13.6], [52.45, 13.6]]}]}
    transform:
      - pick: [data.vin, data.location]
    to: [{topic: route.ops.berlin}]
  - name: charging.dc
    match:
      type: [fleet.charging.started]
      data: {charger_kind: [{equals-ignore-case: DC}]}
    transform:
      - pick: [data.vin, data.session_id, data.soc_pct, data.location]
      - hmac: {field: data.vin, to: data.vehicle_ref}
      - coarsen: {field: data.location, precision_m: 1000}
    to: [{topic: route.charging.dc}]
  - name: energy.analytics
    match:
      type: [fleet.charging.ended]
    transform:
      - pick: [data.energy_kwh, data.duration_s, data.max_power_kw]
      - bucket: {field: data.energy_kwh, to: data.energy_band, edges: [5, 20, 50], labels: [xs, s, m, l]}
    to: [{topic: route.energy.analytics}]
  - name: fleet.idle-alerts
    match:
      type: [fleet.driving.idling]
      data: {duration_s: [{numeric: [">=", 600]}]}
    transform:
      - pick: [data.vin, data.duration_s]
      - template: {data.summary: "{subject} idled {data.duration_s} s"}
    to: [{topic: route.fleet.idle}]
  - name: trips.started
    match:
      type: [fleet.trip.started]
    transform:
      - pick: [data.vin, data.trip_id, data.odometer_km]
      - mask: {field: data.vin, keep_last: 4}
    to: [{topic: route.trips.started}]
  - name: trips.endpoints
    match:
      type: [fleet.trip.ended]
    transform:
      - pick: [data.trip_id, data.start, data.end]
      - split: {by: [data.start, data.end], to: data.location, index_to: data.point}
      - coarsen: {field: data.location, precision_m: 2000}
    to: [{topic: route.trips.endpoints}]
  - name: dtc.escalation
    match:
      type: [fleet.dtc.appeared]
      data: {dtc_count: [{numeric: [">=", 3]}], previous_count: [{numeric: ["<", 1]}]}
    to: [{topic: route.dtc.escalation}]
  - name: battery.critical
    match:
      any:
        - {type: [fleet.battery.low_soc], data: {soc_pct: [{numeric: ["<", 5]}]}}
        - {type: [fleet.battery.low_12v], data: {voltage_v: [{numeric: ["<", 11.5]}]}}
    transform:
      - pick: [data.vin, data.soc_pct, data.voltage_v]
    to: [{topic: route.battery.critical}]
  - name: grid.large-demand
    match:
      type: [fleet.grid.charging_demand]
      data: {expected_kw: [{numeric: [">", 200]}]}
    transform:
      - pick: [data.cell, data.expected_kw, data.sessions]
    to: [{topic: route.grid.large}]
  - name: behaviour.risky
    match:
      type: [fleet.behaviour.features]
      any:
        - data: {harsh_braking_per_100km: [{numeric: [">", 5]}]}
        - data: {speeding_share: [{numeric: [">", 0.2]}]}
    transform:
      - pick: [data.vin, data.harsh_braking_per_100km, data.speeding_share]
      - hmac: {field: data.vin, to: data.driver_ref}
      - hmac: [subject, partitionkey]
    to: [{topic: route.behaviour.risky}]
"""


def build_rules(workdir: Path) -> RuleSet:
    """The shipped rules plus the extra routes above: 20 routes including the default."""
    routes = workdir / "routes"
    shutil.copytree(DEFAULT_RULES_DIR, routes)
    (routes / "zz-benchmark.yaml").write_text(EXTRA_ROUTES)
    return load_rules(routes, env={})


def time_vectorised(ruleset: RuleSet, batches: list, assign_ids: bool, rounds: int,
                    enforce_policies: bool = True) -> tuple[float, dict]:
    router = Router(ruleset, b"benchmark-key", assign_ids=assign_ids, enforce_policies=enforce_policies)
    router.route(batches[0])  # warm caches the way a running worker has them
    per_batch: list[float] = []
    policy_share: list[float] = []  # per batch: value checks / the rest of routing, same batch
    last = None
    for _ in range(rounds):
        for batch in batches:
            gc.collect()
            started = time.perf_counter()
            last = router.route(batch)
            per_batch.append(time.perf_counter() - started)
            policy_share.append(last.policy_seconds / (per_batch[-1] - last.policy_seconds))
    n = len(batches[0])
    stats = {"batch_ms_median": statistics.median(per_batch) * 1e3, "batch_ms_best": min(per_batch) * 1e3,
             "routed_events": sum(last.counts.values()) if last else 0, "unmatched": last.unmatched if last else 0,
             "policy_share_median": statistics.median(policy_share)}
    return n / statistics.median(per_batch), stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=100_000, help="events per batch")
    parser.add_argument("--batches", type=int, default=3, help="distinct batches")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the batches")
    parser.add_argument("--reference-events", type=int, default=20_000, help="events for the per-event interpreter")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="rules-bench-"))
    try:
        ruleset = build_rules(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    batches = [synthetic_events(args.batch, seed=seed) for seed in range(args.batches)]
    with_ids, with_ids_stats = time_vectorised(ruleset, batches, True, args.rounds)
    without_ids, without_ids_stats = time_vectorised(ruleset, batches, False, args.rounds)
    # Alternate with and without the policy checks so a noisy neighbour hits both alike.
    checked_ms: list[float] = []
    unchecked_ms: list[float] = []
    for _ in range(args.rounds):
        checked_ms.append(time_vectorised(ruleset, batches, True, 1)[1]["batch_ms_median"])
        unchecked_ms.append(time_vectorised(ruleset, batches, True, 1, enforce_policies=False)[1]["batch_ms_median"])
    checked, unchecked = statistics.median(checked_ms), statistics.median(unchecked_ms)
    policy_share = (checked - unchecked) / unchecked  # the checks as a share of routing without them

    sample = events_from_batch(batches[0].take(slice(0, args.reference_events)))  # type: ignore[arg-type]
    gc.collect()
    started = time.perf_counter()
    reference = route_events(ruleset, sample, b"benchmark-key")
    reference_rate = len(sample) / (time.perf_counter() - started)

    result = {
        "routes": len(ruleset.all_routes()),
        "batch_events": args.batch,
        "vectorised_events_per_s": round(with_ids),
        "vectorised_no_ids_events_per_s": round(without_ids),
        "per_event_events_per_s": round(reference_rate),
        "speedup": round(with_ids / reference_rate, 1),
        "speedup_no_ids": round(without_ids / reference_rate, 1),
        "vectorised": {k: round(v, 2) for k, v in with_ids_stats.items() if k != "policy_share_median"},
        "vectorised_no_ids": {k: round(v, 2) for k, v in without_ids_stats.items() if k != "policy_share_median"},
        # A difference of two medians: slightly negative on a tiny, noisy run.
        "policy_check": {"share_timed_in_batch": round(with_ids_stats["policy_share_median"], 4),
                         "with_ms_median": round(checked, 2), "without_ms_median": round(unchecked, 2),
                         "share_with_vs_without": round(policy_share, 3)},
        "per_event_sample": len(sample),
        "per_event_routed": sum(len(v) for v in reference.per_route.values()),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"rules benchmark: {result['routes']} routes, batches of {args.batch:,} events "
          f"({with_ids_stats['routed_events']:,} routed events per batch, {with_ids_stats['unmatched']:,} unmatched)")
    print(f"  vectorised, with deterministic ids : {with_ids:>12,.0f} events/s  "
          f"(median {with_ids_stats['batch_ms_median']:.1f} ms per batch)")
    print(f"  vectorised, ids left to the edge   : {without_ids:>12,.0f} events/s  "
          f"(median {without_ids_stats['batch_ms_median']:.1f} ms per batch)")
    print(f"  policy checks on values            : {with_ids_stats['policy_share_median']:.1%} of the rest of routing "
          f"(timed inside each batch, median); with/without alternated: median {checked:.1f} ms per batch with, "
          f"{unchecked:.1f} ms without ({policy_share:+.1%})")
    print(f"  per-event interpreter (same rules) : {reference_rate:>12,.0f} events/s  ({len(sample):,} events)")
    print(f"  speedup: {result['speedup']}x with ids, {result['speedup_no_ids']}x without")


if __name__ == "__main__":
    main()
