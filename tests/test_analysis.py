"""tokensft.analysis against an independent computation: every number of `summary()` and of the
DataFrames is recomputed here with plain Python loops over `datasets.load_from_disk(dir)` rows, on
datasets scored and enriched by the CLI with the tiny models (masks, a reference, a teacher), a
dataset with none of them (truncated and skipped rows), and one- and few-example datasets."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import write_jsonl
from test_enrich import CHATS, teacher_dir  # noqa: F401  (a teacher: another model with the bpe tokenizer)
from test_score_cli import QA
from transformers import AutoTokenizer

import tokensft
from tokensft.analysis import (CLASSES, REFERENCE_POINTS, by_class, by_position, cdf, classify_text, classify_vocab, continuum,
                               entropy_vs_probability, extreme_examples, load_targets, mask_stats, recommend, reference_stats,
                               summary, teacher_kl, teacher_stats)
from tokensft.cli import main
from tokensft.errors import ConfigError
from tokensft.schema import IGNORE_INDEX
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


# ---------------------------------------------------------------- the naive reference


def rows_of(directory: Path) -> list[dict]:
    return list(datasets.load_from_disk(str(directory)))


def naive_targets(rows: list[dict]) -> list[dict]:
    out = []
    for e, row in enumerate(rows):
        positions = [t for t, y in enumerate(row["labels"]) if y != IGNORE_INDEX]
        turns = []  # each response (a run of consecutive targets: one assistant turn) on its own
        for t in positions:
            if turns and turns[-1][-1] == t - 1:
                turns[-1].append(t)
            else:
                turns.append([t])
        rel = {t: k / (len(turn) - 1) if len(turn) > 1 else 0.0 for turn in turns for k, t in enumerate(turn)}
        for t in positions:
            target = {"example": e, "position": t, "rel": rel[t],
                      "token": row["labels"][t], "lp": row["logprob"][t], "p": math.exp(row["logprob"][t]),
                      "entropy": row["entropy"][t], "rank": row["rank"][t],
                      "masks": {name: row[name][t] for name in row if name.startswith("mask_")}}
            for column in ("teacher_logprob", "topk_ids", "topk_logprobs", "teacher_topk_ids", "teacher_topk_logprobs"):
                if column in row:
                    target[column] = row[column][t]
            out.append(target)
    return out


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def median(xs):
    s = sorted(xs)
    if not s:
        return None
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2


def quantile(xs, q):
    s = sorted(xs)
    if not s:
        return None
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def pearson(pairs):
    pairs = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 2:
        return None
    mx, my = mean(x for x, _ in pairs), mean(y for _, y in pairs)
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx, syy = sum((x - mx) ** 2 for x, _ in pairs), sum((y - my) ** 2 for _, y in pairs)
    return sxy / math.sqrt(sxx * syy) if sxx * syy > 0 else None


def bin_of(value: float, lo: float, hi: float, bins: int) -> int:
    return min(max(math.floor((value - lo) / (hi - lo) * bins), 0), bins - 1)


def p_stats(ps: list[float]) -> dict:
    return {"mean_p": mean(ps), "median_p": median(ps), "frac_below_0_1": mean(1.0 if p < 0.1 else 0.0 for p in ps)}


def edges(lo: float, hi: float, bins: int) -> list[float]:
    return [lo + (hi - lo) * i / bins for i in range(bins + 1)]


def example_means(rows, targets):
    per = [[] for _ in rows]
    for x in targets:
        per[x["example"]].append(x)
    return [{"row": e, "id": rows[e]["id"], "num_targets": len(xs), "mean_p": mean(x["p"] for x in xs),
             "mean_logprob": mean(x["lp"] for x in xs)} for e, xs in enumerate(per)]


def naive_kl(x: dict) -> tuple[float, float]:
    """KL(teacher || scorer) over the teacher ids whose scorer p is stored, the target, and one rest cell."""
    qs = [math.exp(v) for v in x["teacher_topk_logprobs"]]
    qs = [q / max(sum(qs), 1.0) for q in qs]
    primary = dict(zip(x["topk_ids"], x["topk_logprobs"]))
    kl = unknown = q_sum = p_sum = 0.0
    for i, q in zip(x["teacher_topk_ids"], qs):
        lp = x["lp"] if i == x["token"] else primary.get(i)
        if lp is None:  # the scorer's p of this id is not stored: it belongs to the rest cell
            unknown += q
            continue
        q_sum, p_sum = q_sum + q, p_sum + math.exp(lp)
        kl += q * (math.log(q) - lp) if q > 0 else 0.0
    if x["token"] not in x["teacher_topk_ids"] and math.isfinite(x.get("teacher_logprob", math.nan)):
        q, lp = math.exp(x["teacher_logprob"]), x["lp"]  # the target: a cell of its own, both sides stored
        q_sum, p_sum = q_sum + q, p_sum + math.exp(lp)
        kl += q * (math.log(q) - lp) if q > 0 else 0.0
    q_rest, p_rest = max(1 - q_sum, 0.0), max(1 - p_sum, 1e-6)
    return kl + (q_rest * math.log(q_rest / p_rest) if q_rest > 0 else 0.0), unknown


def naive_summary(directory: Path, classes, n: int = 10) -> dict:
    """The expected summary() of `directory`, computed with plain loops over its rows."""
    rows, meta = rows_of(directory), tokensft.load_metadata(directory)
    targets = naive_targets(rows)
    ps = [x["p"] for x in targets]
    ex = example_means(rows, targets)
    enrichment = meta.get("enrichment", {})
    teacher_meta = enrichment.get("teacher")
    overview = {
        "path": str(directory), "examples": len(rows), "tokens": sum(len(r["input_ids"]) for r in rows), "targets": len(targets),
        "examples_without_targets": sum(1 for e in ex if e["num_targets"] == 0), "truncated": sum(r["truncated"] for r in rows),
        "read": meta["counts"]["read"], "skipped": sum(meta["counts"]["skipped"].values()),
        "skipped_by_reason": meta["counts"]["skipped"], "model": meta["model"]["name"], "model_hash": meta["model"]["content_hash"],
        "tokenizer_fingerprint": meta["tokenizer_fingerprint"], "token_fingerprint": meta["token_fingerprint"],
        "dtype": meta["dtype"], "max_length": meta["max_length"], "top_k": meta["top_k"], "format": meta["render"]["format"],
        "template": meta["render"]["template"], "targets_rule": meta["render"]["targets"], "input": meta["input"]["path"],
        "masks": sorted(n for n in rows[0] if n.startswith("mask_")), "refs": sorted(enrichment.get("refs", {})),
        "teacher": teacher_meta["model"]["name"] if teacher_meta else None,
        "teacher_top_k": teacher_meta["top_k"] if teacher_meta else None,
        "tokensft_version": meta["tokensft_version"], "finished": meta["finished"],
    }
    with_targets = [e for e in ex if e["num_targets"]]
    shown = min(n, max(1, len(with_targets) // 2))  # the two lists never overlap (one example: both show it)
    cont = {"targets": len(targets), **p_stats(ps), "mean_logprob": mean(x["lp"] for x in targets),
            "mean_p_by_example": mean(e["mean_p"] for e in with_targets),
            "reference_points": [dict(r) for r in REFERENCE_POINTS],
            "thresholds": {"model_strong_min": 0.65, "model_weak_max": 0.25}}
    histogram = {}
    for scale, values, lo, hi, bins in (("linear", ps, 0.0, 1.0, 20), ("log10", [math.log10(p) for p in ps], -8.0, 0.0, 16)):
        counts = [0] * bins
        for v in values:
            counts[bin_of(v, lo, hi, bins)] += 1
        histogram[scale] = {"edges": edges(lo, hi, bins), "counts": counts}
    entropy_rows = []
    for b in range(20):
        es = [x["entropy"] for x in targets if bin_of(x["p"], 0, 1, 20) == b]
        entropy_rows.append({"bin": b, "left": b / 20, "right": (b + 1) / 20, "count": len(es), "mean_entropy": mean(es),
                             "entropy_q10": quantile(es, 0.1), "entropy_median": quantile(es, 0.5), "entropy_q90": quantile(es, 0.9)})
    positions = [{"bin": b, "left": b / 10, "right": (b + 1) / 10, "count": len(sel), **p_stats(sel)}
                 for b in range(10) for sel in [[x["p"] for x in targets if bin_of(x["rel"], 0, 1, 10) == b]]]
    out = {
        "version": 1, "overview": overview, "continuum": cont,
        "quantiles": [{"q": q, "p": quantile(ps, q)} for q in (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)],
        "histogram": histogram, "entropy_vs_probability": entropy_rows, "by_position": positions,
        "by_class": None if classes is None else [
            {"class": name, "count": len(sel), "share": len(sel) / len(targets), **p_stats(sel)}
            for c, name in enumerate(CLASSES) for sel in [[x["p"] for x in targets if classes[x["token"]] == c]]],
        "masks": naive_masks(targets, meta, classes), "references": naive_references(rows, ex, n), "teacher": naive_teacher(targets, meta),
        "extremes": {"lowest": [{k: e[k] for k in ("row", "id", "num_targets", "mean_p")}
                                for e in sorted(with_targets, key=lambda e: e["mean_p"])[:shown]],
                     "highest": [{k: e[k] for k in ("row", "id", "num_targets", "mean_p")}
                                 for e in sorted(with_targets, key=lambda e: -e["mean_p"])[:shown]]},
    }
    return out


def naive_masks(targets, meta, classes):
    names = sorted(targets[0]["masks"]) if targets else []
    if not names:
        return None
    recorded = meta["enrichment"]["masks"]
    overall, by_pos, by_cls = [], [], []
    for name in names:
        kept = [x["p"] for x in targets if x["masks"][name]]
        dropped = [x["p"] for x in targets if not x["masks"][name]]
        overall.append({"mask": name, "spec": recorded[name]["spec"], "targets": len(targets), "kept": len(kept),
                        "kept_fraction": len(kept) / len(targets), "metadata_kept_fraction": recorded[name]["kept_fraction"],
                        "mean_p_kept": mean(kept), "mean_p_dropped": mean(dropped)})
        for b in range(10):
            sel = [x["masks"][name] for x in targets if bin_of(x["rel"], 0, 1, 10) == b]
            by_pos.append({"mask": name, "bin": b, "left": b / 10, "right": (b + 1) / 10, "targets": len(sel), "kept": sum(sel),
                           "kept_fraction": sum(sel) / len(sel) if sel else None})
        for c, cls in enumerate(CLASSES):
            sel = [x["masks"][name] for x in targets if classes[x["token"]] == c]
            by_cls.append({"mask": name, "class": cls, "targets": len(sel), "kept": sum(sel),
                           "kept_fraction": sum(sel) / len(sel) if sel else None})
    return {"overall": overall, "by_position": by_pos, "by_class": by_cls}


def naive_references(rows, ex, n):
    columns = sorted(c for c in rows[0] if c.startswith("ref_") and c.endswith("_mean_logprob") and c != "ref_mean_logprob")
    if not columns:
        return None
    columns.append("ref_mean_logprob")
    refs = [r["ref_mean_logprob"] for r in rows]
    finite = [v for v in refs if math.isfinite(v)]
    lo, hi = min(finite), max(finite)
    hi = hi if hi > lo else lo + 1.0
    counts = [0] * 20
    for v in finite:
        counts[bin_of(v, lo, hi, 20)] += 1
    both = [(e["mean_logprob"], r) for e, r in zip(ex, refs) if e["mean_logprob"] is not None and math.isfinite(r)]
    lowest = sorted((e for e, r in zip(ex, refs) if math.isfinite(r)), key=lambda e: refs[e["row"]])[:n]
    return {
        "summary": {"column": "ref_mean_logprob", "examples": len(rows), "with_ref": len(finite), "missing": len(rows) - len(finite),
                    "mean_ref_mean_logprob": mean(finite), "mean_primary_mean_logprob": mean(s for s, _ in both),
                    "mean_poft_weight": mean(1 / (1 + math.exp(s - r)) for s, r in both),
                    "correlation": {c: pearson([(e["mean_logprob"] if e["mean_logprob"] is not None else math.nan, r[c])
                                                for e, r in zip(ex, rows)]) for c in columns}},
        "histogram": [{"bin": b, "left": edges(lo, hi, 20)[b], "right": edges(lo, hi, 20)[b + 1], "count": counts[b]} for b in range(20)],
        "lowest": [{"row": e["row"], "id": e["id"], "num_targets": e["num_targets"], "mean_logprob": e["mean_logprob"],
                    **{c: rows[e["row"]][c] for c in columns}} for e in lowest],
    }


def naive_teacher(targets, meta):
    if "teacher_logprob" not in (targets[0] if targets else {}):
        return None
    xs = [x for x in targets if math.isfinite(x["teacher_logprob"])]
    both = [x["rank"] == 0 and x["teacher_topk_ids"][0] == x["token"] for x in xs]
    neither = [x["rank"] != 0 and x["teacher_topk_ids"][0] != x["token"] for x in xs]
    has_topk = "topk_ids" in xs[0]
    agree = mean(float(x["teacher_topk_ids"][0] == x["topk_ids"][0]) for x in xs) if has_topk else None
    kls = [naive_kl(x) for x in xs] if has_topk else None
    return {
        "model": meta["enrichment"]["teacher"]["model"]["name"], "top_k": len(xs[0]["teacher_topk_ids"]), "targets": len(xs),
        "teacher_mean_p": mean(math.exp(x["teacher_logprob"]) for x in xs), "mean_p": mean(x["p"] for x in xs),
        "target_logprob_gap": mean(x["teacher_logprob"] - x["lp"] for x in xs),
        "primary_target_top1": mean(float(x["rank"] == 0) for x in xs),
        "teacher_target_top1": mean(float(x["teacher_topk_ids"][0] == x["token"]) for x in xs),
        "top1_agreement": agree,
        "top1_agreement_bounds": [agree, agree] if has_topk else [mean(map(float, both)), mean(float(a or b) for a, b in zip(both, neither))],
        "agreement_method": "topk" if has_topk else "bounds",
        "kl_mean": mean(k for k, _ in kls) if kls else None, "kl_median": median(k for k, _ in kls) if kls else None,
        "kl_q90": quantile([k for k, _ in kls], 0.9) if kls else None, "kl_unknown_mass": mean(c for _, c in kls) if kls else None,
    }


def assert_matches(actual, expected, where: str = "summary") -> None:
    """Same structure, same keys, equal leaves (floats to 1e-9 relative); ints must be ints."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), (where, set(actual) ^ set(expected))
        for key in expected:
            assert_matches(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (where, actual, expected)
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_matches(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), (where, actual)
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-12), (where, actual, expected)
    else:
        assert actual == expected and type(actual) is type(expected), (where, actual, expected)


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
