"""Group-wise array helpers over rows sorted by (vehicle, signal, t): no loop per reading."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipeline.core.batch import BoolArray, FloatArray, IntArray


def starts_of(keys: npt.NDArray[np.integer]) -> BoolArray:
    """True where a run of equal keys begins (the first row of each group)."""
    new = np.empty(keys.shape[0], dtype=bool)
    if keys.shape[0]:
        new[0] = True
        np.not_equal(keys[1:], keys[:-1], out=new[1:])
    return new


def ranges(starts: IntArray, lengths: IntArray) -> IntArray:
    """Concatenation of `arange(s, s + n)` for each (s, n): the rows of selected groups."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths  # per group: small
    return np.arange(total, dtype=np.int64) + np.repeat(np.asarray(starts, dtype=np.int64) - offsets, lengths)


def rank_in_group(new_group: BoolArray) -> IntArray:
    """0-based position of every row within its group (rows sorted by group)."""
    n = new_group.shape[0]
    first = np.flatnonzero(new_group)
    return np.arange(n, dtype=np.int64) - np.repeat(first, np.diff(np.append(first, n)))


def suffix_min_in_group(values: IntArray, group: IntArray) -> IntArray:
    """Minimum of `values` over the rows after each row in the same group (int64 max if none).

    `group` is non-decreasing and values are non-negative and below 2**31; offsetting by
    group keeps the running minimum from leaking across groups (it runs backwards, so a
    later group, with a larger offset, can never undercut an earlier one).
    """
    n = values.shape[0]
    out = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    if n < 2:
        return out
    shifted = group.astype(np.int64) * (1 << 31) + values
    run = np.minimum.accumulate(shifted[::-1])[::-1]
    same = group[1:] == group[:-1]
    out[:-1] = np.where(same, run[1:] - group[:-1].astype(np.int64) * (1 << 31), out[:-1])
    return out


def window_median(windows: FloatArray) -> FloatArray:
    """Median of each row of an (n, w) array with odd w (an element of the row, exactly)."""
    half = windows.shape[1] // 2
    return np.partition(windows, half, axis=1)[:, half]
