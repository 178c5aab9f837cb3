"""tokensft.analysis against an independent computation: every number of `summary()` and of the
DataFrames is recomputed with plain Python loops over `datasets.load_from_disk(dir)` rows
(naive_analysis.py), on
datasets scored and enriched by the CLI with the tiny models (masks, a reference, a teacher), a
dataset with none of them (truncated and skipped rows), and one- and few-example datasets."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_jsonl
from naive_analysis import assert_matches, bin_of, example_means, mean, naive_kl, naive_summary, naive_targets, rows_of
from test_enrich import CHATS, teacher_dir  # noqa: F401  (a teacher: another model with the bpe tokenizer)
from test_score_cli import QA
from transformers import AutoTokenizer

import tokensft
from tokensft.analysis import (
    CLASSES,
    REFERENCE_POINTS,
    by_class,
    by_position,
    cdf,
    classify_text,
    classify_vocab,
    continuum,
    entropy_vs_probability,
    extreme_examples,
    load_targets,
    mask_stats,
    recommend,
    reference_stats,
    summary,
    teacher_kl,
    teacher_stats,
)
from tokensft.cli import main
from tokensft.core.errors import ConfigError
from tokensft.train.objectives import parse_objective

LONG_AND_INVALID = [{"question": "Hello there! Hi, how can I help you today? Tell me a joke about cats, and another one.",
                     "answer": "No."}, {"foo": 1}]


def score(root: Path, name: str, model: Path, records: list[dict], *extra: str) -> Path:
    data = write_jsonl(root / f"{name}.jsonl", records)
    out = root / name
    assert main(["score", str(data), "--model", str(model), "-o", str(out), "-q", "--shard-size", "3", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_dirs, teacher_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("analysis")
    bpe, sp = str(tiny_dirs["bpe"]), str(tiny_dirs["sp"])
    return {
        # top-k, two masks, a reference in another tokenizer and template, a teacher
        "full": score(root, "full", tiny_dirs["bpe"], CHATS, "--top-k", "4", "--mask", "prob>=0.005", "--mask", "top-frac:0.5",
                      "--ref", sp, "--teacher", str(teacher_dir), "--teacher-top-k", "3"),
        # no top-k, no enrichment; some rows truncated, some skipped (no targets left after truncation)
        "plain": score(root, "plain", tiny_dirs["sp"], QA + LONG_AND_INVALID, "--max-length", "30", "--skip-invalid"),
        # every row skipped: an empty dataset (with a mask column) still analyses
        "empty": score(root, "empty", tiny_dirs["sp"], QA + LONG_AND_INVALID, "--max-length", "3", "--skip-invalid",
                       "--top-k", "2", "--mask", "prob>=0.1"),
        "single": score(root, "single", tiny_dirs["bpe"], [{"text": "Hi"}]),
        "texts": score(root, "texts", tiny_dirs["bpe"], [{"text": "Hi"}, {"text": "The answer is 4."}, {"text": "4"}]),
        "rescored": score(root, "rescored", teacher_dir, CHATS, "--top-k", "4"),
        "subset": score(root, "subset", teacher_dir, CHATS[2:6]),
        "sp": score(root, "sp", tiny_dirs["sp"], CHATS),
        # the scorer as its own teacher: agreement 1, KL ~0; and a teacher without the scorer's top-k
        "self_teacher": score(root, "self_teacher", tiny_dirs["bpe"], CHATS, "--top-k", "4", "--teacher", bpe,
                              "--teacher-top-k", "4"),
        "no_topk_teacher": score(root, "no_topk_teacher", tiny_dirs["bpe"], CHATS, "--teacher", str(teacher_dir),
                                 "--teacher-top-k", "3", "--ref", bpe),
    }


def classes_for(directory: Path, tiny_dirs):
    meta = tokensft.load_metadata(directory)
    return classify_vocab(AutoTokenizer.from_pretrained(meta["model"]["name"]))


def check_summary(directory: Path, classes) -> dict:
    got = summary(load_targets(directory), classes)
    json.dumps(got, allow_nan=False)  # plain JSON, no NaN
    expected = naive_summary(directory, classes)
    rec = got["recommendation"]
    mean_p = expected["continuum"]["mean_p"]
    assert rec["regime"] == ("model-strong" if mean_p >= 0.65 else "model-weak" if mean_p < 0.25 else "intermediate")
    assert f"{mean_p:.3f}" in rec["text"]
    expected["recommendation"] = rec  # its wording is tested in test_recommendation_*
    assert_matches(got, expected)
    return got


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("name", ["full", "plain", "single", "texts", "self_teacher", "no_topk_teacher"])
def test_summary_equals_naive(scored, tiny_dirs, name):
    got = check_summary(scored[name], classes_for(scored[name], tiny_dirs))
    meta = tokensft.load_metadata(scored[name])
    assert got["overview"]["tokens"] == meta["counts"]["tokens"] and got["overview"]["targets"] == meta["counts"]["targets"]
    for row in got["masks"]["overall"] if got["masks"] else []:
        assert row["kept_fraction"] == pytest.approx(row["metadata_kept_fraction"], rel=1e-12)


def test_summary_without_classes_or_enrichment(scored):
    got = check_summary(scored["plain"], None)
    assert got["by_class"] is None and got["masks"] is None and got["references"] is None and got["teacher"] is None
    assert got["overview"]["truncated"] > 0 and got["overview"]["skipped"] > 0  # the dataset exercises both counts
    full = summary(load_targets(scored["full"]))
    assert full["masks"] is not None and "by_class" not in full["masks"]


def test_empty_dataset_gives_a_valid_summary(scored, tiny_dirs):
    t = load_targets(scored["empty"])
    assert t.num_examples == 0 and t.num_targets == 0 and list(t.masks) == ["mask_prob_ge_0.1"]
    got = summary(t, classes_for(scored["empty"], tiny_dirs))
    json.dumps(got, allow_nan=False)
    assert got["overview"]["skipped"] == 9 and got["continuum"]["mean_p"] is None and got["recommendation"]["regime"] is None
    assert got["masks"]["overall"][0]["kept_fraction"] is None and got["extremes"] == {"lowest": [], "highest": []}
    assert all(c["count"] == 0 for c in got["by_class"]) and sum(got["histogram"]["linear"]["counts"]) == 0


def test_flat_arrays_equal_rows(scored):
    for name in ("full", "no_topk_teacher"):
        t = load_targets(scored[name])
        targets = naive_targets(rows_of(scored[name]))
        assert t.num_targets == len(targets)
        np.testing.assert_array_equal(t.example, [x["example"] for x in targets])
        np.testing.assert_array_equal(t.position, [x["position"] for x in targets])
        np.testing.assert_array_equal(t.token_id, [x["token"] for x in targets])
        np.testing.assert_array_equal(t.rel_position, [x["rel"] for x in targets])
        np.testing.assert_array_equal(t.logprob, [x["lp"] for x in targets])
        np.testing.assert_array_equal(t.entropy, np.float32([x["entropy"] for x in targets]))
        np.testing.assert_array_equal(t.rank, [x["rank"] for x in targets])
        for mask, values in t.masks.items():
            np.testing.assert_array_equal(values, [bool(x["masks"][mask]) for x in targets])
        np.testing.assert_array_equal(t.teacher_logprob, [x["teacher_logprob"] for x in targets])
        np.testing.assert_array_equal(t.teacher_topk_ids, [x["teacher_topk_ids"] for x in targets])
        np.testing.assert_array_equal(t.teacher_topk_logprobs, np.float16([x["teacher_topk_logprobs"] for x in targets]))
        if name == "full":
            np.testing.assert_array_equal(t.topk_ids, [x["topk_ids"] for x in targets])
            np.testing.assert_array_equal(t.topk_logprobs, np.float16([x["topk_logprobs"] for x in targets]))
        else:
            assert t.topk_ids is None and not t.masks
    t = load_targets(scored["full"], topk=False)
    assert t.topk_ids is None and t.teacher_topk_ids is None and t.teacher_logprob is not None


def test_rel_position_single_and_few_targets(scored):
    t = load_targets(scored["texts"])
    assert t.examples["num_targets"].tolist() == [1, 6, 1]  # "Hi" + end, "The answer is 4." + end, "4" + end
    np.testing.assert_allclose(t.rel_position, [0.0, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.0])
    single = load_targets(scored["single"])
    assert single.num_examples == 1 and single.num_targets == 1 and single.rel_position.tolist() == [0.0]
    frame = by_position(single)
    assert frame["count"].tolist() == [1] + [0] * 9 and frame["mean_p"].iloc[0] == pytest.approx(single.prob[0])
    lowest, highest = extreme_examples(single)
    assert lowest["id"].tolist() == highest["id"].tolist() == single.examples["id"].tolist()


def test_dataframes_equal_naive(scored, tiny_dirs):
    directory = scored["full"]
    t, rows = load_targets(directory), rows_of(directory)
    targets = naive_targets(rows)
    ps = sorted(x["p"] for x in targets)
    points = [0.0, 1e-4, 5e-4, 0.001, 0.0031, 0.01, 0.5, 1.0]
    frame = cdf(t, points)
    assert frame["count_at_most"].tolist() == [sum(p <= x for p in ps) for x in points]
    assert cdf(t)["frac_at_most"].iloc[-1] == 1.0 and cdf(t)["frac_at_most"].is_monotonic_increasing
    binned, sample = entropy_vs_probability(t, bins=20, sample=50, seed=3)
    assert len(sample) == 50 and sample.equals(entropy_vs_probability(t, sample=50, seed=3)[1])
    by_key = {(x["example"], x["position"]): x for x in targets}
    for row in sample.itertuples():
        x = by_key[(row.example, row.position)]
        assert row.p == pytest.approx(x["p"], rel=1e-12) and row.entropy == pytest.approx(x["entropy"])
    assert len(entropy_vs_probability(t, sample=10**6)[1]) == len(targets)  # all when fewer than `sample`
    classes = classes_for(directory, tiny_dirs)
    frame = by_class(t, classes)
    assert frame["count"].sum() == len(targets) and frame["share"].sum() == pytest.approx(1.0)
    masks = mask_stats(t, classes, bins=4)
    for mask in t.masks:
        part = masks["by_position"][masks["by_position"]["mask"] == mask]
        assert part["kept"].tolist() == [sum(x["masks"][mask] for x in targets if bin_of(x["rel"], 0, 1, 4) == b) for b in range(4)]
    refs = reference_stats(t)
    for row, e in zip(refs["examples"].itertuples(), example_means(rows, targets)):
        r = rows[e["row"]]["ref_mean_logprob"]
        assert row.poft_weight == pytest.approx(1 / (1 + math.exp(e["mean_logprob"] - r)), rel=1e-12)
        assert row.delta == pytest.approx(e["mean_logprob"] - r, rel=1e-12)
    teacher = teacher_stats(t)["per_example"]
    for row, e in zip(teacher.itertuples(), example_means(rows, targets)):
        xs = [x for x in targets if x["example"] == e["row"]]
        assert row.kl_mean == pytest.approx(mean(naive_kl(x)[0] for x in xs), rel=1e-9)
        assert row.teacher_mean_p == pytest.approx(mean(math.exp(x["teacher_logprob"]) for x in xs), rel=1e-9)
        assert row.top1_agreement == mean(float(x["teacher_topk_ids"][0] == x["topk_ids"][0]) for x in xs)


def test_teacher_equal_to_scorer_agrees_fully(scored):
    stats = teacher_stats(load_targets(scored["self_teacher"]))["summary"]
    assert stats["top1_agreement"] == 1.0 and stats["agreement_method"] == "topk"
    assert abs(stats["kl_mean"]) < 1e-3 and stats["kl_unknown_mass"] == 0.0  # float16 rounding only
    assert stats["target_logprob_gap"] == pytest.approx(0.0, abs=1e-4)
    bounds = teacher_stats(load_targets(scored["no_topk_teacher"]))["summary"]
    assert bounds["top1_agreement"] is None and bounds["kl_mean"] is None and bounds["agreement_method"] == "bounds"
    assert 0.0 <= bounds["top1_agreement_bounds"][0] <= bounds["top1_agreement_bounds"][1] <= 1.0
    assert teacher_stats(load_targets(scored["plain"])) is None and reference_stats(load_targets(scored["plain"])) is None
    assert mask_stats(load_targets(scored["plain"])) == {}


def test_kl_rest_cell_by_hand(scored):
    """One target, edited by hand: the teacher's top-k holds a scorer top-k id, an id outside it, and the target."""
    t = load_targets(scored["full"])
    half = np.float16
    for name in ("example", "position", "rel_position", "entropy", "rank"):
        setattr(t, name, getattr(t, name)[:1])
    t.topk_ids, t.topk_logprobs = np.array([[7, 8, 9, 10]], np.int32), np.log(half([[0.4, 0.2, 0.1, 0.05]])).astype(half)
    t.teacher_topk_ids = np.array([[8, 99, 42]], np.int32)
    t.teacher_topk_logprobs = np.log(half([[0.5, 0.3, 0.1]])).astype(half)
    t.token_id, t.logprob = np.array([42], np.int32), np.array([math.log(0.01)])
    t.prob, t.teacher_logprob = np.exp(t.logprob), np.array([math.log(0.1)])
    q = np.exp(t.teacher_topk_logprobs[0].astype(np.float64))  # 0.5, 0.3, 0.1 as stored
    p8 = np.exp(np.float64(t.topk_logprobs[0, 1]))
    q_rest, p_rest = 1 - q[0] - q[2], 1 - p8 - 0.01  # id 99 (scorer p unknown) is in the rest cell
    expected = float(q[0] * math.log(q[0] / p8) + q[2] * math.log(q[2] / 0.01) + q_rest * math.log(q_rest / p_rest))
    kl, unknown = teacher_kl(t)
    assert kl[0] == pytest.approx(expected, rel=1e-12) and unknown[0] == pytest.approx(q[1], rel=1e-12)
    assert expected == pytest.approx(0.5 * math.log(2.5) + 0.1 * math.log(10) + 0.4 * math.log(0.4 / 0.79), rel=2e-3)


