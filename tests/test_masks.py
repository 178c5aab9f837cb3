"""Token masks against naive per-row, per-token Python reference implementations."""

from __future__ import annotations

import hashlib
import math
import re
from fractions import Fraction

import numpy as np
import pytest

from tokensft.core.errors import ConfigError
from tokensft.core.masks import mask_values, parse_mask, quantile_threshold, source_values

M64 = (1 << 64) - 1


def make_shard(seed: int, rows: int = 40, max_len: int = 30, ties: bool = False):
    """Random (logprob, offsets, ids): NaN at non-targets, empty / no-target / all-target rows included."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_len, rows)
    lengths[:2] = 0
    chunks = []
    for r, n in enumerate(lengths):
        lp = np.log(rng.uniform(1e-6, 1.0, n))
        if ties:
            lp = np.round(lp, 0)
        lp[rng.uniform(size=n) < 0.1] = 0.0
        target = rng.uniform(size=n) < rng.uniform(0.2, 0.9)
        target[:] = {3: False, 5: True}.get(r % 7, target)  # rows with no targets / all targets
        chunks.append(np.where(target, lp, np.nan))
    logprob = np.concatenate(chunks).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return logprob, offsets, [f"ex-{seed}-{r}" for r in range(rows)]


def naive_rows(logprob, offsets):
    """Per row, a list of (position, lp or None) with lp a Python float."""
    return [[(j, None if math.isnan(x) else float(x)) for j, x in enumerate(logprob[a:b].tolist())]
            for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def naive_threshold_mask(logprob, offsets, keep):
    """Per token: 1 if a target and keep(exp(lp)) else 0."""
    return [int(lp is not None and keep(math.exp(lp))) for row in naive_rows(logprob, offsets) for _, lp in row]


def naive_top_frac(logprob, offsets, f):
    """Per row: sort targets by (-lp, position) and keep the first ceil(F * n) exactly."""
    out = []
    for row in naive_rows(logprob, offsets):
        targets = sorted([(-lp, j) for j, lp in row if lp is not None])
        k = math.ceil(Fraction(repr(f)) * len(targets))
        kept = {j for _, j in targets[:k]}
        out += [int(j in kept) for j, _ in row]
    return out


def _splitmix64(x: int) -> int:
    """Scalar splitmix64 finalizer on Python ints mod 2^64."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def naive_random(logprob, offsets, ids, f, seed):
    """Per token: keep a target when its scalar hash of (seed, id, position) in [0, 1) is >= F."""
    out = []
    for row, example_id in zip(naive_rows(logprob, offsets), ids):
        h = int.from_bytes(hashlib.blake2b(example_id.encode(), digest_size=8).digest(), "little")
        h ^= _splitmix64((seed + 0x9E3779B97F4A7C15) & M64)
        for j, lp in row:
            u = (_splitmix64(_splitmix64((h + j * 0xD1B54A32D192ED03) & M64)) >> 11) / 2.0**53
            out.append(int(lp is not None and u >= f))
    return out


def masked(spec: str, logprob, offsets, ids, threshold=None) -> list[int]:
    """mask_values as a list, checking dtype and shape on the way."""
    values = mask_values(parse_mask(spec), logprob, offsets, ids, threshold)
    assert values.dtype == np.int8 and values.shape == logprob.shape
    return values.tolist()


CANONICAL = [
    ("prob>=0.1", "prob_ge_0.1"), ("prob<=0.25", "prob_le_0.25"), ("prob>=1", "prob_ge_1"),
    ("prob-between:0.2:0.8", "prob_between_0.2_0.8"), ("top-frac:0.5", "top_frac_0.5"),
    ("quantile>=0.3", "quantile_ge_0.3"), ("random:0.3:42", "random_0.3_seed42"),
    ("teacher:prob>=0.1", "teacher_prob_ge_0.1"), ("teacher:top-frac:0.5", "teacher_top_frac_0.5"),
    ("teacher:random:0.9:7", "teacher_random_0.9_seed7"), ("prob>=0.00001", "prob_ge_0.00001"),
    ("excess-top-frac:0.6", "excess_top_frac_0.6"), ("excess-quantile>=0.3", "excess_quantile_ge_0.3"),
]


