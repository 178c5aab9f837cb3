"""Where a dataset sits on the model-capability continuum, and the training objectives that suggests.

Beyond Log Likelihood (Li et al., arXiv 2510.00526; PAPERS.md section 1) measures the continuum by
the mean predicted probability of the training target tokens, (1/N) sum_i p0_i, over all N targets
(token level, not averaged per example), under the model before training. Its reference points:

    math (Qwen2.5-Math)   ~0.76-0.81   model-strong: -p and -log p 1[p >= 0.2] beat NLL by a wide margin
    medical               ~0.50        intermediate: no clear winner
    figfont puzzles       ~0.01        model-weak:   NLL wins; -p collapses to 0 exact match

The paper publishes no cut-offs. The regimes here split at the midpoints between adjacent
reference points, rounded: model-strong when mean p >= 0.65 (between 0.5 and 0.8), model-weak
when mean p < 0.25 (between 0.01 and 0.5), intermediate between. Within 0.05 of a cut-off the
guidance says the data lies between two regimes. All of it is guidance, never a verdict: the
objectives named are arms of the one `tokensft sweep` (`sweep_command`) that measures them against
an NLL baseline on the user's own held-out data. Beside the papers' points stand this project's own
measurements (`PROJECT_POINTS`, the miniature of benchmarks/continuum.py), which contradict the
papers at the strong end.
"""

from __future__ import annotations

import numpy as np

from tokensft.analysis.tables import LOW_P, nan_to_none
from tokensft.analysis.targets import Targets

STRONG_MIN = 0.65  # midpoint of the medical (0.5) and math (0.8) reference points
WEAK_MAX = 0.25  # midpoint of the figfont (0.01) and medical (0.5) reference points, rounded down
NEAR = 0.05  # closer than this to a cut-off: "between two regimes"
FEW_TARGETS = 1000  # below this the mean is a rough estimate
BLL = "Li et al., Beyond Log Likelihood, arXiv 2510.00526"
REFERENCE_POINTS = (
    {"label": "math", "mean_p": 0.8, "range": [0.76, 0.81], "regime": "model-strong", "source": BLL,
     "finding": "-p and -log p 1[p >= 0.2] beat NLL (Qwen2.5-Math-7B math average 22.67 -> 36.51 / 38.16)"},
    {"label": "medical", "mean_p": 0.5, "range": [0.5, 0.5], "regime": "intermediate", "source": BLL,
     "finding": "no clear winner between NLL and the probability-based objectives"},
    {"label": "figfont puzzles", "mean_p": 0.01, "range": [0.01, 0.01], "regime": "model-weak", "source": BLL,
     "finding": "NLL wins; -p collapses (Qwen2.5-7B exact match 35.2 with NLL, 0.0 with -p)"},
)

MINIATURE = ("tokensft benchmarks/continuum.py: SmolLM2-135M-Instruct, 5 arms x 3 seeds, greedy, every arm paired "
             "against nll (95% paired bootstrap over examples; README, Evidence)")
# What this project's own miniature of the continuum measured (the README's Evidence table): the
# evidence the report puts beside the papers'. Accuracies over every draw of 3 seeds; verdicts vs nll.
PROJECT_POINTS = (
    {"label": "miniature model-strong (additions, 27% wrong answers)", "mean_p": 0.661, "regime": "model-strong",
     "source": MINIATURE, "claim": "contradicted",
     "finding": "in-domain nll 0.677; p and dft 0.490, threshold-nll:0.2 0.510 worse at 95%, profit:0.1 0.594 not "
                "distinguishable; two-digit additions: nll 0.354, p and dft 0.146 worse; retention: prior-leaning arms "
                "0.92-0.94 vs nll 0.86, not distinguishable"},
    {"label": "miniature model-weak (code words)", "mean_p": 0.007, "regime": "model-weak", "source": MINIATURE,
     "claim": "reproduced",
     "finding": "unseen phrasings: nll 0.104, every other arm 0.000, worse at 95% (in-domain: not distinguishable); "
                "but on retention every arm forgot, and p and dft kept more than nll (0.167 vs 0.000)"},
)


def nearest_project_point(mean_p: float | None) -> dict | None:
    """The project's own measurement closest to `mean_p` on the continuum."""
    if mean_p is None:
        return None
    return dict(min(PROJECT_POINTS, key=lambda point: abs(point["mean_p"] - mean_p)))


def sweep_command(directory: str, recommendation: dict) -> str:
    """The one `tokensft sweep` that measures the guidance on this data: nll as baseline and every
    objective the guidance names, 3 seeds, a held-out placeholder to fill in."""
    arms = list(dict.fromkeys(["nll", *recommendation.get("objectives", []), *recommendation.get("also", [])]))
    return (f"tokensft sweep {directory} --objectives {','.join(arms)} --baseline nll --eval HELDOUT.jsonl "
            "--seeds 0,1,2 -o sweep/")