def test_kl_is_a_lower_bound_of_the_full_kl(scored):
    """Random full distributions over a small vocabulary, stored as top-k (the scorer's K smaller than the
    teacher's): the estimate never exceeds the exact full-vocabulary KL(teacher || scorer)."""
    t = load_targets(scored["full"])
    rng = np.random.default_rng(0)
    n, vocab, k_teacher, k_scorer = 400, 30, 8, 3
    q_full = rng.dirichlet(np.full(vocab, 0.3), size=n)  # (n, V)
    p_full = 0.6 * q_full + 0.4 * rng.dirichlet(np.full(vocab, 0.3), size=n)  # related models: top-k overlap
    tokens = rng.integers(0, vocab, size=n)
    for name in ("example", "position", "rel_position", "entropy", "rank"):
        setattr(t, name, np.resize(getattr(t, name), n))
    top_q, top_p = np.argsort(-q_full, axis=1)[:, :k_teacher], np.argsort(-p_full, axis=1)[:, :k_scorer]
    t.teacher_topk_ids = top_q.astype(np.int32)
    t.teacher_topk_logprobs = np.log(np.take_along_axis(q_full, top_q, axis=1)).astype(np.float16)
    t.topk_ids, t.topk_logprobs = top_p.astype(np.int32), np.log(np.take_along_axis(p_full, top_p, axis=1)).astype(np.float16)
    t.token_id, t.logprob = tokens.astype(np.int32), np.log(p_full[np.arange(n), tokens])
    t.teacher_logprob = np.log(q_full[np.arange(n), tokens])
    exact = (q_full * np.log(q_full / p_full)).sum(axis=1)
    kl, unknown = teacher_kl(t)
    assert (kl <= exact + 1e-2).all()  # float16 storage of the top-k moves each cell by ~1e-3
    assert (unknown > 0).mean() > 0.5 and np.mean(kl / exact) > 0.1  # the rest cell is exercised; the bound is not 0
    for i in range(20):  # and each value equals the naive definition
        x = {"teacher_topk_ids": t.teacher_topk_ids[i].tolist(), "topk_ids": t.topk_ids[i].tolist(),
             "teacher_topk_logprobs": t.teacher_topk_logprobs[i].astype(float).tolist(),
             "topk_logprobs": t.topk_logprobs[i].astype(float).tolist(), "token": int(tokens[i]), "lp": float(t.logprob[i]),
             "teacher_logprob": float(t.teacher_logprob[i])}
        assert kl[i] == pytest.approx(naive_kl(x)[0], rel=1e-9, abs=1e-12) and unknown[i] == pytest.approx(naive_kl(x)[1])


