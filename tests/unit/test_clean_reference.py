"""The vectorised cleaner agrees with the per-reading reference implementation."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.clean import Cleaner, load_cleaning_config
from pipeline.core.clean.config import SpikeRule, StuckRule
from tests.oracles.clean import ReferenceCleaner
from tests.unit.test_clean_support import SOC, SPEED, random_batches, readings_of


def configs() -> list:
    base = load_cleaning_config()
    repair = base.model_copy(update={"spikes": {
        SPEED: SpikeRule(window=5, n_sigmas=3, min_deviation=10, action="repair"),
        SOC: SpikeRule(window=7, n_sigmas=4, min_deviation=3, action="drop")}})
    stuck = base.model_copy(update={"stuck": {
        "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure": StuckRule(min_duration_ms=10_000, min_count=2),
        SOC: StuckRule(min_duration_ms=3_000, min_count=3, ignore_values=(100.0,))}})
    relocate = base.model_copy(update={"gps": base.gps.model_copy(update={"relocate_after_ms": 15_000})})
    return [base, repair, stuck, relocate]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_same_outcomes_as_reference(seed: int, which: int) -> None:
    catalog = load_catalog()
    config = configs()[which]
    fast, slow = Cleaner(catalog, config), ReferenceCleaner(catalog, config)
    total = 0
    for batch in random_batches(seed, batches=4, fault_rate=0.05):
        readings = readings_of(batch)
        got = fast.clean(readings)
        want = slow.clean(readings)
        reasons = got.reasons
        assert [reasons[c] for c in got.outcome] == [reasons[c] for c in want.outcome]
        clean = got.readings
        rows = list(zip(np.asarray(clean.vins)[clean.vehicle].tolist(),
                        np.asarray(clean.signal_names)[clean.signal].tolist(),
                        clean.t.tolist(), clean.value.tolist(), got.repaired.tolist(),
                        got.late.tolist(), strict=True))
        assert rows == want.rows
        total += len(readings)
    assert total > 1000


def test_same_outcomes_on_simulated_traffic() -> None:
    """Simulated frames (default faults, the shipped config) through decode: same outcomes."""
    from pipeline.core.batch import RawRecord
    from pipeline.core.events import decode_records
    from pipeline.tools.sim.faults import parse_fault_rates
    from pipeline.tools.simulate import FleetSimulator, SimConfig, to_record

    catalog = load_catalog()
    rates = parse_fault_rates("spike=0.003,gps_jump=0.01,teleport=0.002,null_island=0.002,"
                              "duplicate=0.02,wrong_unit=0.005,stuck=0.002")
    config = SimConfig(vehicles=40, duration_s=240, seed=3, fault_rates=rates)
    sim = FleetSimulator(config, catalog)
    records = [to_record(f, {"sensor": "s", "gps": "g"}) for f in sim.frames()]
    raws = [RawRecord(r.topic, 0, i, r.key, r.value, r.headers, r.timestamp_ms) for i, r in enumerate(records)]
    fast, slow = Cleaner(catalog, load_cleaning_config()), ReferenceCleaner(catalog, load_cleaning_config())
    seen: set[str] = set()
    for start in range(0, len(raws), 40):
        readings, _ = decode_records(raws[start:start + 40])
        got, want = fast.clean(readings), slow.clean(readings)
        assert got.outcome.tolist() == want.outcome
        seen |= {got.reasons[c] for c in got.outcome}
    assert {"kept", "dropped.duplicate", "dropped.spike", "repaired.unit"} <= seen
