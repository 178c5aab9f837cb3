"""A sweep's verdicts on one held-out set, from its evals' rows: per arm, the accuracy over every
draw with its 95% interval, the paired difference from the baseline arm with its interval and a
verdict, and the transitions against the untrained model; the ranking by verdict.

    draws = read_draws(eval_dir)                       # {example id: [correct of draw 0, 1, ...]}
    judged = judge_set({arm: [draws of seed 0, seed 1, ...]}, initial_draws, baseline="nll")
    judged["arms"][i]["vs_baseline"]                   # {"difference", "interval", "verdict", "mcnemar_p"}
    judged["ranking"], judged["lead"]                  # better first; the top two, paired

Every arm is compared on the same examples (those every eval of the set has, in the baseline's
order), its draws (seeds x samples) kept together per example. McNemar's exact p is given for one
greedy draw per example (one seed, one sample), where each example has one binary outcome.
Transitions pair each draw with the untrained model's draw of the same sample index: right -> wrong
counts what training broke, wrong -> right what it fixed (totals over seeds, and per draw).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tokensft.evaluate.intervals import cluster_bootstrap, mcnemar, paired_bootstrap, verdict, wilson

ORDER = {"better": 0, "baseline": 1, "not distinguishable": 1, "worse": 2}


def read_draws(eval_dir: Path) -> dict[str, list[bool]]:
    """{example id: its draws' correctness, by sample} of one eval output, in its examples' order."""
    out: dict[str, list[bool]] = {}
    for row in pq.read_table(Path(eval_dir) / "examples.parquet", columns=["id", "sample", "correct"]).to_pylist():
        draws = out.setdefault(row["id"], [])
        draws.extend([False] * (row["sample"] + 1 - len(draws)))
        draws[row["sample"]] = bool(row["correct"])
    return out


def _matrix(per_seed: list[dict[str, list[bool]]], ids: list[str]) -> np.ndarray:
    """(E, seeds x samples) 0/1 correctness of the examples `ids`."""
    if not ids:
        return np.zeros((0, 0))
    return np.array([[float(c) for seed in per_seed for c in seed[i]] for i in ids]).reshape(len(ids), -1)


def _interval(scores: np.ndarray, seed: int) -> list[float] | None:
    if scores.size == 0:
        return None
    if scores.shape[1] == 1:  # one draw per example: Wilson's interval of a proportion
        return list(wilson(int(scores.sum()), len(scores)))
    return list(cluster_bootstrap(scores, seed))


def transitions(per_seed: list[dict[str, list[bool]]], initial: dict[str, list[bool]], ids: list[str]) -> dict:
    """Right -> wrong ("broke") and wrong -> right ("fixed") against the untrained model, draw by draw."""
    broke = fixed = draws = 0
    for seed in per_seed:
        for i in ids:
            for j, correct in enumerate(seed[i]):
                before = initial[i][j] if j < len(initial[i]) else initial[i][0]
                broke += before and not correct
                fixed += correct and not before
                draws += 1
    per = len(per_seed) * max((len(per_seed[0][i]) for i in ids), default=1) if per_seed else 1
    return {"broke": int(broke), "fixed": int(fixed), "draws": int(draws),
            "broke_per_draw": broke / per if per else None, "fixed_per_draw": fixed / per if per else None,
            "examples": len(ids)}


def judge_set(arms: dict[str, list[dict[str, list[bool]]]], initial: dict[str, list[bool]] | None, baseline: str,
              seed: int = 0) -> dict:
    """Every arm of one held-out set judged (see the module docstring). arms: {arm spec: one draws
    dict per seed}, in the sweep's arm order; baseline: the spec every arm is compared with."""
    if baseline not in arms:
        raise ValueError(f"the baseline arm {baseline!r} is not among {list(arms)}")
    everyone = [d for per_seed in arms.values() for d in per_seed] + ([initial] if initial else [])
    ids = [i for i in arms[baseline][0] if all(i in d for d in everyone)]
    base = _matrix(arms[baseline], ids)
    rows = []
    for spec, per_seed in arms.items():
        scores = _matrix(per_seed, ids)  # (E, D)
        per_seed_acc = [float(np.mean([np.mean(d[i]) for i in ids])) if ids else None for d in per_seed]
        row = {"arm": spec, "accuracy": float(scores.mean()) if scores.size else None,
               "interval": _interval(scores, seed), "accuracy_per_seed": per_seed_acc,
               "accuracy_sd": float(np.std(per_seed_acc, ddof=1)) if len(per_seed_acc) > 1 else None,
               "examples": len(ids), "draws_per_example": int(scores.shape[1]) if scores.size else 0}
        if spec == baseline:
            row["vs_baseline"] = {"difference": 0.0, "interval": None, "verdict": "baseline", "mcnemar_p": None}
        else:
            paired = paired_bootstrap(scores, base, seed)
            one_draw = scores.shape[1] == 1 and base.shape[1] == 1
            b = int(((scores[:, 0] == 1) & (base[:, 0] == 0)).sum()) if one_draw else None
            c = int(((scores[:, 0] == 0) & (base[:, 0] == 1)).sum()) if one_draw else None
            row["vs_baseline"] = {**paired, "verdict": verdict(paired),
                                  "mcnemar_p": mcnemar(b, c) if one_draw else None, "only_arm": b, "only_baseline": c}
        row["transitions"] = transitions(per_seed, initial, ids) if initial else None
        rows.append(row)
    ranked = sorted(rows, key=lambda r: (ORDER[r["vs_baseline"]["verdict"]], -(r["accuracy"] or 0.0), r["arm"]))
    lead = None
    if len(ranked) > 1:
        first, second = ranked[0]["arm"], ranked[1]["arm"]
        paired = paired_bootstrap(_matrix(arms[first], ids), _matrix(arms[second], ids), seed)
        lead = {"arms": [first, second], **paired, "verdict": verdict(paired)}
    initial_row = None
    if initial:
        scores = _matrix([initial], ids)
        initial_row = {"accuracy": float(scores.mean()) if scores.size else None, "interval": _interval(scores, seed)}
    return {"arms": rows, "ranking": [r["arm"] for r in ranked], "lead": lead, "baseline": baseline,
            "initial": initial_row, "examples": len(ids)}
