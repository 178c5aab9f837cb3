"""The numbers of one evaluation, from its rows: accuracy with its interval, avg@N, pass@k, maj@N.

    s = eval_scores(rows, samples=4, pass_k=[1, 4], seed=0)
    s["accuracy"], s["interval"]      # the mean over every draw, its 95% interval (and how it was made)
    s["avg@4"], s["pass@1"], s["pass@4"], s["maj@4"]   # each {"value", "interval"}
    s["outcomes"]                     # right / wrong / no_answer (and timeouts among the wrong)

rows: one dict per (example, sample) with id, sample, correct, verdict ("right", "wrong",
"no_answer"), answer, in input order. With one draw per example the interval is Wilson's; with
several (samples) a bootstrap over examples, each example's draws kept together. avg@N is the
mean over every draw, named so: never the first draw's accuracy (the BLL scripts' `acc`).
maj@N: the most frequent answer among an example's N draws (ties: the earliest; draws with no
answer do not vote), right when that answer was graded right.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from tokensft.evaluate.intervals import cluster_bootstrap, pass_at_k, wilson


def by_example(rows: list[dict], samples: int) -> tuple[list[str], np.ndarray, list[list]]:
    """(ids in input order, (E, N) 0/1 correctness, per example its N (answer, correct) draws)."""
    ids, index, draws = [], {}, []
    for row in rows:
        if row["id"] not in index:
            index[row["id"]] = len(ids)
            ids.append(row["id"])
            draws.append([None] * samples)
        draws[index[row["id"]]][row["sample"]] = (row["answer"], bool(row["correct"]))
    correct = np.array([[float(d[1]) if d is not None else 0.0 for d in example] for example in draws]).reshape(
        len(ids), samples)
    return ids, correct, draws


def majority(draws: list) -> bool:
    """Whether the most frequent answer of an example's draws (ties: earliest; None does not vote) was right."""
    answers = [d for d in draws if d is not None and d[0] is not None]
    if not answers:
        return False
    counts = Counter(a for a, _ in answers)
    top = max(counts.values())
    winner = next(a for a, _ in answers if counts[a] == top)
    return next(c for a, c in answers if a == winner)


def eval_scores(rows: list[dict], samples: int, pass_k: list[int], seed: int = 0) -> dict:
    """Every number of one evaluation (see the module docstring); None values without rows."""
    ids, correct, draws = by_example(rows, samples)
    n = len(ids)
    outcomes = Counter(row["verdict"] for row in rows)
    out = {
        "examples": n, "draws": int(correct.size),
        "outcomes": {"right": outcomes.get("right", 0), "wrong": outcomes.get("wrong", 0),
                     "no_answer": outcomes.get("no_answer", 0),
                     "timeout": sum(1 for r in rows if r.get("note") == "timeout")},
    }
    if n == 0:
        return {**out, "accuracy": None, "interval": None, "interval_method": None}
    accuracy = float(correct.mean())
    if samples == 1:
        interval, method = wilson(int(correct.sum()), n), "Wilson score, 95%"
    else:
        interval, method = cluster_bootstrap(correct, seed), "bootstrap over examples (draws kept together), 95%"
    out.update(accuracy=accuracy, interval=list(interval), interval_method=method)
    if samples > 1:
        out[f"avg@{samples}"] = {"value": accuracy, "interval": list(interval)}
        right = correct.sum(axis=1).astype(int)  # (E,)
        for k in pass_k:
            per = np.array([pass_at_k(samples, int(c), k) for c in right])
            out[f"pass@{k}"] = {"value": float(per.mean()), "interval": list(cluster_bootstrap(per, seed))}
        per = np.array([float(majority(d)) for d in draws])
        out[f"maj@{samples}"] = {"value": float(per.mean()), "interval": list(cluster_bootstrap(per, seed))}
    return out