def continuum(t: Targets) -> dict:
    """Token-level mean_p (the BLL metric), median_p, frac_below_0_1 (p < 0.1), mean_logprob, the per-example
    variant mean_p_by_example (mean over examples with targets of their mean p), the reference points,
    and `recommendation` (see `recommend`). Statistics are None when there are no targets."""
    n = t.num_targets
    per_example = t.examples["mean_p"].to_numpy()
    stats = {
        "targets": n,
        "mean_p": float(t.prob.mean()) if n else None,
        "median_p": float(np.median(t.prob)) if n else None,
        "frac_below_0_1": float((t.prob < LOW_P).mean()) if n else None,
        "mean_logprob": float(t.logprob.mean()) if n else None,
        "mean_p_by_example": nan_to_none(per_example[~np.isnan(per_example)].mean()) if (~np.isnan(per_example)).any() else None,
        "reference_points": [dict(r) for r in REFERENCE_POINTS],
        "project_points": [dict(r) for r in PROJECT_POINTS],
        "thresholds": {"model_strong_min": STRONG_MIN, "model_weak_max": WEAK_MAX},
    }
    stats["recommendation"] = recommend(stats["mean_p"], stats["median_p"], stats["frac_below_0_1"], n,
                                        model=t.meta.get("model", {}).get("name"), has_refs=bool(t.ref_columns),
                                        has_teacher=t.teacher_topk_ids is not None or t.teacher_logprob is not None)
    stats["nearest_project_point"] = nearest_project_point(stats["mean_p"])
    return stats


def regime(mean_p: float) -> str:
    return "model-strong" if mean_p >= STRONG_MIN else "model-weak" if mean_p < WEAK_MAX else "intermediate"


def recommend(mean_p: float | None, median_p: float | None, frac_below: float | None, targets: int,
              model: str | None = None, has_refs: bool = False, has_teacher: bool = False) -> dict:
    """Guidance from the mean target probability: regime, objectives to try (train specs), text, reasoning."""
    if mean_p is None:
        return {"regime": None, "objectives": [], "baseline": "nll", "also": [], "avoid": [], "near_boundary": False,
                "text": "No target tokens: nothing to place on the continuum.", "reasoning": []}
    name = regime(mean_p)
    near = min(abs(mean_p - STRONG_MIN), abs(mean_p - WEAK_MAX)) < NEAR
    where = (f"mean target probability {mean_p:.3f} (median {median_p:.3f}; {frac_below:.1%} of targets below {LOW_P})")
    reasoning = [f"The continuum is measured as BLL does: the mean of p over all {targets:,} target tokens under "
                 f"the scorer{f' ({model})' if model else ''}; it describes the model you will fine-tune only if that "
                 "is the scorer.",
                 f"The papers publish no cut-offs; this report splits at {WEAK_MAX} and {STRONG_MIN}, the midpoints "
                 "between BLL's reference points (figfont ~0.01, medical ~0.5, math ~0.76-0.81)."]
    if name == "model-strong":
        objectives, avoid = ["p", "threshold-nll:0.2", "dft", "profit:0.1"], []
        text = (f"The {where} places this data on the model-strong side of the continuum, nearer BLL's math reference "
                "point (~0.8) than medical (~0.5): the model already predicts most targets. "
                "This suggests the model-strong regime: consider -p (`p`), -log p on tokens with p >= 0.2 "
                "(`threshold-nll:0.2`), DFT (`dft`) or ProFit (`profit:0.1`), each against an NLL baseline.")
        reasoning += ["BLL: on math (mean p ~0.8) -p and -log p 1[p >= 0.2] beat NLL (Qwen2.5-Math-1.5B 17.00 -> 32.75 / "
                      "32.04; 7B 22.67 -> 36.51 / 38.16).",
                      "DFT has exactly -p's gradient (DFT paper: Qwen2.5-Math-1.5B 18.01 with SFT -> 31.58).",
                      f"ProFit (tau = 0.1) would drop the {frac_below:.1%} of targets below 0.1 and train on the rest."]
    elif name == "model-weak":
        objectives, avoid = ["nll"], ["p", "dft", "power:10", "threshold-p:0.2", "threshold-nll:0.2", "profit:0.1"]
        text = (f"The {where} places this data on the model-weak side of the continuum, nearer BLL's figfont reference "
                "point (~0.01) than medical (~0.5): the model rarely predicts the targets. "
                "This suggests the model-weak regime: consider plain NLL (`nll`); prior-leaning objectives "
                "(-p, DFT, -p^10, thresholds) put little weight on exactly the tokens that dominate here.")
        reasoning += ["BLL: on figfont puzzles (mean p ~0.01) NLL reached 35.2 exact match and -p 0.0.",
                      f"A probability threshold would discard most of the data: {frac_below:.1%} of targets are below 0.1 "
                      "(ProFit's default keeps p >= 0.1)."]
    else:
        objectives, avoid = ["nll", "p", "profit:0.1"], []
        text = (f"The {where} lies between BLL's reference points, nearest medical (~0.5), where no objective won clearly. "
                "This suggests the intermediate regime: consider NLL (`nll`) and -p (`p`) side by side, and ProFit "
                "(`profit:0.1`), and let a held-out evaluation decide.")
        reasoning += ["BLL: on medical data (mean p ~0.5) there was no clear winner between NLL and -p.",
                      f"ProFit (tau = 0.1) would drop {frac_below:.1%} of targets."]
    if near:
        text += " The value is within 0.05 of a cut-off, so the neighbouring regime's advice applies as much."
    if targets < FEW_TARGETS:
        reasoning.append(f"Only {targets:,} targets: the mean is a rough estimate; score more data before relying on it.")
    also = []
    if has_refs:
        also.append("poft")
        reasoning.append("References are present: PoFT (`poft`) down-weights examples the references find unlikely "
                         "(reported +1.58 / +2.17 points over SFT for Mistral-7B / Llama-3-8B on OpenHermes).")
    if has_teacher:
        also.append("qtarget:gamma=p,prior=teacher")
        reasoning.append("A teacher is present: a Q-target mixing the observed token with the teacher's top-k "
                         "(`qtarget:gamma=p,prior=teacher`) is available; the Target-SFT paper's exact recipe is unconfirmed.")
    return {"regime": name, "objectives": objectives, "baseline": "nll", "also": also, "avoid": avoid,
            "near_boundary": near, "text": text, "reasoning": reasoning}


