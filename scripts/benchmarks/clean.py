"""Benchmark the cleaning stage: readings/s on one core, batch latency, and the speed-up
over the straightforward per-reading implementation of the same rules.

Traffic comes from the fleet simulator (default fault rates), encoded as Kafka records
and decoded by `events.decode_records` into batches of about `--batch` readings; only
`Cleaner.clean` is timed. The reference (`tests.oracles.clean`) cleans the first
batches in the same run, and their outcomes are compared with the vectorised ones.

    .venv/bin/python scripts/benchmarks/clean.py [--vehicles 2000 --duration 300 --json]

With `--baseline REF` (a git commit or branch) the same benchmark of the cleaner at REF
runs in the same invocation, alternating with this tree's for `--rounds` rounds (each in
its own process, on the same traffic), and the best rate of each is printed side by side:
on a shared machine only numbers from one run compare. REF may predate the package's
layers (flat `pipeline.clean`, `pipeline.batch`, ...) or the move of the per-reading
cleaner to tests/oracles: the script imports either layout, only from REF's tree, and uses
REF's own per-reading cleaner where it has one (else this tree's).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# BENCH_TREE: another checkout whose `pipeline` is measured by this script (--baseline)
TREE = Path(os.environ.get("BENCH_TREE") or ROOT)
sys.path.insert(0, str(TREE))


class TreeOnly:
    """`pipeline` and its modules come from the measured tree or not at all: an editable
    install of another checkout (its finder comes later on sys.meta_path) would otherwise
    fill in the modules that tree lacks, and another tree's code would be measured."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> Any:
        if name != "pipeline" and not name.startswith("pipeline."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} in {TREE}", name=name)
        return spec


sys.meta_path.insert(0, TreeOnly())  # type: ignore[arg-type]

import numpy as np  # noqa: E402


def missing(error: ModuleNotFoundError, name: str) -> bool:
    """Whether `error` says that module `name` itself (or a package on its path) is not there,
    rather than that something it imports is missing."""
    return bool(error.name) and (name == error.name or name.startswith(f"{error.name}."))


# The measured tree may be a checkout from before `pipeline` was split into layers (flat
# `pipeline.batch`, `pipeline.clean`, ...): the layered modules first, else the flat ones.
try:
    from pipeline.core.batch import RawRecord, Readings
    from pipeline.core.catalog import load_catalog
    from pipeline.core.clean import Cleaner, load_cleaning_config
    from pipeline.core.events import decode_records
except ModuleNotFoundError as e:
    if not missing(e, "pipeline.core.batch"):
        raise
    from pipeline.batch import RawRecord, Readings  # type: ignore[no-redef]
    from pipeline.catalog import load_catalog  # type: ignore[no-redef]
    from pipeline.clean import Cleaner, load_cleaning_config  # type: ignore[no-redef]
    from pipeline.events import decode_records  # type: ignore[no-redef]

# Where the measured tree keeps its per-reading cleaner: with the tests, or (before they
# left the package) in the layered or in the flat package.
ORACLES = ("tests.oracles.clean", "pipeline.core.clean.reference", "pipeline.clean.reference")


