"""Signals, units and values: the checks every reading gets first, in input order.

A reading of a signal the catalog does not know is `dropped.unknown_signal`; a unit the
catalog cannot convert to the signal's canonical one `dropped.unit_unconvertible` (a
convertible one is converted: `repaired.unit`); a value that is not finite (NaN, null)
`dropped.non_finite`. The catalog is `rules/signals.yaml`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.batch import BoolArray, CodeArray, FloatArray, Int32Array, Readings
from pipeline.core.clean.outcomes import NON_FINITE, UNIT_UNCONVERTIBLE, UNKNOWN_SIGNAL

REASONS = ("dropped.unknown_signal", "dropped.unit_unconvertible", "dropped.non_finite")  # and `repaired.unit`


def check_signals(cat: Any, readings: Readings,
                  code: CodeArray) -> tuple[Int32Array, FloatArray, BoolArray | None]:
    """The catalog index of every reading's signal, its value in canonical units, and which
    values were converted (None: none); codes written into `code`."""
    n = len(readings)
    sig_map = cat.lookup(readings.signal_names).astype(np.int32)
    csig = sig_map[readings.signal] if n else np.empty(0, dtype=np.int32)
    if sig_map.size and sig_map.min() < 0:
        unknown = csig < 0
        code[unknown] = UNKNOWN_SIGNAL
        csig = np.where(unknown, 0, csig).astype(np.int32)
    value = readings.value
    converted: BoolArray | None = None
    labelled = np.flatnonzero(readings.unit != 0) if n and len(readings.unit_names) > 1 else ()
    if len(labelled):  # samples that carry a unit: few, converted where they are
        scale, offset, ok = cat.conversion_table(readings.unit_names)
        unit, sig = readings.unit[labelled].astype(np.intp), csig[labelled]
        ok_row = ok[sig, unit]
        code[labelled[~ok_row & (code[labelled] == 0)]] = UNIT_UNCONVERTIBLE
        sc, off = scale[sig, unit], offset[sig, unit]
        value = value.copy()
        with np.errstate(invalid="ignore"):
            value[labelled] = value[labelled] * sc + off
        converted = np.zeros(n, dtype=bool)
        converted[labelled] = ok_row & ((sc != 1.0) | (off != 0.0))
    bad = ~np.isfinite(value)
    if bad.any():
        code[bad & (code == 0)] = NON_FINITE
    return csig, value, converted
