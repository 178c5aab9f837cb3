"""Statistics of the loss weights a dataset stores: the data's `weight` (score) and each weight_<name> (enrich).

    weight_stats(t, classes, tokenizer)   # None without weight columns; else the frames below
    weight_distribution(t)                # one row per weight column
    weight_provenance(t.meta, "weight")   # where a column came from, from tokensft.json

w is a column's weight at each target (finite at every target; see targets.py), p the scorer's
probability of the target. Definitions:

- effective_tokens = Σ|w| / max|w|: how many targets at the largest weight carry the same total
  weight, the effective number of trained tokens (Σw / max w for weights >= 0; with weights in
  [0, 1] and some weight 1 it is Σw). Absolute values because a negative weight (`excess` unclipped,
  trained with --allow-negative-weights) pushes its token's probability down with the same force as
  a positive one of that size pulls it up. 0 when every weight is 0, NaN without targets.
  effective_fraction = effective_tokens / targets.
- weighted_mean_p = Σ|w|·p / Σ|w|: the mean target p as the weighted loss sees it (the continuum's
  mean_p gives every target weight 1). NaN when every weight is 0.
- weight_share of a group (position bin, token class, prompt or response) = Σ|w| in the group / Σ|w|
  over all targets: the part of the loss's weight the group holds (target_share: its part of the targets).
- sd is the population standard deviation (ddof 0); quantiles are np.quantile's (linear interpolation).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tokensft.analysis.tables import bin_edges_frame, grouped_median, position_bins
from tokensft.analysis.targets import Targets
from tokensft.analysis.token_classes import CLASSES, target_classes, token_strings
from tokensft.core.errors import ConfigError
from tokensft.core.schema import LOGPROB_COLUMNS, WEIGHT
from tokensft.core.weights import parse_weight

QUANTILES = {"q01": 0.01, "q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95, "q99": 0.99}
DATA_COUNTS = ("weighted_targets", "weight_sum", "negative_weights", "prompt_targets")  # meta["counts"], from score
COMPUTED_KEYS = ("targets", "mean", "min", "max", "negative", "effective_tokens")  # enrichment.weights[c], from enrich


def summarize(w: np.ndarray, p: np.ndarray | None = None) -> dict:
    """The distribution of one column's weights `w` (N,) over targets (p (N,): their probabilities, for
    weighted_mean_p): targets, mean, sd, min, the QUANTILES, max, frac_zero, negative, sum,
    effective_tokens, effective_fraction, weighted_mean_p. NaN statistics without targets."""
    n = len(w)
    w = w.astype(np.float64, copy=False)
    out = {"targets": n}
    if not n:
        return {**out, **dict.fromkeys(["mean", "sd", "min", *QUANTILES, "max", "frac_zero"], np.nan), "negative": 0,
                "sum": 0.0, "effective_tokens": np.nan, "effective_fraction": np.nan, "weighted_mean_p": np.nan}
    absolute = np.abs(w)
    total, top = absolute.sum(), absolute.max()
    out.update(mean=w.mean(), sd=w.std(), min=w.min(), **dict(zip(QUANTILES, np.quantile(w, list(QUANTILES.values())))),
               max=w.max(), frac_zero=float((w == 0).mean()), negative=int((w < 0).sum()), sum=w.sum())
    effective = total / top if top > 0 else 0.0
    out.update(effective_tokens=effective, effective_fraction=effective / n,
               weighted_mean_p=(absolute * p).sum() / total if p is not None and total > 0 else np.nan)
    return out


def weight_provenance(meta: dict, column: str) -> dict:
    """Where `column` came from, from tokensft.json (keys absent there are None): kind "data" (sources,
    example_field, prompt_weight, allow_negative, recorded = score's counts) or "computed" (spec, reads,
    scorer, scorer_hash, teacher, recorded = enrich's statistics). A computed weight without metadata
    gets its spec and reads from its column name (not possible for a product: spec None)."""
    out = dict.fromkeys(["spec", "sources", "example_field", "prompt_weight", "allow_negative", "reads", "scorer",
                         "scorer_hash", "teacher"])
    if column == WEIGHT:
        data, counts = meta.get("weights") or {}, meta.get("counts") or {}
        out.update({k: data.get(k) for k in ("sources", "example_field", "prompt_weight", "allow_negative")})
        return {"column": column, "kind": "data", **out, "recorded": {k: counts[k] for k in DATA_COUNTS if k in counts}}
    record = ((meta.get("enrichment") or {}).get("weights") or {}).get(column) or {}
    spec, reads = record.get("spec"), record.get("reads")
    if spec is None or reads is None:
        try:
            parsed = parse_weight(column)
        except ConfigError:  # a product's name cannot be parsed back: its spec is only in the metadata
            parsed = None
        if parsed is not None:
            spec, reads = spec or parsed.spec, reads or list(parsed.reads)
    scorer, teacher = record.get("scorer") or {}, record.get("teacher") or {}
    if not scorer and LOGPROB_COLUMNS["scorer"] in (reads or ()):  # the scorer is the dataset's model
        scorer = meta.get("model") or {}
    if not teacher and LOGPROB_COLUMNS["teacher"] in (reads or ()):
        teacher = ((meta.get("enrichment") or {}).get("teacher") or {}).get("model") or {}
    out.update(spec=spec, reads=list(reads) if reads is not None else None, scorer=scorer.get("name"),
               scorer_hash=scorer.get("content_hash"), teacher=teacher.get("name"))
    return {"column": column, "kind": "computed", **out, "recorded": {k: record[k] for k in COMPUTED_KEYS if k in record}}


def weight_distribution(t: Targets) -> pd.DataFrame:
    """One row per weight column (t.weight_columns order): column, kind, then summarize()'s statistics."""
    rows = [{"column": c, "kind": "data" if c == WEIGHT else "computed", **summarize(t.weights[c], t.prob)}
            for c in t.weight_columns]
    return pd.DataFrame(rows)


def weight_histogram(t: Targets, bins: int = 20) -> pd.DataFrame:
    """Per column, target counts in `bins` equal bins over [min, max] of its weights (a unit-wide range
    from the value when all are equal; [0, 1] without targets), the last bin closed: column, bin, left,
    right, count."""
    frames = []
    for c in t.weight_columns:
        w = t.weights[c]
        lo, hi = (float(w.min()), float(w.max())) if len(w) else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0
        index = np.clip(((w - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
        edges = np.linspace(lo, hi, bins + 1)
        frames.append(pd.DataFrame({"column": c, "bin": np.arange(bins), "left": edges[:-1], "right": edges[1:],
                                    "count": np.bincount(index, minlength=bins)}))
    return pd.concat(frames, ignore_index=True)


def _grouped(t: Targets, key: np.ndarray, n_groups: int) -> list[pd.DataFrame]:
    """Per column: targets, target_share, mean_weight, median_weight, weight_share per group of `key` (N,)."""
    counts = np.bincount(key, minlength=n_groups)
    out = []
    for c in t.weight_columns:
        w = t.weights[c]
        absolute = np.abs(w).sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.bincount(key, weights=w, minlength=n_groups) / counts
            share = np.bincount(key, weights=np.abs(w), minlength=n_groups) / absolute if absolute > 0 else np.full(n_groups, np.nan)
        out.append(pd.DataFrame({"column": c, "targets": counts, "target_share": counts / max(t.num_targets, 1),
                                 "mean_weight": mean, "median_weight": grouped_median(key, n_groups, w), "weight_share": share}))
    return out


def weight_by_position(t: Targets, bins: int = 10) -> pd.DataFrame:
    """Per column and relative-position bin (stats.by_position's bins): column, bin, left, right, targets,
    target_share, mean_weight, median_weight, weight_share. Empty bins have NaN statistics."""
    edges = bin_edges_frame(bins)
    frames = [pd.concat([f[["column"]], edges, f.drop(columns="column")], axis=1)
              for f in _grouped(t, position_bins(t.rel_position, bins), bins)]
    return pd.concat(frames, ignore_index=True)


def weight_by_class(t: Targets, classes: np.ndarray) -> pd.DataFrame:
    """Per column and token class (CLASSES order): column, class, targets, target_share, mean_weight,
    median_weight, weight_share."""
    key = target_classes(classes, t.token_id, t.path).astype(np.int64)
    frames = [f.assign(**{"class": CLASSES})[["column", "class", *f.columns[1:]]] for f in _grouped(t, key, len(CLASSES))]
    return pd.concat(frames, ignore_index=True)


def extreme_tokens(t: Targets, column: str, n: int = 10, tokenizer=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(largest, smallest): the targets with the largest / smallest weight in `column`, n of each but at most
    half the targets (at least 1), so the two never overlap unless there is a single target; ties keep
    dataset order. Columns: row (of t.examples), id, position, token_id, token (decoded alone; "#id"
    without a tokenizer), weight, p."""
    w = t.weights[column]
    shown = min(n, max(1, t.num_targets // 2)) if t.num_targets else 0

    def frame(order: np.ndarray) -> pd.DataFrame:
        pick = order[:shown]
        rows = t.example[pick]
        return pd.DataFrame({"row": rows, "id": t.examples["id"].to_numpy(object)[rows], "position": t.position[pick],
                             "token_id": t.token_id[pick], "token": token_strings(tokenizer, t.token_id[pick]),
                             "weight": w[pick], "p": t.prob[pick]})

    return frame(np.argsort(-w, kind="stable")), frame(np.argsort(w, kind="stable"))


def prompt_split(t: Targets) -> pd.DataFrame | None:
    """With `from_prompt` (score --prompt-weight): per column, the prompt targets against the response ones:
    column, part ("prompt", "response"), targets, mean_weight, weight_share, mean_p. None without it."""
    if t.from_prompt is None:
        return None
    key = np.where(t.from_prompt, 0, 1)  # (N,) 0 = prompt, 1 = response
    counts = np.bincount(key, minlength=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(key, weights=t.prob, minlength=2) / counts
    frames = [f.assign(part=["prompt", "response"], mean_p=mean_p)[["column", "part", "targets", "mean_weight",
                                                                      "weight_share", "mean_p"]]
              for f in _grouped(t, key, 2)]
    return pd.concat(frames, ignore_index=True)


def weight_stats(t: Targets, classes: np.ndarray | None = None, tokenizer=None, bins: int = 20, position_bins: int = 10,
                 n: int = 10) -> dict | None:
    """Everything above: "columns", "provenance" {column: dict}, "distribution", "histogram", "by_position",
    "by_class" (None without classes), "extremes" {column: {"largest", "smallest"}}, "prompt" (None
    without from_prompt). None when the dataset stores no weights."""
    if not t.weights:
        return None
    extremes = {}
    for c in t.weight_columns:
        largest, smallest = extreme_tokens(t, c, n, tokenizer)
        extremes[c] = {"largest": largest, "smallest": smallest}
    return {"columns": t.weight_columns, "provenance": {c: weight_provenance(t.meta, c) for c in t.weight_columns},
            "distribution": weight_distribution(t), "histogram": weight_histogram(t, bins),
            "by_position": weight_by_position(t, position_bins),
            "by_class": weight_by_class(t, classes) if classes is not None else None,
            "extremes": extremes, "prompt": prompt_split(t)}