@pytest.mark.parametrize("spec,name", CANONICAL)
def test_parse_round_trips(spec, name):
    """Spec, name and column all parse to the same MaskSpec whose canonical spec is the input."""
    parsed = parse_mask(spec)
    assert (parsed.spec, parsed.name, parsed.column) == (spec, name, f"mask_{name}")
    assert parse_mask(parsed.column) == parse_mask(parsed.name) == parse_mask(parsed.spec) == parsed
    assert re.fullmatch(r"mask_[a-z0-9_.]+", parsed.column), parsed.column


@pytest.mark.parametrize("text,canonical", [
    ("prob>=.5", "prob>=0.5"), ("prob>=0.10", "prob>=0.1"), (" prob <= 1.0 ", "prob<=1"),
    ("top-frac:1e-1", "top-frac:0.1"), ("random:0.50:007", "random:0.5:7"), ("prob>=-0", "prob>=0"),
])
def test_parse_normalizes(text, canonical):
    """Non-canonical spellings parse to the canonical spec, whose column is an identifier."""
    parsed = parse_mask(text)
    assert parsed.spec == canonical
    assert re.fullmatch(r"mask_[a-z0-9_.]+", parsed.column), parsed.column


@pytest.mark.parametrize("seed", [2**53 + 1, 2**64])
def test_parse_large_random_seed(seed):
    """A huge seed either round-trips exactly and masks, or is a ConfigError (never silently altered)."""
    try:
        parsed = parse_mask(f"random:0.5:{seed}")
    except ConfigError:
        return
    assert parsed.spec == f"random:0.5:{seed}"
    assert masked(parsed.spec, np.zeros(3, dtype=np.float32), np.array([0, 3]), ["a"]) is not None


@pytest.mark.parametrize("text,message", [
    ("prob>0.1", "not a mask spec"), ("top-k:5", "not a mask spec"), ("", "not a mask spec"),
    ("prob>=1.5", "outside [0, 1]"), ("prob>=-0.1", "outside [0, 1]"), ("random:1.5:3", "outside [0, 1]"),
    ("top-frac:2", "outside [0, 1]"), ("prob_ge_1.5", "outside [0, 1]"), ("quantile_ge_nan", "outside [0, 1]"),
    ("prob-between:0.8:0.2", "exceeds"), ("excess-prob>=0.1", "not a probability"),
    ("excess-random:0.5:1", "not a probability"),
    ("excess-top-frac:1.5", "outside [0, 1]"), ("excess-teacher:top-frac:0.5", "not a mask spec"),
])
def test_parse_rejects(text, message):
    """Bad specs raise ConfigError naming the spec and the problem."""
    with pytest.raises(ConfigError) as info:
        parse_mask(text)
    assert message in str(info.value) and repr(text) in str(info.value)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spec,keep", [
    ("prob>=0.1", lambda p: p >= 0.1), ("prob>=0.5", lambda p: p >= 0.5), ("prob<=0.2", lambda p: p <= 0.2),
    ("prob-between:0.05:0.6", lambda p: 0.05 <= p <= 0.6), ("prob>=0", lambda p: True),
    ("prob<=1", lambda p: True), ("prob>=1", lambda p: p >= 1.0),
])
def test_prob_masks_match_naive(seed, spec, keep):
    """Probability-threshold masks equal exp(lp) compared per token; non-targets are 0."""
    logprob, offsets, ids = make_shard(seed)
    assert masked(spec, logprob, offsets, ids) == naive_threshold_mask(logprob, offsets, keep)


def test_prob_boundaries():
    """p == T is kept by prob>=, prob<= and prob-between; T=1 keeps lp == 0; T=0 keeps every target."""
    logprob, offsets, ids = make_shard(3)
    i = int(np.flatnonzero((~np.isnan(logprob)) & (logprob < -0.5))[0])
    t = float(np.exp(np.float64(logprob[i])))
    for spec in (f"prob>={t!r}", f"prob<={t!r}", f"prob-between:{t!r}:{t!r}"):
        assert masked(spec, logprob, offsets, ids)[i] == 1, spec
    assert masked(f"prob-between:{t!r}:{t!r}", logprob, offsets, ids) == (logprob == logprob[i]).astype(int).tolist()
    one = masked("prob>=1", logprob, offsets, ids)
    assert one == (logprob == 0.0).astype(int).tolist() and sum(one) > 0
    assert masked("prob>=0", logprob, offsets, ids) == (~np.isnan(logprob)).astype(int).tolist()


