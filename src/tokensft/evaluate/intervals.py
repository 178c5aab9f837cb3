"""Intervals and paired verdicts for accuracies: the questions are the sample.

    wilson(right, n)                          # 95% interval of one draw per question (Wilson score)
    cluster_bootstrap(scores, seed)           # 95% interval of a mean over questions, each question's
                                              #   draws (samples, seeds) kept together: (E, D) -> (lo, hi)
    paired = paired_bootstrap(a, b, seed)     # arm vs baseline on the same questions: difference, interval
    verdict(paired)                           # "better", "worse", "not distinguishable"
    mcnemar(b, c)                             # exact two-sided p of one binary outcome per question
    pass_at_k(n, c, k)                        # the unbiased pass@k of n draws with c right (Chen et al. 2021)

Following Miller 2024 ("Adding Error Bars to Evals"): a comparison of two models pairs them on
each question (their per-question difference), and several draws of one question are one cluster,
not independent samples. Bootstraps are percentile intervals over questions, with a seeded
generator, so a rerun gives the same interval. Every function is pure numpy.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # the two-sided 95% normal quantile
RESAMPLES = 2000


def wilson(right: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion right / n (None when n is 0)."""
    if n == 0:
        return None
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))  # (rounding at p = 0 or 1)


def _resampled_means(values: np.ndarray, seed: int, resamples: int) -> np.ndarray:
    """(resamples,) means of `values` (E,) over questions drawn with replacement."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(resamples, len(values)))  # (R, E)
    return values[picks].mean(axis=1)


def cluster_bootstrap(scores: np.ndarray, seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, float] | None:
    """95% percentile interval of the mean score when questions are resampled whole.

    scores: (E,) one score per question, or (E, D) its D draws (samples x seeds), averaged per
    question first: a question's draws are never split between resamples."""
    scores = np.asarray(scores, dtype=np.float64)
    per_question = scores.mean(axis=1) if scores.ndim == 2 else scores  # (E,)
    if len(per_question) == 0:
        return None
    means = _resampled_means(per_question, seed, resamples)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """Arm `a` against baseline `b` on the same questions: {"difference", "interval", "n"}.

    a, b: (E,) or (E, D) scores of the same E questions in the same order (D draws each: seeds x
    samples, averaged per question); the interval resamples the per-question differences."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired scores need the same questions: {a.shape[0]} against {b.shape[0]}")
    if a.shape[0] == 0:
        return {"difference": None, "interval": None, "n": 0}
    diff = (a.mean(axis=1) if a.ndim == 2 else a) - (b.mean(axis=1) if b.ndim == 2 else b)  # (E,)
    if len(diff) == 0:
        return {"difference": None, "interval": None, "n": 0}
    lo, hi = np.quantile(_resampled_means(diff, seed, resamples), [0.025, 0.975])
    return {"difference": float(diff.mean()), "interval": [float(lo), float(hi)], "n": int(len(diff))}


def verdict(paired: dict) -> str:
    """better / worse when the 95% interval of the difference excludes 0, else not distinguishable."""
    interval = paired.get("interval")
    if interval is None:
        return "not distinguishable"
    if interval[0] > 0:
        return "better"
    if interval[1] < 0:
        return "worse"
    return "not distinguishable"


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p: b questions only the arm got right, c only the baseline (1.0 when b + c is 0)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of k draws, taken without replacement from n draws of which
    c are right, is right: 1 - C(n - c, k) / C(n, k)."""
    if not 0 < k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= {n} draws")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