def test_recommendation_regimes_are_guidance():
    for mean_p, regime in [(0.8, "model-strong"), (0.65, "model-strong"), (0.6499, "intermediate"), (0.5, "intermediate"),
                           (0.25, "intermediate"), (0.2499, "model-weak"), (0.01, "model-weak")]:
        rec = recommend(mean_p, mean_p, 0.3, 5000, has_refs=True, has_teacher=True)
        assert rec["regime"] == regime, mean_p
        assert rec["baseline"] == "nll" and rec["objectives"]
        for spec in rec["objectives"] + rec["also"] + rec["avoid"]:
            parse_objective(spec)  # every named objective is a valid `tokensft train --objective`
        text = rec["text"].lower()
        assert "suggests" in text and "consider" in text and not any(w in text for w in (" must ", "you should", "will fail"))
        assert rec["near_boundary"] == (min(abs(mean_p - 0.65), abs(mean_p - 0.25)) < 0.05)
    assert "p" in recommend(0.8, 0.9, 0.05, 5000)["objectives"] and "p" in recommend(0.01, 0.001, 0.99, 5000)["avoid"]
    assert recommend(0.01, 0.001, 0.99, 5000)["objectives"] == ["nll"]
    assert "poft" in recommend(0.5, 0.5, 0.2, 5000, has_refs=True)["also"] and recommend(0.5, 0.5, 0.2, 5000)["also"] == []
    assert any("rough estimate" in r for r in recommend(0.5, 0.5, 0.2, 10)["reasoning"])
    assert recommend(None, None, None, 0)["regime"] is None
    assert [(r["label"], r["mean_p"]) for r in REFERENCE_POINTS] == [("math", 0.8), ("medical", 0.5), ("figfont puzzles", 0.01)]


