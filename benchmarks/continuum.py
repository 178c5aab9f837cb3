"""The capability continuum in miniature: does the papers' central finding reproduce on SmolLM2-135M?

    python benchmarks/continuum.py --out /tmp/continuum              # the full run (target: <= 60 min on 2 CPU cores)
    python benchmarks/continuum.py --out /tmp/continuum --quick      # 1 seed, 2 arms, fewer steps: a smoke run
    python benchmarks/continuum.py --out /tmp/c3 --regimes strong --strong-epochs 3   # the README's variant

A killed run resumes: every step is a tokensft command that skips finished work.

Two regimes, from data generated here (deterministic, no download):
- model-strong: "What is A + B?" (A, B in 1..20), answered "A + B = C\\n#### C" -- a task the model
  mostly does already. A documented fraction of the *training* responses (--noise, 0.3) is
  corrupted (C shifted by a non-zero offset in [-5, 5], in the equation and after ####); the
  held-out split is clean. Metric: numeric.
- model-weak: a fixed code word for each of 8 colours ("What is the code word for red?" ->
  "zorbix"), which the model cannot know in advance. Training and held-out questions use
  different phrasings. Metric: exact.
For each regime: `tokensft score` the training split, its mean target p as `tokensft report`
computes it (the continuum measure), then `tokensft sweep` over the arms (default nll, p,
threshold-nll:0.2, profit:0.1) and seeds (0, 1, 2) with the same settings, held-out accuracy by
generation (greedy) and held-out mean target p; and, for seed 0 of each arm, the mask drift of the
stored p against a rescore of the training split under the trained model.

Printed: per regime its mean target p and regime; per arm accuracy mean +- sd over seeds,
held-out mean p, drift at 0.1 and 0.2; and whether the papers' direction holds (strong end: the
best prior-leaning arm >= nll; weak end: nll > p). Everything is also written to OUT/continuum.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
CODES = ["zorbix", "quelna", "vantro", "mipsel", "drokai", "lufera", "stenvo", "kwalbe"]
WEAK_TRAIN = ["What is the code word for {c}?", "Give me the code word for {c}.", "{C}: what is its code word?",
              "Tell me the code word for the colour {c}.", "Code word for {c}?", "Which code word means {c}?"]
WEAK_HELDOUT = ["What code word goes with {c}?", "Please tell me the code word of the colour {c}."]


def strong_data(n_train: int, n_heldout: int, noise: float, rng: random.Random) -> tuple[list, list, int]:
    pairs = [(a, b) for a in range(1, 21) for b in range(1, 21)]
    rng.shuffle(pairs)
    train, heldout, corrupted = [], [], 0
    for i, (a, b) in enumerate(pairs[:n_train]):
        c = a + b
        if rng.random() < noise:  # noisy supervision: a wrong sum, stated with confidence
            c += rng.choice([d for d in range(-5, 6) if d])
            corrupted += 1
        train.append({"id": f"s-train-{i}", "question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {c}\n#### {c}"})
    for i, (a, b) in enumerate(pairs[n_train:n_train + n_heldout]):
        heldout.append({"id": f"s-held-{i}", "question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
    return train, heldout, corrupted


def weak_data(repeats: int) -> tuple[list, list]:
    train = [{"id": f"w-train-{r}-{t}-{k}", "question": q.format(c=c, C=c.capitalize()), "answer": code}
             for r in range(repeats) for t, q in enumerate(WEAK_TRAIN) for k, (c, code) in enumerate(zip(COLOURS, CODES))]
    heldout = [{"id": f"w-held-{t}-{k}", "question": q.format(c=c, C=c.capitalize()), "answer": code}
               for t, q in enumerate(WEAK_HELDOUT) for k, (c, code) in enumerate(zip(COLOURS, CODES))]
    return train, heldout


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def tokensft(*args: str) -> None:
    from tokensft.cli import main

    code = main([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"tokensft {' '.join(map(str, args))} exited with {code}")


def regime(name: str, train: Path, heldout: Path, out: Path, args, metric: str, train_flags: list[str]) -> dict:
    from tokensft.analysis import load_targets, mask_drift, summary
    from tokensft.evaluate.sweep import job_dir, parse_arms

    began = time.perf_counter()
    scored = out / name / "scored"
    tokensft("score", train, "-o", scored, "--model", args.model, "-q")
    measured = summary(load_targets(scored, topk=False))  # what `tokensft report` shows for this data
    sweep_dir = out / name / "sweep"
    tokensft("sweep", scored, "--objectives", args.arms, "--eval", heldout, "-o", sweep_dir, "--seeds", args.seeds,
             "--model", args.model, "--metric", metric, "--max-new-tokens", "24", "-q", *train_flags)
    results = json.loads((sweep_dir / "results.json").read_text())
    for arm in results["arms"]:  # drift of the stored p against the trained model's, first seed
        spec = parse_arms(arm["arm"])[0]
        model = job_dir(sweep_dir, spec, results["seeds"][0]) / "model"
        rescored = out / name / "rescored" / spec.name
        tokensft("score", train, "-o", rescored, "--model", model, "-q")
        drift = mask_drift(load_targets(scored, topk=False), load_targets(rescored, topk=False))["masks"]
        arm["drift"] = {row["spec"]: row["flipped"] for _, row in drift.iterrows()}
    return {"mean_p": measured["continuum"]["mean_p"], "regime": measured["recommendation"]["regime"], "sweep": results,
            "seconds": round(time.perf_counter() - began, 1)}


def direction(strong: dict, weak: dict) -> dict:
    def acc(r, spec):
        return next((a["accuracy"] for a in r["sweep"]["arms"] if a["arm"] == spec), None)

    arms = [a["arm"] for a in strong["sweep"]["arms"]]
    prior_leaning = [s for s in arms if s != "nll"]
    best_prior = max((acc(strong, s) for s in prior_leaning), default=None)
    return {"strong_best_prior_leaning_ge_nll": None if best_prior is None else best_prior >= acc(strong, "nll"),
            "weak_nll_gt_p": None if acc(weak, "p") is None else acc(weak, "nll") > acc(weak, "p")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="continuum-out")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--arms", default="nll,p,threshold-nll:0.2,profit:0.1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--noise", type=float, default=0.3, help="fraction of strong training responses corrupted")
    parser.add_argument("--strong-epochs", default="1", help="epochs of the model-strong arms")
    parser.add_argument("--strong-lr", default="2e-5", help="learning rate of the model-strong arms")
    parser.add_argument("--regimes", default="strong,weak", help="which regimes to run (a variant may rerun one)")
    parser.add_argument("--quick", action="store_true", help="1 seed, nll and p, small splits: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.arms, args.seeds = "nll,p", "0"
    out = Path(args.out)
    rng = random.Random(0)
    n_train, n_heldout = (16, 8) if args.quick else (64, 32)
    s_train, s_held, corrupted = strong_data(n_train, n_heldout, args.noise, rng)
    w_train, w_held = weak_data(1)
    data = out / "data"
    paths = {name: write_jsonl(data / f"{name}.jsonl", records) for name, records in
             (("strong-train", s_train), ("strong-heldout", s_held), ("weak-train", w_train), ("weak-heldout", w_held))}
    began = time.perf_counter()
    common = ["--batch-size", "8", "--warmup", "0.1"]
    regimes = set(args.regimes.split(","))
    strong = regime("strong", paths["strong-train"], paths["strong-heldout"], out, args, "numeric",
                    [*common, "--epochs", args.strong_epochs, "--lr", args.strong_lr]) if "strong" in regimes else None
    weak = regime("weak", paths["weak-train"], paths["weak-heldout"], out, args, "exact",
                  [*common, "--epochs", "1" if args.quick else "2", "--lr", "1e-4"]) if "weak" in regimes else None
    report = {"strong": strong, "weak": weak, "direction": direction(strong, weak) if strong and weak else None,
              "noise": args.noise, "strong_epochs": args.strong_epochs, "strong_lr": args.strong_lr,
              "corrupted": corrupted, "sizes": {k: len(v) for k, v in (("strong_train", s_train), ("strong_heldout", s_held),
                                                                        ("weak_train", w_train), ("weak_heldout", w_held))},
              "arms": args.arms, "seeds": args.seeds, "seconds": round(time.perf_counter() - began, 1)}
    (out / "continuum.json").write_text(json.dumps(report, indent=2, sort_keys=True), encoding="utf-8")
    for name, r in (("model-strong", strong), ("model-weak", weak)):
        if r is None:
            continue
        print(f"\n{name}: training mean target p {r['mean_p']:.3f} ({r['regime']}), {r['seconds']:.0f} s")
        base = r["sweep"].get("baseline")
        if base:
            print(f"  {'(before training)':<22} accuracy {base['accuracy']:.3f}  held-out mean p {base['heldout_mean_p']:.3f}")
        for arm in r["sweep"]["arms"]:
            sd = f" +- {arm['accuracy_sd']:.3f}" if arm["accuracy_sd"] is not None else ""
            drift = ", ".join(f"{k} {v:.3f}" for k, v in arm.get("drift", {}).items())
            print(f"  {arm['arm']:<22} accuracy {arm['accuracy']:.3f}{sd}  held-out mean p {arm['heldout_mean_p']:.3f}  "
                  f"drift (flipped) {drift}")
    d = report["direction"]
    if d is None:
        return
    print(f"\npapers' direction: strong end, best prior-leaning arm >= nll: {d['strong_best_prior_leaning_ge_nll']}; "
          f"weak end, nll > p: {d['weak_nll_gt_p']}  ({report['seconds']:.0f} s in all; corrupted {corrupted} of "
          f"{len(s_train)} strong training responses)")


if __name__ == "__main__":
    main()
