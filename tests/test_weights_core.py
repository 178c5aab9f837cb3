"""core.weights: the weight spec grammar (parse, canonical names, round trips) and its math against a
naive per-token loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokensft.core.errors import ConfigError
from tokensft.core.weights import parse_weight, weight_column_for, weight_values


@pytest.mark.parametrize("text, spec, column", [
    ("prob^1", "prob^1", "weight_prob_pow_1"),
    (" prob^0.50 ", "prob^0.5", "weight_prob_pow_0.5"),
    ("prob^1,clip:0.05:1", "prob^1,clip:0.05:1", "weight_prob_pow_1__clip_0.05_1"),
    ("excess", "excess", "weight_excess"),
    ("excess,clip:0:5,normalize:sequence", "excess,clip:0:5,normalize:sequence", "weight_excess__clip_0_5__norm_seq"),
    ("product:weight*prob>=0.1", "product:weight*mask_prob_ge_0.1", "weight_product_weight_x_mask_prob_ge_0.1"),
    ("product:weight*prob^1", "product:weight*weight_prob_pow_1", "weight_product_weight_x_weight_prob_pow_1"),
    ("product:weight*weight_prob_pow_1__clip_0_0.001", "product:weight*weight_prob_pow_1__clip_0_0.001",
     "weight_product_weight_x_weight_prob_pow_1~clip_0_0.001"),
])
def test_canonical_spec_and_column(text, spec, column):
    parsed = parse_weight(text)
    assert (parsed.spec, parsed.column) == (spec, column)
    assert parse_weight(parsed.spec) == parsed
    if parsed.term != "product":  # a name reads back to the same spec (products are given by spec)
        assert parse_weight(parsed.name) == parsed and parse_weight(parsed.column) == parsed


def test_a_products_modifiers_and_its_factors_modifiers_name_different_columns():
    clipped_product = parse_weight("product:weight*prob^1,clip:0:0.001")
    product_of_clipped = parse_weight("product:weight*weight_prob_pow_1__clip_0_0.001")
    assert clipped_product.column != product_of_clipped.column


def test_train_resolves_columns_names_and_specs_alike():
    assert weight_column_for("weight") == "weight"
    assert weight_column_for("weight_prob_pow_1") == weight_column_for("prob^1") == "weight_prob_pow_1"
    assert weight_column_for("prob^1,clip:0.05:1") == "weight_prob_pow_1__clip_0.05_1"


@pytest.mark.parametrize("text, says", [
    ("prob^-1", "must be >= 0"), ("prob^1,clip:2:1", "LO <= HI"), ("prob^1,norm", "not a modifier"),
    ("product:weight", "two or more factors"), ("product:weight*nothing-here", "names no weight or mask"),
    ("entropy", "not a weight"), ("prob^x", "not a weight spec"),
])
def test_bad_specs_say_what_is_wrong(text, says):
    with pytest.raises(ConfigError, match=says):
        parse_weight(text)


def _shard(seed: int = 0, rows: int = 6):
    """Flat columns of a small shard: log-probs NaN at non-targets, a mask, data weights, offsets."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 9, size=rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    target = rng.random(n) < 0.7
    target[offsets[:-1]] = False  # position 0 of each row is never a target
    nan = np.where(target, 0.0, np.nan)
    flat = {
        "logprob": (np.log(rng.uniform(0.01, 1.0, n)) + nan).astype(np.float32),
        "teacher_logprob": (np.log(rng.uniform(0.01, 1.0, n)) + nan).astype(np.float32),
        "weight": (rng.uniform(0.0, 2.0, n) + nan).astype(np.float32),
        "mask_prob_ge_0.1": (target & (rng.random(n) < 0.5)).astype(np.int8),
    }
    return flat, offsets, target


def _naive(text: str, flat: dict, offsets: np.ndarray, target: np.ndarray) -> list[float]:
    """The weight token by token, row by row, in Python floats."""
    head, *mods = text.split(",")
    out = []
    for r in range(len(offsets) - 1):
        row = []
        for i in range(offsets[r], offsets[r + 1]):
            if not target[i]:
                row.append(math.nan)
                continue
            if head.startswith("prob^"):
                w = math.exp(float(head[5:]) * float(flat["logprob"][i]))
            elif head == "excess":
                w = float(flat["teacher_logprob"][i]) - float(flat["logprob"][i])
            else:  # product of the data weight and the stored mask
                w = float(flat["weight"][i]) * float(flat["mask_prob_ge_0.1"][i])
            row.append(w)
        for mod in mods:
            if mod.startswith("clip:"):
                lo, hi = map(float, mod[5:].split(":"))
                row = [x if math.isnan(x) else min(max(x, lo), hi) for x in row]
            else:
                kept = [x for x in row if not math.isnan(x)]
                mean = sum(kept) / len(kept) if kept else 0.0
                row = [x if math.isnan(x) or mean == 0 else x / mean for x in row]
        out.extend(row)
    return out


@pytest.mark.parametrize("text", ["prob^1", "prob^0.5", "prob^2,clip:0.05:1", "excess", "excess,clip:0:3",
                                  "excess,clip:0:3,normalize:sequence", "prob^1,normalize:sequence",
                                  "product:weight*prob>=0.1", "product:weight*prob>=0.1,normalize:sequence"])
@pytest.mark.parametrize("seed", [0, 1])
def test_values_equal_a_naive_loop(text, seed):
    flat, offsets, target = _shard(seed)
    got = weight_values(parse_weight(text), flat, offsets, target)
    assert got.dtype == np.float32 and got.shape == target.shape
    np.testing.assert_allclose(got, np.array(_naive(text, flat, offsets, target), dtype=np.float64), rtol=2e-6, atol=1e-7)
    assert np.isnan(got[~target]).all() and np.isfinite(got[target]).all()


def test_normalized_rows_have_mean_one_and_zero_rows_stay_zero():
    flat, offsets, target = _shard(3, rows=8)
    flat["mask_prob_ge_0.1"][offsets[0]:offsets[1]] = 0  # row 0 keeps nothing: its product is all zeros
    got = weight_values(parse_weight("product:weight*prob>=0.1,normalize:sequence"), flat, offsets, target)
    for r in range(len(offsets) - 1):
        values = got[offsets[r]:offsets[r + 1]][target[offsets[r]:offsets[r + 1]]]
        if len(values) and values.sum() > 0:
            assert values.mean() == pytest.approx(1.0, rel=1e-6)
    assert (got[offsets[0]:offsets[1]][target[offsets[0]:offsets[1]]] == 0).all()


def test_a_negative_mean_cannot_be_normalized_and_infinite_weights_are_refused():
    flat, offsets, target = _shard(4)
    flat["teacher_logprob"] = np.where(target, -50.0, np.nan).astype(np.float32)  # excess far below 0
    with pytest.raises(ConfigError, match="needs non-negative weights"):
        weight_values(parse_weight("excess,normalize:sequence"), flat, offsets, target)
    flat["logprob"][np.flatnonzero(target)[0]] = -np.inf
    with pytest.raises(ConfigError, match="not finite"):
        weight_values(parse_weight("excess"), flat, offsets, target)