def test_all_masked_and_empty():
    """T above every p gives all zeros; empty rows, empty shards and no targets work for every rule."""
    logprob = np.array([-3.0, np.nan, -2.0, -1.0], dtype=np.float32)
    offsets, ids = np.array([0, 0, 2, 2, 4, 4]), ["a", "b", "c", "d", "e"]
    assert masked("prob>=0.5", logprob, offsets, ids) == [0, 0, 0, 0]
    empty = np.zeros(0, dtype=np.float32)
    for spec in ("prob>=0.1", "prob<=0.1", "prob-between:0.1:0.2", "top-frac:0.5", "random:0.5:1"):
        assert masked(spec, logprob[:0], np.array([0, 0, 0]), ["x", "y"]) == []
        assert masked(spec, empty, np.array([0]), []) == []
    assert masked("quantile>=0.5", empty, np.array([0]), [], threshold=quantile_threshold(empty, 0.5)) == []
    assert math.isnan(quantile_threshold(empty, 0.5))  # no targets: NaN threshold, keeps nothing
    no_targets = np.full(6, np.nan, dtype=np.float32)
    assert masked("quantile>=0.5", no_targets, np.array([0, 2, 6]), ["a", "b"], threshold=math.nan) == [0] * 6


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("f", [0.0, 0.1, 0.25, 0.5, 0.6, 0.9, 1.0])
def test_top_frac_matches_naive(seed, f):
    """top-frac equals the naive per-row sort by (-lp, position), with many ties."""
    logprob, offsets, ids = make_shard(seed, ties=True)
    assert masked(f"top-frac:{f}", logprob, offsets, ids) == naive_top_frac(logprob, offsets, f)


@pytest.mark.parametrize("f,n,k", [(0.6, 10, 6), (0.5, 3, 2), (0.0, 5, 0), (1.0, 7, 7), (0.3, 10, 3),
                                   (0.7, 10, 7), (1e-06, 1, 1), (1e-06, 4, 1), (1e-10, 3, 1)])
def test_top_frac_counts_and_ties(f, n, k):
    """A row of n equal targets keeps exactly ceil(F * n), the earliest ones."""
    logprob = np.full(n + 2, -0.7, dtype=np.float32)
    logprob[[0, n + 1]] = np.nan
    want = [0] + [1] * k + [0] * (n - k) + [0]
    assert masked(f"top-frac:{f!r}", logprob, np.array([0, n + 2]), ["row"]) == want


@pytest.mark.parametrize("q", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0, 1 - 1e-10])
@pytest.mark.parametrize("n", [1, 2, 11, 101, 1000])
def test_quantile_threshold_is_order_statistic(q, n):
    """The threshold is sorted(target lps)[floor(Q * (N - 1))] and the mask is lp >= threshold."""
    rng = np.random.default_rng(n)
    logprob = np.log(rng.uniform(1e-6, 1, n + 5)).astype(np.float32)
    logprob[rng.permutation(n + 5)[:5]] = np.nan
    targets = [float(x) for x in logprob.tolist() if not math.isnan(x)]
    want = sorted(targets)[math.floor(Fraction(repr(q)) * (n - 1))]
    t = quantile_threshold(logprob[~np.isnan(logprob)], q)
    assert t == want
    got = masked(f"quantile>={q!r}", logprob, np.array([0, n + 5]), ["r"], threshold=t)
    assert got == [int(not math.isnan(x) and x >= want) for x in logprob.tolist()]


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_quantile_keeps_about_one_minus_q(q):
    """On 100k distinct target probabilities, quantile>=Q keeps 1 - Q of them."""
    logprob = np.log(np.random.default_rng(7).uniform(1e-6, 1, 120_000)).astype(np.float32)
    logprob[::6] = np.nan
    targets = logprob[~np.isnan(logprob)]
    t = quantile_threshold(targets, q)
    got = np.array(masked(f"quantile>={q}", logprob, np.arange(0, 120_001, 60), [str(i) for i in range(2000)], t))
    assert len(np.unique(targets)) > 0.99 * len(targets)
    assert abs(got.sum() / len(targets) - (1 - q)) < 0.001


@pytest.mark.parametrize("f,seed", [(0.3, 42), (0.5, 0), (0.9, 2**40)])
def test_random_matches_naive_scalar_hash(f, seed):
    """random:F:SEED equals a scalar per-token re-implementation of the documented hash."""
    logprob, offsets, ids = make_shard(4)
    assert masked(f"random:{f}:{seed}", logprob, offsets, ids) == naive_random(logprob, offsets, ids, f, seed)