def test_continuum_is_token_level(scored):
    t = load_targets(scored["texts"])  # examples of 1, 6 and 1 targets: token and example means differ
    got = continuum(t)
    assert got["mean_p"] == pytest.approx(float(np.mean(t.prob)), rel=1e-12)
    assert got["mean_p_by_example"] == pytest.approx(float(np.mean([t.prob[0], t.prob[1:7].mean(), t.prob[7]])), rel=1e-12)
    assert got["mean_p"] != pytest.approx(got["mean_p_by_example"], rel=1e-6)


def naive_classify(text: str, raw: str) -> str:
    """The documented rules, written as plain loops (an independent copy of the classifier)."""
    import unicodedata

    if text == "":
        return "whitespace" if raw and all(c in "▁Ġ " for c in raw) else "other"
    if "\ufffd" in text:
        return "other"
    if all(c.isspace() for c in text):
        return "whitespace"
    if any(c.isdigit() for c in text) and all(c.isspace() or c.isdigit() or c in ".," for c in text):
        return "digits"
    if all(c.isspace() or unicodedata.category(c).startswith(("P", "S")) for c in text):
        return "punctuation"
    if any(c.isalpha() for c in text):
        return "words"
    return "other"


@pytest.mark.parametrize("text,expected", [
    ("12", "digits"), (" 3.5", "digits"), ("1,000", "digits"), (".", "punctuation"), (" $", "punctuation"), ("**", "punctuation"),
    ("the", "words"), (" The", "words"), ("3rd", "words"), ("é", "words"), ("\n", "whitespace"), ("  ", "whitespace"),
    ("$2", "other"), ("\ufffd", "other"), ("2+1=", "other")])