def reference_cleaner() -> Any:
    """The measured tree's `ReferenceCleaner` where it has one, else this tree's."""
    for name in ORACLES:
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError as e:
            if not missing(e, name):
                raise
            continue
        # in the measured tree, not in another tree's tests/ that happens to be on the path
        if spec and spec.origin and Path(spec.origin).resolve().is_relative_to(TREE.resolve()):
            return importlib.import_module(name).ReferenceCleaner
    # from its file: the measured tree's own `tests` package would hide this tree's
    spec = importlib.util.spec_from_file_location("bench_oracle_clean", ROOT / "tests" / "oracles" / "clean.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module.ReferenceCleaner


ReferenceCleaner = reference_cleaner()


def simulated_batches(vehicles: int, duration_s: float, seed: int, batch_readings: int) -> list[Readings]:
    """Decoded batches of about `batch_readings` readings, in arrival order."""
    try:
        from pipeline.tools.simulate import FleetSimulator, SimConfig, to_record
    except ModuleNotFoundError as e:  # the flat layout
        if not missing(e, "pipeline.tools.simulate"):
            raise
        from pipeline.simulate import FleetSimulator, SimConfig, to_record  # type: ignore[no-redef]

    config = SimConfig(vehicles=vehicles, duration_s=duration_s, seed=seed)
    sim = FleetSimulator(config)
    topics = {"sensor": config.sensor_topic, "gps": config.gps_topic}
    batches: list[Readings] = []
    pending: list[RawRecord] = []
    count = 0
    offset = 0
    for frames, _ in sim.windows():
        for f in frames:
            rec = to_record(f, topics, config.max_frame_bytes)
            pending.append(RawRecord(rec.topic, 0, offset, rec.key, rec.value, rec.headers, rec.timestamp_ms))
            offset += 1
            count += f.n_readings
            if count >= batch_readings:
                batches.append(decode_records(pending)[0])
                pending, count = [], 0
    if pending:
        batches.append(decode_records(pending)[0])
    return batches


def run(args: argparse.Namespace) -> dict[str, Any]:
    catalog = load_catalog()
    config = load_cleaning_config()
    t0 = time.perf_counter()
    batches = simulated_batches(args.vehicles, args.duration, args.seed, args.batch)
    prepare_s = time.perf_counter() - t0
    total = sum(len(b) for b in batches)

    # Vectorised: every batch, in order, twice through fresh cleaners (warm-up, then timed).
    Cleaner(catalog, config).clean(batches[0])
    cleaner = Cleaner(catalog, config)
    latencies = []
    profile: dict[str, float] = {}
    outcomes = []
    cpu_start = time.process_time()
    for b in batches:
        start = time.perf_counter()
        result = cleaner.clean(b)
        latencies.append(time.perf_counter() - start)
        outcomes.append(result.outcome)
    cpu_s = time.process_time() - cpu_start
    clean_s = sum(latencies)
    profiled = Cleaner(catalog, config)
    for b in batches:
        for k, v in profiled.clean(b, profile=True).timings.items():
            profile[k] = profile.get(k, 0.0) + v

    # Reference on the first batches, same order and state, then agreement.
    reference = ReferenceCleaner(catalog, config)
    n_ref = min(args.reference_batches, len(batches))
    ref_readings = sum(len(b) for b in batches[:n_ref])
    start = time.perf_counter()
    ref_out = [reference.clean(b).outcome for b in batches[:n_ref]]
    ref_s = time.perf_counter() - start
    agree = sum(int(np.sum(np.asarray(r) == o)) for r, o in zip(ref_out, outcomes[:n_ref], strict=False))

    lat_ms = np.asarray(latencies) * 1000
    vec_rate = total / clean_s
    ref_rate = ref_readings / ref_s
    vec_same = ref_readings / sum(latencies[:n_ref])  # the vectorised stage on the same batches
    return {
        "vehicles": args.vehicles, "duration_s": args.duration, "seed": args.seed,
        "batches": len(batches), "readings": total, "mean_batch_readings": total / len(batches),
        "prepare_s": round(prepare_s, 2),
        "vectorised": {"seconds": round(clean_s, 4), "readings_per_s": round(vec_rate),
                       "readings_per_cpu_s": round(total / cpu_s),
                       "batch_ms_p50": round(float(np.percentile(lat_ms, 50)), 3),
                       "batch_ms_p99": round(float(np.percentile(lat_ms, 99)), 3),
                       "batch_ms_max": round(float(lat_ms.max()), 3)},
        "reference": {"batches": n_ref, "readings": ref_readings, "seconds": round(ref_s, 3),
                      "readings_per_s": round(ref_rate)},
        "vectorised_on_reference_batches_per_s": round(vec_same),
        "speedup": round(vec_same / ref_rate, 1),
        "speedup_vs_all_batches": round(vec_rate / ref_rate, 1),
        "agreement": {"readings": ref_readings, "same_outcome": agree},
        "profile_share": {k: round(v / sum(profile.values()), 3) for k, v in
                          sorted(profile.items(), key=lambda kv: -kv[1])},
        "targets": {"readings_per_s": 5_000_000, "speedup": 15},
        "cpu": os.cpu_count(),
    }


def title_of(name: str, baseline: str) -> str:
    return f"baseline {baseline}" if name == "baseline" else name


def compare(args: argparse.Namespace) -> None:
    """This tree against `args.baseline`, alternating rounds, best readings/s of each.

    Both are measured by this script (the baseline's `pipeline` on the path instead), so
    only the cleaner differs; CPU time is shown too, steadier than wall time on a busy host.
    """
    root = ROOT
    common = ["--vehicles", str(args.vehicles), "--duration", str(args.duration), "--seed", str(args.seed),
              "--batch", str(args.batch), "--reference-batches", "1", "--json"]
    rates: dict[str, list[int]] = {"baseline": [], "this tree": []}
    cpu: dict[str, list[int]] = {"baseline": [], "this tree": []}
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(root), "archive", args.baseline], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        trees = {"baseline": Path(tmp), "this tree": root}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *common],
                                      capture_output=True, text=True, cwd=tree,
                                      env={**os.environ, "BENCH_TREE": str(tree), "PYTHONPATH": str(tree)})
                if proc.returncode != 0:  # its traceback, not just an exit status
                    sys.exit(f"the benchmark of {title_of(name, args.baseline)} failed "
                             f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}")
                vec = json.loads(proc.stdout.splitlines()[-1])["vectorised"]
                rates[name].append(vec["readings_per_s"])
                cpu[name].append(vec["readings_per_cpu_s"])
    print(f"cleaning, best of {args.rounds} alternating rounds ({args.vehicles} vehicles, {args.duration:.0f} s):")
    for label, numbers in (("readings/s", rates), ("readings/CPU-s", cpu)):
        for name in ("baseline", "this tree"):
            print(f"  {title_of(name, args.baseline)}: {max(numbers[name]):,} {label}   "
                  f"(rounds: {', '.join(f'{r:,}' for r in numbers[name])})")
        print(f"  this tree / baseline ({label}): {max(numbers['this tree']) / max(numbers['baseline']):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=300.0, help="simulated seconds")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch", type=int, default=100_000, help="readings per batch")
    parser.add_argument("--reference-batches", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--baseline", help="git commit or branch to compare with, in the same run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds with --baseline")
    args = parser.parse_args()
    if args.baseline:
        compare(args)
        return
    out = run(args)
    if args.json:
        print(json.dumps(out))
        return
    v, r = out["vectorised"], out["reference"]
    print(f"traffic: {out['readings']:,} readings in {out['batches']} batches "
          f"(~{out['mean_batch_readings']:,.0f} each), {out['vehicles']} vehicles, {out['duration_s']:.0f} s simulated")
    print(f"vectorised: {v['readings_per_s']:,.0f} readings/s   batch p50 {v['batch_ms_p50']} ms  "
          f"p99 {v['batch_ms_p99']} ms  max {v['batch_ms_max']} ms")
    print(f"reference : {r['readings_per_s']:,.0f} readings/s   ({r['readings']:,} readings, {r['batches']} batches)")
    print(f"speed-up  : {out['speedup']}x on the same batches "
          f"(vectorised {out['vectorised_on_reference_batches_per_s']:,.0f} readings/s there)   "
          f"outcomes agree on {out['agreement']['same_outcome']:,} of {out['agreement']['readings']:,} readings")
    print("time by check: " + ", ".join(f"{k} {v:.0%}" for k, v in out["profile_share"].items()))


if __name__ == "__main__":
    main()