def test_random_reproducible_and_shard_independent():
    """Same inputs give the same mask; splitting rows into shards or reordering rows changes nothing."""
    logprob, offsets, ids = make_shard(5)
    whole = masked("random:0.4:9", logprob, offsets, ids)
    assert whole == masked("random:0.4:9", logprob.copy(), offsets.copy(), list(ids))
    cut = 17
    a, b = offsets[: cut + 1], offsets[cut:] - offsets[cut]
    first = masked("random:0.4:9", logprob[: offsets[cut]], a, ids[:cut])
    second = masked("random:0.4:9", logprob[offsets[cut]:], b, ids[cut:])
    assert first + second == whole
    order = list(range(len(ids)))[::-1]
    parts = [logprob[offsets[r]: offsets[r + 1]] for r in order]
    rev_offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
    rev = masked("random:0.4:9", np.concatenate(parts), rev_offsets, [ids[r] for r in order])
    assert sum((rev[rev_offsets[i]: rev_offsets[i + 1]] for i in range(len(order))[::-1]), []) == whole
    assert masked("random:0.4:10", logprob, offsets, ids) != whole


@pytest.mark.parametrize("f", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_random_drop_rate(f):
    """On ~100k targets the drop rate is within 4 sigma of F (exact for F=0 keep-all, F=1 drop-all)."""
    logprob, offsets, ids = make_shard(6, rows=6000, max_len=60)
    n = int((~np.isnan(logprob)).sum())
    kept = sum(masked(f"random:{f}:123", logprob, offsets, ids))
    assert n > 90_000
    assert abs((n - kept) / n - f) <= 4 * math.sqrt(f * (1 - f) / n)


def excess_shard(seed: int, ties: bool = False):
    """A shard's scorer and teacher log-probs (NaN at the same non-targets) and its offsets and ids."""
    logprob, offsets, ids = make_shard(seed, ties=ties)
    rng = np.random.default_rng(seed + 100)
    teacher = np.log(rng.uniform(1e-6, 1.0, len(logprob))).astype(np.float32)
    if ties:
        teacher = np.round(teacher, 0)
    teacher[np.isnan(logprob)] = np.nan
    return {"logprob": logprob, "teacher_logprob": teacher}, offsets, ids


def naive_excess(flat) -> list[float | None]:
    """Rho-1's excess loss of each target, (-log p_scorer) - (-log p_ref), at float32 precision."""
    return [None if math.isnan(s) else float(np.float32(t) - np.float32(s))
            for s, t in zip(flat["logprob"].tolist(), flat["teacher_logprob"].tolist())]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("f", [0.0, 0.25, 0.6, 0.7, 1.0])
@pytest.mark.parametrize("ties", [False, True])
def test_excess_top_frac_is_a_naive_rho1_per_sequence(seed, f, ties):
    """excess-top-frac:F keeps, per row, the ceil(F * n) targets of largest excess loss (ties: earlier)."""
    flat, offsets, ids = excess_shard(seed, ties)
    spec = parse_mask(f"excess-top-frac:{f}")
    assert spec.reads == ("logprob", "teacher_logprob") and spec.source == "excess"
    scores = naive_excess(flat)
    want = []
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        row = [(j, scores[j]) for j in range(a, b) if scores[j] is not None]
        kept = {j for j, _ in sorted(row, key=lambda x: (-x[1], x[0]))[:math.ceil(Fraction(repr(f)) * len(row))]}
        want += [int(j in kept) for j in range(a, b)]
    ranked = source_values(spec, flat)
    assert [None if math.isnan(x) else x for x in ranked.tolist()] == scores
    assert mask_values(spec, ranked, offsets, ids).tolist() == want


@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.95, 1.0])
def test_excess_quantile_is_the_dataset_wide_order_statistic(q):
    flat, offsets, ids = excess_shard(2)
    scores = naive_excess(flat)
    at = sorted(x for x in scores if x is not None)
    threshold = at[math.floor(Fraction(repr(q)) * (len(at) - 1))]
    spec = parse_mask(f"excess-quantile>={q}")
    ranked = source_values(spec, flat)
    t = quantile_threshold(ranked[~np.isnan(ranked)], q)
    assert t == threshold
    assert mask_values(spec, ranked, offsets, ids, t).tolist() == [int(x is not None and x >= threshold) for x in scores]