def _family(spec: str) -> str | None:
    """An arm's objective family: "threshold-nll:0.2" -> "threshold-nll". A stored mask makes another
    method: nll@prob>=T is ProFit's mask at step 0 ("profit"); any other masked arm has no family
    the guidance names (None)."""
    objective, _, mask = spec.partition("@")
    family = objective.split(":")[0].strip().lower()
    if not mask:
        return family
    return "profit" if family == "nll" and mask.replace(" ", "").startswith("prob>=") else None


VERDICT_ORDER = {"better": 0, "baseline": 1, "not distinguishable": 1, "worse": 2}


def agreement(arms: list[dict], recommendation: dict, lead: dict | None = None) -> dict:
    """A measured ranking against the guidance (`recommend`), compared by objective family.

    arms: one dict per arm with "arm" (its spec, OBJECTIVE[@MASK]), "accuracy" (mean over every
    draw), "accuracy_sd" (over seeds) and, from a sweep, "vs_baseline" (its paired verdict against
    the baseline arm): arms are ranked by that verdict (better first, worse last), then by accuracy.
    lead: the paired comparison of the top two arms ({"verdict", "difference", "interval"}).
    Returns best (the top arm), agree (its objective is among the recommended ones; None without a
    measurement), contradicts (it is among those the guidance says to avoid), lead (over the
    runner-up) and within_noise: the top two are not distinguishable at 95% (from `lead`; without
    it, whether the lead is no larger than the larger spread over seeds; None with one seed or arm).
    """
    def rank(a):
        return VERDICT_ORDER.get((a.get("vs_baseline") or {}).get("verdict"), 1), -a["accuracy"], a["arm"]

    ranked = sorted((a for a in arms if a.get("accuracy") is not None), key=rank)
    out = {"regime": recommendation.get("regime"), "recommended": recommendation.get("objectives", []),
           "best": None, "agree": None, "contradicts": None, "lead": None, "within_noise": None,
           "lead_interval": None}
    if not ranked:
        return out
    best = ranked[0]
    family = _family(best["arm"])
    known = family is not None
    out.update(best=best["arm"], agree=family in {_family(o) for o in out["recommended"]} if known else None,
               contradicts=family in {_family(o) for o in recommendation.get("avoid", [])} if known else None)
    if len(ranked) > 1:
        out["lead"] = best["accuracy"] - ranked[1]["accuracy"]
        if lead is not None and lead.get("arms", [None])[0] == best["arm"]:
            out["within_noise"] = lead["verdict"] == "not distinguishable"
            out["lead_interval"] = lead.get("interval")
        else:
            spreads = [best.get("accuracy_sd"), ranked[1].get("accuracy_sd")]
            if all(sd is not None for sd in spreads):  # one seed (or a seed without accuracy): no spread to judge by
                out["within_noise"] = bool(out["lead"] <= max(spreads))
    return out
