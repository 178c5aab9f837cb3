"""Offline against online masks: how many targets change side of a probability threshold when
the probabilities come from a rescore (B) instead of the stored scoring (A).

ProFit and Beyond Log Likelihood threshold tokens by the *current* p; tokensft stores p⁰ once and
masks by it. After training, a rescore tells how far the two masks have drifted apart:

    drift = mask_drift(load_targets("scored/"), load_targets("rescored/"))
    drift["masks"]         # per threshold: targets, kept under A, kept under B, flipped (fraction)
    drift["by_position"]   # flipped fraction per relative-position bin

Thresholds: every `prob>=T` / `prob<=T` mask stored in A from the scorer's probabilities, plus
`prob>=T` for T in `thresholds` (0.1 and 0.2 by default: ProFit's and BLL's). A target is kept
under a side when its log-prob compares with log T as the stored masks compare it (core.masks).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tokensft.analysis.compare import align
from tokensft.analysis.tables import bin_edges_frame, position_bins
from tokensft.analysis.targets import Targets
from tokensft.core.masks import MaskSpec, log_threshold, parse_mask

DEFAULT_THRESHOLDS = (0.1, 0.2)


def drift_specs(a: Targets, thresholds=DEFAULT_THRESHOLDS) -> list[MaskSpec]:
    """The thresholds to measure: A's stored scorer masks of the prob>= / prob<= kind, then the defaults."""
    stored = [parse_mask(m["spec"]) for m in a.meta.get("enrichment", {}).get("masks", {}).values()]
    specs = [m for m in stored if m.source == "scorer" and m.rule in ("prob>=", "prob<=")]
    specs += [parse_mask(f"prob>={t}") for t in thresholds]
    return list(dict.fromkeys(specs))  # in order, each once


def kept(spec: MaskSpec, logprob: np.ndarray) -> np.ndarray:
    """(N,) bool: the targets `spec` keeps, from their log-probs."""
    threshold = log_threshold(spec.params[0])
    return logprob >= threshold if spec.rule == "prob>=" else logprob <= threshold


def mask_drift(a: Targets, b: Targets, thresholds=DEFAULT_THRESHOLDS, bins: int = 10) -> dict:
    """{"masks": DataFrame, "by_position": DataFrame} over the targets a and b share (see the module docstring).

    masks: spec, targets, kept_a, kept_b (fractions), flipped (fraction of targets on different sides),
    dropped (kept under A, not under B), added (kept under B, not under A).
    by_position: spec, bin, left, right, count, flipped.
    """
    _, _, ta, tb = align(a, b)
    lp_a, lp_b = a.logprob[ta], b.logprob[tb]
    pos = position_bins(a.rel_position[ta], bins)
    counts = np.bincount(pos, minlength=bins)
    rows, by_position = [], []
    for spec in drift_specs(a, thresholds):
        in_a, in_b = kept(spec, lp_a), kept(spec, lp_b)
        flipped = in_a != in_b
        n = len(ta)
        rows.append({"spec": spec.spec, "targets": n, "kept_a": in_a.mean() if n else np.nan,
                     "kept_b": in_b.mean() if n else np.nan, "flipped": flipped.mean() if n else np.nan,
                     "dropped": (in_a & ~in_b).mean() if n else np.nan, "added": (in_b & ~in_a).mean() if n else np.nan})
        with np.errstate(invalid="ignore", divide="ignore"):
            per_bin = np.bincount(pos, weights=flipped.astype(np.float64), minlength=bins) / counts
        by_position.append(bin_edges_frame(bins).assign(spec=spec.spec, count=counts, flipped=per_bin))
    columns = ["spec", "bin", "left", "right", "count", "flipped"]
    frame = pd.concat(by_position, ignore_index=True)[columns] if by_position else pd.DataFrame(columns=columns)
    return {"masks": pd.DataFrame(rows), "by_position": frame}
