"""Distributions of target-token probabilities: overview, histograms, CDF, entropy, position, token class.

All functions take a `Targets` (see targets.py) and return a dict or a pandas DataFrame; p is the
scorer's probability of each target, exp(logprob). Nothing here draws.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tokensft.analysis.tables import bin_edges_frame, group_stats, grouped_quantiles, position_bins
from tokensft.analysis.targets import Targets
from tokensft.analysis.token_classes import CLASSES, target_classes

LOG10_MIN = -8.0  # log10-histogram range [LOG10_MIN, 0]; lower probabilities are counted in the first bin


def overview(t: Targets) -> dict:
    """Counts (from the data; read/skipped from the metadata), model, tokenizer, render settings and enrichment."""
    meta, counts = t.meta, t.meta.get("counts", {})
    enrichment = meta.get("enrichment", {})
    skipped = counts.get("skipped", {})
    return {
        "path": t.path,
        "examples": t.num_examples,
        "tokens": int(t.examples["num_tokens"].sum()),
        "targets": t.num_targets,
        "examples_without_targets": int((t.examples["num_targets"] == 0).sum()),
        "truncated": int(t.examples["truncated"].sum()),
        "read": counts.get("read"),
        "skipped": int(sum(skipped.values())),
        "skipped_by_reason": dict(skipped),
        "model": meta.get("model", {}).get("name"),
        "model_hash": meta.get("model", {}).get("content_hash"),
        "tokenizer_fingerprint": meta.get("tokenizer_fingerprint"),
        "token_fingerprint": meta.get("token_fingerprint"),
        "dtype": meta.get("dtype"),
        "max_length": meta.get("max_length"),
        "top_k": meta.get("top_k", 0),
        "format": meta.get("render", {}).get("format"),
        "template": meta.get("render", {}).get("template"),
        "targets_rule": meta.get("render", {}).get("targets"),
        "input": meta.get("input", {}).get("path"),
        "masks": sorted(t.masks),
        "refs": sorted(enrichment.get("refs", {})),
        "teacher": (enrichment.get("teacher") or {}).get("model", {}).get("name"),
        "teacher_top_k": (enrichment.get("teacher") or {}).get("top_k"),
        "tokensft_version": meta.get("tokensft_version"),
        "finished": meta.get("finished"),
    }


def probability_histogram(t: Targets, bins: int = 20, log_bins: int = 16, log_min: float = LOG10_MIN) -> pd.DataFrame:
    """Target counts in `bins` equal bins of p over [0, 1] (scale "linear", p == 1 in the last bin) and in
    `log_bins` equal bins of log10 p over [log_min, 0] (scale "log10"; p < 10^log_min counted in the first).

    Columns: scale, bin, left, right, count, fraction (of all targets).
    """
    frames = []
    for scale, values, lo, n in (("linear", t.prob, 0.0, bins), ("log10", np.log10(np.maximum(t.prob, 1e-300)), log_min, log_bins)):
        edges = np.linspace(lo, 1.0 if scale == "linear" else 0.0, n + 1)
        index = np.clip(((values - lo) / (edges[-1] - lo) * n).astype(np.int64), 0, n - 1)  # closed at the top
        counts = np.bincount(index, minlength=n)
        frames.append(pd.DataFrame({"scale": scale, "bin": np.arange(n), "left": edges[:-1], "right": edges[1:],
                                    "count": counts, "fraction": counts / max(t.num_targets, 1)}))
    return pd.concat(frames, ignore_index=True)


def default_cdf_points() -> np.ndarray:
    """0, 10^-8 .. 1 in quarter decades, and 0.01 .. 1 in steps of 0.01 (sorted, unique)."""
    return np.unique(np.concatenate([[0.0], np.logspace(LOG10_MIN, 0, 33), np.linspace(0, 1, 101)]))


def cdf(t: Targets, points=None) -> pd.DataFrame:
    """Empirical CDF of target p: columns p, frac_at_most (fraction of targets with prob <= p), count_at_most."""
    points = default_cdf_points() if points is None else np.asarray(points, dtype=np.float64)
    count = np.searchsorted(np.sort(t.prob), points, side="right")
    return pd.DataFrame({"p": points, "frac_at_most": count / max(t.num_targets, 1), "count_at_most": count})


def entropy_vs_probability(t: Targets, bins: int = 20, sample: int = 20_000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(binned, scatter sample). binned: per linear p-bin: bin, left, right, count, mean_entropy, entropy_q10,
    entropy_median, entropy_q90. sample: at most `sample` targets drawn without replacement with
    np.random.default_rng(seed), in dataset order: example, position, p, entropy."""
    key = np.minimum((t.prob * bins).astype(np.int64), bins - 1)
    counts = np.bincount(key, minlength=bins)
    entropy = t.entropy.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(key, weights=entropy, minlength=bins) / counts
    q = grouped_quantiles(key, bins, entropy, (0.1, 0.5, 0.9))
    binned = bin_edges_frame(bins).assign(count=counts, mean_entropy=mean, entropy_q10=q[:, 0], entropy_median=q[:, 1],
                                          entropy_q90=q[:, 2])
    n = t.num_targets
    pick = np.arange(n) if n <= sample else np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    scatter = pd.DataFrame({"example": t.example[pick], "position": t.position[pick], "p": t.prob[pick], "entropy": entropy[pick]})
    return binned, scatter


def by_position(t: Targets, bins: int = 10) -> pd.DataFrame:
    """Per relative-position bin (rel_position in [0, 1], the last bin closed): bin, left, right, count, mean_p,
    median_p, frac_below_0_1 (p < 0.1). Empty bins have count 0 and NaN statistics."""
    stats = group_stats(position_bins(t.rel_position, bins), bins, t.prob)
    return pd.concat([bin_edges_frame(bins), stats], axis=1)


def by_class(t: Targets, classes: np.ndarray) -> pd.DataFrame:
    """Per token class (CLASSES order; `classes` from classify_vocab): class, count, share (of targets),
    mean_p, median_p, frac_below_0_1."""
    key = target_classes(classes, t.token_id, t.path).astype(np.int64)
    stats = group_stats(key, len(CLASSES), t.prob)
    share = stats["count"] / max(t.num_targets, 1)
    return pd.concat([pd.DataFrame({"class": CLASSES}), stats.assign(share=share)[["count", "share", "mean_p", "median_p",
                                                                                     "frac_below_0_1"]]], axis=1)


def extreme_examples(t: Targets, n: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(lowest, highest): the examples with the lowest / highest mean target p, n of each but at most half
    the examples with targets, so the two never overlap (a single example is in both). Examples without
    targets are left out; ties keep dataset order. Columns: row, id, num_targets, mean_p, mean_logprob,
    min_p, truncated."""
    frame = t.examples[t.examples["num_targets"] > 0]
    frame = frame.rename_axis("row").reset_index()[["row", "id", "num_targets", "mean_p", "mean_logprob", "min_p", "truncated"]]
    shown = min(n, max(1, len(frame) // 2))
    lowest = frame.sort_values("mean_p", kind="stable").head(shown).reset_index(drop=True)
    highest = frame.sort_values("mean_p", kind="stable", ascending=False).head(shown).reset_index(drop=True)
    return lowest, highest


QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def quantiles(t: Targets, qs: tuple[float, ...] = QUANTILES) -> pd.DataFrame:
    """Quantiles of target p (np.quantile, linear interpolation): columns q, p. NaN p when there are no targets."""
    values = np.quantile(t.prob, qs) if t.num_targets else np.full(len(qs), np.nan)
    return pd.DataFrame({"q": qs, "p": values})
