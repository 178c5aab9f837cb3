"""Vectorized grouped statistics over target tokens, and conversion of results to plain JSON.

    group_stats(key, 10, prob)   # per group g in [0, 10): count, mean_p, median_p, frac_below_0_1

Medians and quantiles per group come from one lexsort of (group, value), then index arithmetic:
no Python loop over tokens, and one over groups only where a group needs np.quantile.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

LOW_P = 0.1  # "below 0.1" is p < 0.1: the targets ProFit's default mask (keep p >= 0.1) drops


def grouped_median(key: np.ndarray, n_groups: int, values: np.ndarray) -> np.ndarray:
    """(G,) float64 median of `values` per group (np.median's convention: mean of the two middle values); NaN if empty."""
    counts = np.bincount(key, minlength=n_groups)
    ordered = values[np.lexsort((values, key))]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full(n_groups, np.nan)
    has = counts > 0
    lo = starts[has] + (counts[has] - 1) // 2
    hi = starts[has] + counts[has] // 2
    out[has] = (ordered[lo].astype(np.float64) + ordered[hi]) / 2
    return out


def grouped_quantiles(key: np.ndarray, n_groups: int, values: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """(G, len(qs)) float64 quantiles per group with np.quantile's default (linear) interpolation; NaN if empty."""
    counts = np.bincount(key, minlength=n_groups)
    ordered = values[np.lexsort((values, key))].astype(np.float64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full((n_groups, len(qs)), np.nan)
    for j, q in enumerate(qs):  # linear interpolation between the order statistics at floor/ceil of q (n - 1)
        has = counts > 0
        pos = q * (counts[has] - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, counts[has] - 1)
        frac = pos - lo
        a, b = ordered[starts[has] + lo], ordered[starts[has] + hi]
        out[has, j] = a + (b - a) * frac
    return out


def group_stats(key: np.ndarray, n_groups: int, prob: np.ndarray) -> pd.DataFrame:
    """(G rows) count, mean_p, median_p, frac_below_0_1 of `prob` (N,) per group `key` (N,) int in [0, G)."""
    counts = np.bincount(key, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(key, weights=prob, minlength=n_groups) / counts
        below = np.bincount(key, weights=(prob < LOW_P).astype(np.float64), minlength=n_groups) / counts
    return pd.DataFrame({"count": counts.astype(np.int64), "mean_p": mean, "median_p": grouped_median(key, n_groups, prob),
                         "frac_below_0_1": below})


def position_bins(rel_position: np.ndarray, bins: int) -> np.ndarray:
    """(N,) int64 bin of each relative position in [0, 1]: floor(rel * bins), the last bin closed at 1."""
    return np.minimum((rel_position * bins).astype(np.int64), bins - 1)


def bin_edges_frame(bins: int) -> pd.DataFrame:
    edges = np.linspace(0.0, 1.0, bins + 1)
    return pd.DataFrame({"bin": np.arange(bins), "left": edges[:-1], "right": edges[1:]})


def nan_to_none(x):
    """A float, or None for NaN/inf (JSON has neither); numpy scalars become Python ones."""
    if x is None:
        return None
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else None


def jsonable(obj):
    """Plain JSON types all the way down: DataFrames become lists of records, NaN becomes None."""
    if isinstance(obj, pd.DataFrame):
        return [jsonable(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (str, type(None))):
        return obj
    if isinstance(obj, (np.generic, int, float, bool)):
        return nan_to_none(obj)
    raise TypeError(f"not JSON-able: {type(obj).__name__}")
