"""Ranges: values outside the catalog's plausible range, and enumerated signals' allowed values.

Limits come from the catalog (`rules/signals.yaml`, canonical units); `range` in
`rules/cleaning.yaml` exempts signals (latitude and longitude are judged as a fix by the
GPS checks) and lists allowed values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.core.clean.config import CleaningConfig
from pipeline.core.clean.outcomes import OUT_OF_RANGE
from pipeline.core.clean.rows import SortedRows, alive_rows_of

REASONS = ("dropped.out_of_range",)


class RangeCheck:
    """Range and allowed values per catalog signal."""

    def __init__(self, catalog: Any, cfg: CleaningConfig, signal_index: Callable[..., int]) -> None:
        # Range limits per signal, open for exempt signals.
        self.range_lo = np.asarray(catalog.min, dtype=np.float64).copy()
        self.range_hi = np.asarray(catalog.max, dtype=np.float64).copy()
        for i, name in enumerate(cfg.range.exempt):
            s = signal_index(name, "range", "exempt", str(i))
            self.range_lo[s], self.range_hi[s] = -np.inf, np.inf
        self.range_open = bool(np.all(~np.isfinite(self.range_lo) & ~np.isfinite(self.range_hi)))
        self.allowed = {signal_index(name, "range", "allowed_values", name): np.asarray(values, dtype=np.float64)
                        for name, values in cfg.range.allowed_values.items()}

    @property
    def needed(self) -> bool:
        return not self.range_open or bool(self.allowed)

    def run(self, rows: SortedRows) -> None:
        """Values outside the catalog's plausible range (canonical units)."""
        x, s = rows.value, rows.signal
        bad = (x < self.range_lo[s]) | (x > self.range_hi[s])
        if bad.any():
            rows.code[bad & (rows.code == 0)] = OUT_OF_RANGE
        for sig, allowed in self.allowed.items():  # enumerated signals (few)
            idx = alive_rows_of(rows, sig)
            if idx.size:
                rows.code[idx[~np.isin(rows.value[idx], allowed)]] = OUT_OF_RANGE