def test_classify_text(text, expected):
    assert CLASSES[classify_text(text)] == expected


def test_classify_vocab_both_families(tiny_dirs, family):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[family])
    classes = classify_vocab(tokenizer, vocab_size=len(tokenizer) + 5)
    assert classes.dtype == np.int8 and len(classes) == len(tokenizer) + 5 and (classes[len(tokenizer):] == CLASSES.index("other")).all()
    raw = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    specials = set(tokenizer.all_special_ids)
    for i in range(len(tokenizer)):
        expected = "special" if i in specials else naive_classify(tokenizer.decode([i]), raw[i])
        assert CLASSES[classes[i]] == expected, (i, raw[i])
    space = "Ġ" if family == "bpe" else "▁"
    picks = {space: "whitespace", "4": "digits", ".": "punctuation", tokenizer.eos_token: "special", "a": "words"}
    for token, expected in picks.items():
        assert CLASSES[classes[tokenizer.convert_tokens_to_ids(token)]] == expected, token
    marked = [t for t in raw if t.startswith(space) and t[1:].isascii() and t[1:].isalpha()]  # a word with its boundary marker is a word
    assert marked and all(CLASSES[classes[tokenizer.convert_tokens_to_ids(t)]] == "words" for t in marked)
    byte_pieces = [i for i, t in enumerate(raw) if tokenizer.decode([i]) == "\ufffd"]
    assert all(CLASSES[classes[i]] == "other" for i in byte_pieces) and (family == "sp" or byte_pieces)


def test_class_of_unknown_id_is_an_error(scored):
    t = load_targets(scored["full"])
    with pytest.raises(ConfigError, match="outside the tokenizer"):
        by_class(t, np.zeros(3, np.int8))


def test_load_errors_name_the_path(scored, tmp_path):
    with pytest.raises(ConfigError, match="not a finished tokensft dataset"):
        load_targets(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(scored["full"], broken)
    (broken / "data-00001.arrow").unlink()
    with pytest.raises(ConfigError, match=r"broken.*data-00001.arrow is missing"):
        load_targets(broken)


def test_each_turn_of_a_multi_turn_example_spans_the_response_axis(scored):
    """CHATS[0] has two assistant turns: each starts at relative position 0 and ends (its end-of-turn token) at 1."""
    t = load_targets(scored["full"])
    first = t.rel_position[t.starts[0]:t.starts[1]]
    assert (first == 0.0).sum() == 2 and (first == 1.0).sum() == 2
    assert np.all(np.diff(first)[np.diff(first) > -0.5] > 0)  # increasing within each turn
