"""Two scored datasets of the same examples (before/after training, or two models): what moved.

    result = compare(load_targets("before/"), load_targets("after/"))
    result["summary"]          # JSON-able: mean p before/after, shift, fraction of targets up/down
    result["tokens_moved"]     # per token id, sorted by |mean delta p|

Alignment: examples are matched by id (a repeated id: its k-th occurrence in dataset order with
the other side's k-th). Examples in only one
dataset are left out and counted (only_in_a / only_in_b); at least one id must be shared. A
shared example must have the same target tokens in both (same count, same ids, in order; the
context before them may differ, e.g. another chat template): otherwise the two datasets are not
comparable token by token and a ConfigError names the first such example. Deltas are b - a.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tokensft.analysis.tables import bin_edges_frame, group_stats, jsonable, position_bins
from tokensft.analysis.targets import Targets
from tokensft.core.errors import ConfigError


def _keys(t: Targets) -> pd.MultiIndex:
    """(id, occurrence) of each example: the k-th record with a given id matches the other side's k-th.

    Ids derived from content repeat for repeated records, which SFT data often has; matching them in
    dataset order keeps them comparable instead of refusing the whole dataset.
    """
    ids = pd.Series(t.examples["id"].to_numpy())
    return pd.MultiIndex.from_arrays([ids, ids.groupby(ids, sort=False).cumcount()])


def align(a: Targets, b: Targets) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows_a, rows_b): shared examples, in a's order; (targets_a, targets_b): (M,) indices of their targets."""
    ids_a = a.examples["id"].to_numpy()
    rows_b_all = _keys(b).get_indexer(_keys(a))  # (E_a,) row in b of each a example, -1 if absent
    rows_a = np.flatnonzero(rows_b_all >= 0)
    rows_b = rows_b_all[rows_a]
    if len(rows_a) == 0:
        raise ConfigError(f"{a.path} and {b.path} share no example ids; compare needs two scorings of the same examples")
    counts_a = np.diff(a.starts)[rows_a]
    counts_b = np.diff(b.starts)[rows_b]
    if (counts_a != counts_b).any():
        i = int(np.flatnonzero(counts_a != counts_b)[0])
        raise ConfigError(f"example {ids_a[rows_a[i]]!r} has {counts_a[i]} targets in {a.path} and {counts_b[i]} in "
                          f"{b.path}; compare needs the same target tokens (same tokenizer, no truncation)")
    targets_a, targets_b = _ranges(a.starts[rows_a], counts_a), _ranges(b.starts[rows_b], counts_b)
    differ = a.token_id[targets_a] != b.token_id[targets_b]
    if differ.any():
        row = int(a.example[targets_a[np.flatnonzero(differ)[0]]])
        raise ConfigError(f"{a.path} and {b.path}: example {ids_a[row]!r} has different target tokens; "
                          "compare needs both scored with the same tokenizer")
    return rows_a, rows_b, targets_a, targets_b


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + c) over (starts, counts), without a Python loop."""
    total = int(counts.sum())
    group_start = np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + (np.arange(total) - group_start)


def compare(a: Targets, b: Targets, n: int = 20, min_count: int = 5, bins: int = 10) -> dict:
    """Shifts from a to b over the shared targets (see the module docstring). Returns:

    summary          JSON-able dict: paths, models, examples/targets compared, only_in_a, only_in_b, mean_p_a,
                     mean_p_b, shift (mean_p_b - mean_p_a), median_delta_p, mean_delta_logprob, frac_up,
                     frac_down, frac_unchanged (delta p > 0, < 0, == 0)
    delta_histogram  delta p in `2 * bins` equal bins over [-1, 1]: bin, left, right, count
    by_position      per relative-position bin: bin, left, right, count, mean_p_a, mean_p_b, mean_delta_p
    tokens_moved     per token id seen >= min_count times: token_id, count, mean_p_a, mean_p_b, mean_delta_p,
                     mean_delta_logprob; sorted by |mean_delta_p| (largest first)
    targets_moved    the n targets with the largest |delta p|: id, position, token_id, p_a, p_b, delta_p
    examples_changed per shared example: id, num_targets, mean_p_a, mean_p_b, delta_mean_p; sorted by |delta_mean_p|
    """
    rows_a, rows_b, ta, tb = align(a, b)
    p_a, p_b = a.prob[ta], b.prob[tb]
    d_p, d_lp = p_b - p_a, b.logprob[tb] - a.logprob[ta]
    m = len(ta)
    summary = {
        "a": a.path, "b": b.path, "model_a": a.meta.get("model", {}).get("name"), "model_b": b.meta.get("model", {}).get("name"),
        "examples": len(rows_a), "targets": m, "only_in_a": a.num_examples - len(rows_a), "only_in_b": b.num_examples - len(rows_b),
        "mean_p_a": p_a.mean() if m else None, "mean_p_b": p_b.mean() if m else None,
        "shift": d_p.mean() if m else None, "median_delta_p": np.median(d_p) if m else None,
        "mean_delta_logprob": d_lp.mean() if m else None, "frac_up": (d_p > 0).mean() if m else None,
        "frac_down": (d_p < 0).mean() if m else None, "frac_unchanged": (d_p == 0).mean() if m else None,
    }
    edges = np.linspace(-1.0, 1.0, 2 * bins + 1)
    hist_index = np.clip(((d_p + 1.0) / 2.0 * 2 * bins).astype(np.int64), 0, 2 * bins - 1)
    histogram = pd.DataFrame({"bin": np.arange(2 * bins), "left": edges[:-1], "right": edges[1:],
                              "count": np.bincount(hist_index, minlength=2 * bins)})
    pos = position_bins(a.rel_position[ta], bins)
    by_pos = pd.concat([bin_edges_frame(bins), group_stats(pos, bins, p_a)[["count", "mean_p"]].rename(columns={"mean_p": "mean_p_a"})],
                       axis=1).assign(mean_p_b=group_stats(pos, bins, p_b)["mean_p"].to_numpy())
    by_pos["mean_delta_p"] = by_pos["mean_p_b"] - by_pos["mean_p_a"]
    frame = pd.DataFrame({"token_id": a.token_id[ta], "p_a": p_a, "p_b": p_b, "delta_p": d_p, "delta_logprob": d_lp})
    tokens = frame.groupby("token_id", sort=True).agg(count=("p_a", "size"), mean_p_a=("p_a", "mean"), mean_p_b=("p_b", "mean"),
                                                      mean_delta_p=("delta_p", "mean"), mean_delta_logprob=("delta_logprob", "mean"))
    tokens = tokens[tokens["count"] >= min_count].reset_index()
    tokens = tokens.iloc[np.argsort(-tokens["mean_delta_p"].abs().to_numpy(), kind="stable")].reset_index(drop=True)
    top = np.argsort(-np.abs(d_p), kind="stable")[:n]
    ids = a.examples["id"].to_numpy()
    targets_moved = pd.DataFrame({"id": ids[a.example[ta[top]]], "position": a.position[ta[top]], "token_id": a.token_id[ta[top]],
                                  "p_a": p_a[top], "p_b": p_b[top], "delta_p": d_p[top]})
    ex_a, ex_b = a.examples.iloc[rows_a], b.examples.iloc[rows_b]
    examples = pd.DataFrame({"id": ex_a["id"].to_numpy(), "num_targets": ex_a["num_targets"].to_numpy(),
                             "mean_p_a": ex_a["mean_p"].to_numpy(), "mean_p_b": ex_b["mean_p"].to_numpy()})
    examples["delta_mean_p"] = examples["mean_p_b"] - examples["mean_p_a"]
    order = np.argsort(-np.nan_to_num(examples["delta_mean_p"].abs().to_numpy(), nan=-1.0), kind="stable")
    return {"summary": jsonable(summary), "delta_histogram": histogram, "by_position": by_pos, "tokens_moved": tokens,
            "targets_moved": targets_moved, "examples_changed": examples.iloc[order].reset_index(drop=True)}
