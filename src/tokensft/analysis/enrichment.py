"""Statistics of the enrichment columns: masks (ProFit and friends), PoFT references, a teacher.

    mask_stats(t, classes)   # {} without masks; else "overall", "by_position" (+ "by_class") frames
    reference_stats(t)       # None without references
    teacher_stats(t)         # None without a teacher

Teacher definitions (targets whose teacher log-prob is NaN are left out of every teacher number):

- top-1 agreement: the fraction of targets where the teacher's most likely id (teacher_topk_ids[:, 0])
  equals the scorer's (topk_ids[:, 0]). Without the scorer's top-k only its rank of the target is
  known, so the agreement is bounded instead: both argmaxes equal the target -> agree; exactly one
  does -> disagree; neither -> unknown. `top1_agreement` is then None and `top1_agreement_bounds`
  [lower, upper] brackets it (lower = both, upper = both + neither).
- KL(teacher || scorer) on the teacher's top-k: both distributions coarse-grained to a partition
  of the vocabulary, one cell per teacher top-k id whose scorer probability p_k is stored (the
  target: exp(logprob) at float32 precision; an id among the scorer's top-K: its stored value),
  one cell for the target when it is outside the teacher's top-k (q = exp(teacher_logprob), p =
  exp(logprob)), and one rest cell for every other id, including the teacher's top-k ids the scorer
  did not store:
      KL_i = sum_{k in S} q_k log(q_k / p_k) + q_rest log(q_rest / p_rest)
  with S the matched cells, q_k the teacher's stored probabilities (scaled to sum to 1 if float16
  rounding pushes them over), q_rest = 1 - sum_S q, p_rest = max(1 - sum_S p, 1e-6). KL over a
  coarser partition never exceeds the full-vocabulary KL (data-processing inequality), so this is
  a lower bound whenever the stored p_k are exact, and 0 when the two models agree. `kl_unknown_mass` is the mean teacher
  mass merged into the rest cell because the scorer's probability of those ids is not stored (0:
  every teacher id matched; the larger, the looser the bound: store a larger scorer `--top-k`).
  Without the scorer's top-k there is no KL (None). Renormalizing the teacher's top-k alone would
  not do: for two identical models it gives -log(top-k mass) instead of 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tokensft.analysis.tables import bin_edges_frame, jsonable, nan_to_none, position_bins
from tokensft.analysis.targets import Targets
from tokensft.analysis.token_classes import CLASSES, target_classes
from tokensft.core.schema import REF_MEAN_LOGPROB

REST_FLOOR = 1e-6  # p_rest when the scorer's probabilities on the teacher's ids already sum to ~1
CHUNK = 1 << 16  # targets per block in the KL pass: bounds the (chunk, K) float64 temporaries


def mask_stats(t: Targets, classes: np.ndarray | None = None, bins: int = 10) -> dict[str, pd.DataFrame]:
    """Per mask column: "overall" (mask, spec, targets, kept, kept_fraction, metadata_kept_fraction, mean_p_kept,
    mean_p_dropped), "by_position" (mask, bin, left, right, targets, kept, kept_fraction) and, with
    `classes`, "by_class" (mask, class, targets, kept, kept_fraction). {} when there are no masks."""
    if not t.masks:
        return {}
    recorded = t.meta.get("enrichment", {}).get("masks", {})
    pos_key = position_bins(t.rel_position, bins)
    class_key = target_classes(classes, t.token_id, t.path).astype(np.int64) if classes is not None else None
    overall, by_pos, by_cls = [], [], []
    for name, kept in sorted(t.masks.items()):
        n_kept = int(kept.sum())
        overall.append({"mask": name, "spec": recorded.get(name, {}).get("spec"), "targets": t.num_targets, "kept": n_kept,
                        "kept_fraction": n_kept / t.num_targets if t.num_targets else np.nan,
                        "metadata_kept_fraction": recorded.get(name, {}).get("kept_fraction", np.nan),
                        "mean_p_kept": t.prob[kept].mean() if n_kept else np.nan,
                        "mean_p_dropped": t.prob[~kept].mean() if n_kept < t.num_targets else np.nan})
        by_pos.append(_kept_by(pos_key, bins, kept).assign(mask=name).join(bin_edges_frame(bins).drop(columns="bin")))
        if class_key is not None:
            by_cls.append(_kept_by(class_key, len(CLASSES), kept).assign(mask=name, **{"class": CLASSES}))
    out = {"overall": pd.DataFrame(overall).astype({"metadata_kept_fraction": float}),
           "by_position": pd.concat(by_pos, ignore_index=True)[["mask", "bin", "left", "right", "targets", "kept", "kept_fraction"]]}
    if by_cls:
        out["by_class"] = pd.concat(by_cls, ignore_index=True)[["mask", "class", "targets", "kept", "kept_fraction"]]
    return out


def _kept_by(key: np.ndarray, n: int, kept: np.ndarray) -> pd.DataFrame:
    targets = np.bincount(key, minlength=n)
    n_kept = np.bincount(key, weights=kept.astype(np.float64), minlength=n).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame({"bin": np.arange(n), "targets": targets, "kept": n_kept, "kept_fraction": n_kept / targets})


def reference_stats(t: Targets, bins: int = 20, n: int = 10) -> dict | None:
    """PoFT references: "columns" (ref columns present), "histogram" of ref_mean_logprob over [min, max] of its
    finite values (bin, left, right, count), "examples" (row, id, num_targets, mean_logprob, every ref column,
    delta = mean_logprob - ref_mean_logprob, poft_weight = sigmoid(ref_mean_logprob - mean_logprob): PoFT's
    per-example gradient weight at step 0 with beta = 1, gamma = 0), "lowest" (the n examples the references
    rate lowest, NaN left out) and "summary" (counts, means, Pearson correlations). None without references."""
    columns = t.ref_columns
    if not columns:
        return None
    main = REF_MEAN_LOGPROB if REF_MEAN_LOGPROB in columns else columns[0]
    ex = t.examples.rename_axis("row").reset_index()[["row", "id", "num_targets", "mean_logprob", *columns]]
    ex["delta"] = ex["mean_logprob"] - ex[main]
    ex["poft_weight"] = 1.0 / (1.0 + np.exp(ex["mean_logprob"] - ex[main]))
    ref = ex[main].to_numpy(np.float64)
    finite = np.isfinite(ref)
    values = ref[finite]
    lo, hi = (values.min(), values.max()) if len(values) else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0  # one distinct value: a unit-wide range starting at it
    index = np.clip(((values - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
    edges = np.linspace(lo, hi, bins + 1)
    histogram = pd.DataFrame({"bin": np.arange(bins), "left": edges[:-1], "right": edges[1:],
                              "count": np.bincount(index, minlength=bins)})
    both = finite & np.isfinite(ex["mean_logprob"].to_numpy(np.float64))
    summary = {
        "column": main, "examples": t.num_examples, "with_ref": int(finite.sum()), "missing": int((~finite).sum()),
        "mean_ref_mean_logprob": nan_to_none(values.mean()) if len(values) else None,
        "mean_primary_mean_logprob": nan_to_none(ex["mean_logprob"][both].mean()) if both.any() else None,
        "mean_poft_weight": nan_to_none(ex["poft_weight"][both].mean()) if both.any() else None,
        "correlation": {c: _pearson(ex["mean_logprob"].to_numpy(np.float64), ex[c].to_numpy(np.float64)) for c in columns},
    }
    lowest = ex[finite].sort_values(main, kind="stable").head(n).reset_index(drop=True)
    return {"columns": columns, "histogram": histogram, "examples": ex, "lowest": lowest, "summary": summary}


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation over the pairs where both are finite; None with < 2 pairs or no variance."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return None
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else None


def teacher_kl(t: Targets) -> tuple[np.ndarray, np.ndarray] | None:
    """((N,) KL(teacher || scorer) on the matched teacher ids plus a rest cell, (N,) teacher mass merged
    into the rest cell); see the module docstring. None without both top-k distributions."""
    if t.teacher_topk_ids is None or t.topk_ids is None or t.topk_ids.shape[1] == 0:
        return None
    n = t.num_targets
    kl, unknown_mass = np.empty(n), np.empty(n)
    for a in range(0, n, CHUNK):
        b = min(a + CHUNK, n)
        ids = t.teacher_topk_ids[a:b]  # (C, Kt)
        q = np.exp(t.teacher_topk_logprobs[a:b].astype(np.float64))
        q /= np.maximum(q.sum(axis=1, keepdims=True), 1.0)  # float16 rounding may push the sum over 1
        plp_k = t.topk_logprobs[a:b].astype(np.float64)  # (C, Kp)
        log_p = np.zeros(ids.shape)  # the scorer's log-prob of each teacher id, where `known`
        known = np.zeros(ids.shape, dtype=bool)
        hit = np.empty(ids.shape, dtype=bool)
        for j in range(plp_k.shape[1]):  # a loop over K, not over tokens; in place: no (C, Kt) temporaries
            np.equal(ids, t.topk_ids[a:b, j:j + 1], out=hit)
            np.copyto(log_p, plp_k[:, j:j + 1], where=hit)
            known |= hit
        np.equal(ids, t.token_id[a:b, None], out=hit)
        np.copyto(log_p, t.logprob[a:b, None], where=hit)
        known |= hit
        q_known = np.where(known, q, 0.0)  # (C, Kt) the matched cells; the rest go to the rest cell
        # the target is a cell of its own when it is outside the teacher's top-k: both its probabilities are stored
        q_t, p_t = np.zeros(b - a), np.zeros(b - a)
        if t.teacher_logprob is not None:
            own = ~hit.any(axis=1) & np.isfinite(t.teacher_logprob[a:b])  # hit: teacher id == target, from above
            q_t[own], p_t[own] = np.exp(t.teacher_logprob[a:b][own]), np.exp(t.logprob[a:b][own])
        q_rest = np.maximum(1.0 - q_known.sum(axis=1) - q_t, 0.0)
        p_rest = np.maximum(1.0 - np.where(known, np.exp(log_p), 0.0).sum(axis=1) - p_t, REST_FLOOR)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(q_known > 0, q_known * (np.log(q_known) - log_p), 0.0).sum(axis=1)
            terms += np.where(q_t > 0, q_t * (np.log(q_t) - np.log(p_t)), 0.0)
            kl[a:b] = terms + np.where(q_rest > 0, q_rest * (np.log(q_rest) - np.log(p_rest)), 0.0)
        unknown_mass[a:b] = (q * ~known).sum(axis=1)
    return kl, unknown_mass


def teacher_stats(t: Targets) -> dict | None:
    """"summary" (scalars, see the module docstring) and "per_example" (row, id, num_targets, teacher_targets,
    mean_p, teacher_mean_p, kl_mean, top1_agreement). None without a teacher."""
    if t.teacher_logprob is None and t.teacher_topk_ids is None:
        return None
    n = t.num_targets
    valid = np.isfinite(t.teacher_logprob) if t.teacher_logprob is not None else np.ones(n, bool)
    teacher_p = np.exp(t.teacher_logprob) if t.teacher_logprob is not None else np.full(n, np.nan)
    primary_top1 = t.rank == 0
    teacher_top1 = t.teacher_topk_ids[:, 0] == t.token_id if t.teacher_topk_ids is not None and n else np.zeros(n, bool)
    agree = None
    if t.teacher_topk_ids is not None and t.topk_ids is not None and t.topk_ids.shape[1]:
        agree = t.teacher_topk_ids[:, 0] == t.topk_ids[:, 0]
    both, neither = primary_top1 & teacher_top1, ~primary_top1 & ~teacher_top1
    kl = teacher_kl(t)
    v = valid

    def mean(x):
        return nan_to_none(x[v].mean()) if v.any() else None

    def quantile(x, q):
        return nan_to_none(np.quantile(x[v], q)) if v.any() else None

    has_topk = t.teacher_topk_ids is not None
    if agree is not None:
        bounds = [mean(agree.astype(float))] * 2
    elif has_topk:  # both argmaxes are the target: agree; exactly one is: disagree; neither: unknown
        bounds = [mean(both.astype(float)), mean((both | neither).astype(float))]
    else:
        bounds = None
    summary = {
        "model": (t.meta.get("enrichment", {}).get("teacher") or {}).get("model", {}).get("name"),
        "top_k": int(t.teacher_topk_ids.shape[1]) if has_topk and n else None,
        "targets": int(v.sum()),
        "teacher_mean_p": mean(teacher_p), "mean_p": mean(t.prob),
        "target_logprob_gap": mean(t.teacher_logprob - t.logprob) if t.teacher_logprob is not None else None,
        "primary_target_top1": mean(primary_top1.astype(float)),
        "teacher_target_top1": mean(teacher_top1.astype(float)) if has_topk else None,
        "top1_agreement": mean(agree.astype(float)) if agree is not None else None,
        "top1_agreement_bounds": bounds,
        "agreement_method": "topk" if agree is not None else "bounds" if has_topk else None,
        "kl_mean": mean(kl[0]) if kl else None, "kl_median": quantile(kl[0], 0.5) if kl else None,
        "kl_q90": quantile(kl[0], 0.9) if kl else None, "kl_unknown_mass": mean(kl[1]) if kl else None,
    }
    per_example = _teacher_per_example(t, v, teacher_p, kl[0] if kl else None, agree)
    return {"summary": jsonable(summary), "per_example": per_example}


def _teacher_per_example(t: Targets, valid: np.ndarray, teacher_p: np.ndarray, kl: np.ndarray | None,
                         agree: np.ndarray | None) -> pd.DataFrame:
    e, m = t.example[valid], t.num_examples
    count = np.bincount(e, minlength=m)

    def per(x):
        if x is None:
            return np.full(m, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.bincount(e, weights=x[valid].astype(np.float64), minlength=m) / count

    frame = t.examples.rename_axis("row").reset_index()[["row", "id", "num_targets"]]
    return frame.assign(teacher_targets=count, mean_p=per(t.prob), teacher_mean_p=per(teacher_p), kl_mean=per(kl),
                        top1_agreement=per(agree))
