"""Intervals, paired verdicts and sampled scores against naive implementations on synthetic
outcomes, the degenerate all-right / all-wrong cases included."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tokensft.evaluate import intervals
from tokensft.evaluate.generate import _pick
from tokensft.evaluate.scores import eval_scores


def test_wilson_equals_its_formula_and_stays_in_zero_one():
    for right, n in [(0, 10), (3, 10), (10, 10), (1, 1), (37, 64)]:
        p, z = right / n, 1.959963984540054
        centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
        lo, hi = intervals.wilson(right, n)
        assert lo == pytest.approx(max(0, centre - half)) and hi == pytest.approx(min(1, centre + half))
        assert 0 <= lo <= p <= hi <= 1
    assert intervals.wilson(0, 0) is None
    assert intervals.wilson(0, 10)[0] == 0 and intervals.wilson(10, 10)[1] == 1


def _naive_bootstrap(per_question: np.ndarray, seed: int, resamples: int) -> tuple[float, float]:
    """A loop: draw the questions' indices, average their scores, take the 2.5% and 97.5% quantiles."""
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(resamples):
        picks = rng.integers(0, len(per_question), size=len(per_question))
        means.append(sum(per_question[i] for i in picks) / len(picks))
    return tuple(np.quantile(means, [0.025, 0.975]))


def test_cluster_bootstrap_equals_a_loop_and_keeps_a_questions_draws_together():
    rng = np.random.default_rng(1)
    draws = (rng.random((40, 4)) < np.linspace(0.1, 0.9, 40)[:, None]).astype(float)  # (E, D): questions differ
    lo, hi = intervals.cluster_bootstrap(draws, seed=3, resamples=500)
    assert (lo, hi) == pytest.approx(_naive_bootstrap(draws.mean(axis=1), 3, 500))
    assert intervals.cluster_bootstrap(draws, seed=3, resamples=500) == (lo, hi)  # seeded: the same again
    # the draws of a question are not independent samples: treating them so would narrow the interval
    flat_lo, flat_hi = intervals.cluster_bootstrap(draws.reshape(-1), seed=3, resamples=500)
    assert flat_hi - flat_lo < hi - lo
    assert intervals.cluster_bootstrap(np.ones((5, 3))) == (1.0, 1.0)
    assert intervals.cluster_bootstrap(np.zeros(7)) == (0.0, 0.0)
    assert intervals.cluster_bootstrap(np.zeros((0, 2))) is None


def test_paired_bootstrap_pairs_the_questions():
    rng = np.random.default_rng(2)
    base = (rng.random(60) < 0.5).astype(float)
    better = np.maximum(base, (rng.random(60) < 0.4).astype(float))  # right wherever the baseline was, and more
    paired = intervals.paired_bootstrap(better, base, seed=0, resamples=500)
    assert paired["difference"] == pytest.approx(better.mean() - base.mean())
    assert paired["interval"] == pytest.approx(list(_naive_bootstrap(better - base, 0, 500)))
    assert intervals.verdict(paired) == "better"
    assert intervals.verdict(intervals.paired_bootstrap(base, better, resamples=500)) == "worse"
    same = intervals.paired_bootstrap(base, base)
    assert same["interval"] == [0.0, 0.0] and intervals.verdict(same) == "not distinguishable"
    assert intervals.verdict(intervals.paired_bootstrap(np.ones(9), np.ones(9))) == "not distinguishable"
    straddles = {"difference": 0.1, "interval": [-0.05, 0.25], "n": 30}
    assert intervals.verdict(straddles) == "not distinguishable"
    with pytest.raises(ValueError, match="same questions"):
        intervals.paired_bootstrap(np.ones(3), np.ones(4))


def test_mcnemar_equals_the_binomial_sum():
    for b, c in [(0, 0), (5, 0), (3, 4), (12, 3), (1, 9)]:
        n = b + c
        naive = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) * 0.5**n for i in range(min(b, c) + 1)))
        assert intervals.mcnemar(b, c) == pytest.approx(naive)
    assert intervals.mcnemar(10, 0) < 0.01 and intervals.mcnemar(4, 4) == 1.0


def test_pass_at_k_equals_the_fraction_of_k_subsets_with_a_right_draw():
    for n, c in [(4, 0), (4, 1), (4, 4), (6, 2), (8, 3)]:
        draws = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(draws, k))
            assert intervals.pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    with pytest.raises(ValueError):
        intervals.pass_at_k(4, 1, 5)


def _rows(answers: list[list[tuple[str | None, bool]]]) -> list[dict]:
    return [{"id": f"q{i}", "sample": s, "answer": a, "correct": c, "verdict": "no_answer" if a is None else
             ("right" if c else "wrong"), "note": None} for i, draws in enumerate(answers) for s, (a, c) in enumerate(draws)]


def test_eval_scores_avg_pass_and_majority_from_the_rows():
    answers = [[("4", True), ("4", True), ("5", False), (None, False)],  # majority 4: right
               [("7", False), ("3", True), ("7", False), ("3", True)],  # tie 7/3: the earliest, 7: wrong
               [(None, False)] * 4,  # no answer at all: maj wrong
               [("1", True)] * 4]
    s = eval_scores(_rows(answers), samples=4, pass_k=[1, 2, 4], seed=0)
    right = np.array([[c for _, c in d] for d in answers], dtype=float)
    assert s["accuracy"] == pytest.approx(right.mean()) == s["avg@4"]["value"]
    for k in (1, 2, 4):
        naive = np.mean([intervals.pass_at_k(4, int(r.sum()), k) for r in right])
        assert s[f"pass@{k}"]["value"] == pytest.approx(naive)
    assert s["pass@1"]["value"] == pytest.approx(s["accuracy"])  # pass@1 is avg@N, as it must be
    assert s["maj@4"]["value"] == pytest.approx(2 / 4)
    assert s["outcomes"] == {"right": 8, "wrong": 3, "no_answer": 5, "timeout": 0}
    assert s["interval_method"].startswith("bootstrap over examples") and s["interval"][0] <= s["accuracy"]
    one = eval_scores(_rows([[("4", True)], [("5", False)], [(None, False)]]), samples=1, pass_k=[], seed=0)
    assert one["accuracy"] == pytest.approx(1 / 3) and one["interval"] == pytest.approx(list(intervals.wilson(1, 3)))
    assert "avg@1" not in one and "pass@1" not in one


def test_top_p_draws_only_from_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    for top_p, allowed in [(0.5, {0}), (0.7, {0, 1}), (0.81, {0, 1, 2}), (1.0, {0, 1, 2, 3})]:
        seen = {int(_pick(logits, 1.0, [torch.Generator().manual_seed(s)], top_p)) for s in range(300)}
        assert seen == allowed, (top_p, seen)
