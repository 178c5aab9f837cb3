"""The naive reference for tokensft.analysis: every number of summary() recomputed with plain Python
loops over a dataset's rows (datasets.load_from_disk), shared by test_analysis, test_analysis_compare
and test_report."""

from __future__ import annotations

import math
from pathlib import Path

import datasets
import pytest

import tokensft
from tokensft.analysis import CLASSES, PROJECT_POINTS, REFERENCE_POINTS
from tokensft.core.schema import IGNORE_INDEX


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
                      "masks": {name: row[name][t] for name in row if name.startswith("mask_")},
                      "weights": {name: row[name][t] for name in row if name == "weight" or name.startswith("weight_")}}
            if "from_prompt" in row:
                target["from_prompt"] = row["from_prompt"][t]
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
    names = datasets.load_from_disk(str(directory)).column_names
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
            "project_points": [dict(r) for r in PROJECT_POINTS],
            "thresholds": {"model_strong_min": 0.65, "model_weak_max": 0.25}}
    cont["nearest_project_point"] = (dict(sorted(PROJECT_POINTS, key=lambda r: abs(r["mean_p"] - cont["mean_p"]))[0])
                                     if targets else None)
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
        "weights": naive_weights(names, rows, targets, meta, classes, n),
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


def naive_weight_distribution(ws: list[float], ps: list[float]) -> dict:
    """The statistics of one weight column, by their definitions (tokensft.analysis.weights)."""
    m, total, top = mean(ws), sum(abs(w) for w in ws), max(abs(w) for w in ws)
    effective = total / top if top > 0 else 0.0
    return {"targets": len(ws), "mean": m, "sd": math.sqrt(mean((w - m) ** 2 for w in ws)), "min": min(ws),
            **{name: quantile(ws, q) for name, q in (("q01", 0.01), ("q05", 0.05), ("q25", 0.25), ("median", 0.5),
                                                     ("q75", 0.75), ("q95", 0.95), ("q99", 0.99))},
            "max": max(ws), "frac_zero": mean(1.0 if w == 0 else 0.0 for w in ws), "negative": sum(1 for w in ws if w < 0),
            "sum": sum(ws), "effective_tokens": effective, "effective_fraction": effective / len(ws),
            "weighted_mean_p": sum(abs(w) * p for w, p in zip(ws, ps)) / total if total > 0 else None}


def naive_weight_groups(targets, column, groups) -> list[dict]:
    """targets, target_share, mean_weight, median_weight, weight_share of each (label, selection) in `groups`."""
    total = sum(abs(x["weights"][column]) for x in targets)
    out = []
    for label, sel in groups:
        ws = [x["weights"][column] for x in sel]
        out.append({**label, "targets": len(ws), "target_share": len(ws) / len(targets), "mean_weight": mean(ws),
                    "median_weight": median(ws), "weight_share": sum(abs(w) for w in ws) / total if total > 0 else None})
    return out


def naive_weights(names, rows, targets, meta, classes, n=10, tokenizer=None):
    """summary()["weights"]: every number from loops over the targets; provenance from tokensft.json as written."""
    columns = sorted((c for c in names if c == "weight" or c.startswith("weight_")), key=lambda c: (c != "weight", c))
    if not columns:
        return None
    ps = [x["p"] for x in targets]
    provenance, distribution, histogram, by_pos, by_cls, extremes, prompt = {}, [], [], [], [], {}, []
    for c in columns:
        ws = [x["weights"][c] for x in targets]
        empty = dict.fromkeys(["spec", "sources", "example_field", "prompt_weight", "allow_negative", "reads", "scorer",
                               "scorer_hash", "teacher"])
        if c == "weight":
            w = meta.get("weights", {})
            provenance[c] = {"column": c, "kind": "data", **empty, "sources": w.get("sources"),
                             "example_field": w.get("example_field"), "prompt_weight": w.get("prompt_weight"),
                             "allow_negative": w.get("allow_negative"),
                             "recorded": {k: v for k, v in meta["counts"].items()
                                          if k in ("weighted_targets", "weight_sum", "negative_weights", "prompt_targets")}}
        else:
            r = meta["enrichment"]["weights"][c]
            provenance[c] = {"column": c, "kind": "computed", **empty, "spec": r["spec"], "reads": r["reads"],
                             "scorer": r["scorer"]["name"], "scorer_hash": r["scorer"]["content_hash"],
                             "teacher": r["teacher"]["name"] if r.get("teacher") else None,
                             "recorded": {k: r[k] for k in ("targets", "mean", "min", "max", "negative", "effective_tokens")
                                          if k in r}}
        distribution.append({"column": c, "kind": "data" if c == "weight" else "computed",
                             **naive_weight_distribution(ws, ps)})
        lo, hi = min(ws), max(ws)
        hi = hi if hi > lo else lo + 1.0
        counts = [0] * 20
        for w in ws:
            counts[bin_of(w, lo, hi, 20)] += 1
        histogram += [{"column": c, "bin": b, "left": edges(lo, hi, 20)[b], "right": edges(lo, hi, 20)[b + 1],
                       "count": counts[b]} for b in range(20)]
        by_pos += naive_weight_groups(targets, c, [({"column": c, "bin": b, "left": b / 10, "right": (b + 1) / 10},
                                                    [x for x in targets if bin_of(x["rel"], 0, 1, 10) == b]) for b in range(10)])
        if classes is not None:
            by_cls += naive_weight_groups(targets, c, [({"column": c, "class": name}, [x for x in targets if classes[x["token"]] == k])
                                                       for k, name in enumerate(CLASSES)])
        shown = min(n, max(1, len(targets) // 2))

        def record(i):
            x = targets[i]
            token = tokenizer.decode([x["token"]]) if tokenizer is not None else f"#{x['token']}"
            return {"row": x["example"], "id": rows[x["example"]]["id"], "position": x["position"], "token_id": x["token"],
                    "token": token, "weight": ws[i], "p": x["p"]}

        extremes[c] = {"largest": [record(i) for i in sorted(range(len(ws)), key=lambda i: -ws[i])[:shown]],
                       "smallest": [record(i) for i in sorted(range(len(ws)), key=lambda i: ws[i])[:shown]]}
        if "from_prompt" in names:
            total = sum(abs(w) for w in ws)
            for part, flag in (("prompt", 1), ("response", 0)):
                sel = [x for x in targets if x["from_prompt"] == flag]
                prompt.append({"column": c, "part": part, "targets": len(sel), "mean_weight": mean(x["weights"][c] for x in sel),
                               "weight_share": sum(abs(x["weights"][c]) for x in sel) / total if total > 0 else None,
                               "mean_p": mean(x["p"] for x in sel)})
    return {"columns": columns, "provenance": provenance, "distribution": distribution, "histogram": histogram,
            "by_position": by_pos, "by_class": by_cls if classes is not None else None, "extremes": extremes,
            "prompt": prompt if "from_prompt" in names else None}


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
