"""The capability continuum in miniature: does the papers' central finding reproduce on SmolLM2-135M?

    python benchmarks/continuum.py --out /tmp/continuum              # the full run (target: <= 90 min on 2 CPU cores)
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
Each regime is judged on three held-out sets, the papers' protocol in miniature:
- in-domain: the training task, clean (as above);
- harder: the same skill further out -- two-digit additions (21..99, carries) for model-strong,
  the code words asked in phrasings never trained on for model-weak ("generalization", as BLL and
  DFT report other benchmarks of the training domain);
- retention: short general questions unrelated to training (capitals, colours, opposites...) that
  the *untrained* model answers right (a probe eval keeps those it gets right, metric contains):
  what the prior-leaning objectives claim to keep. Its transitions count what training broke.
For each regime: `tokensft score` the training split, its mean target p as `tokensft report`
computes it (the continuum measure), then one `tokensft sweep` over the arms (default nll, p,
threshold-nll:0.2, profit:0.1, dft) and seeds (0, 1, 2) with the same settings, all three sets
(greedy), every arm paired against nll on the same examples; and, for seed 0 of each arm, the mask
drift of the stored p against a rescore of the training split under the trained model.

Printed: per regime its mean target p; per set and arm the accuracy with its 95% interval, the
verdict against nll (paired bootstrap over examples, seeds kept together) and what training broke
and fixed; and per claim (strong end: a prior-leaning arm better than nll; weak end: p worse than
nll) reproduced / contradicted / not distinguishable. Everything is written to OUT/continuum.json.
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
WEAK_HARDER = ["Remind me, which word encodes the colour {c}?", "If the colour is {c}, what word do we use?"]
RETENTION = [  # (question, answer the completion must contain): general knowledge a small instruct model has
    ("What is the capital of France?", "Paris"), ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Japan?", "Tokyo"), ("What color is grass?", "green"), ("What color is the sky?", "blue"),
    ("What is the opposite of hot?", "cold"), ("What is the opposite of up?", "down"),
    ("What animal says meow?", "cat"), ("What animal barks?", "dog"), ("What do bees make?", "honey"),
    ("What is frozen water called?", "ice"), ("What is the first month of the year?", "January"),
    ("How many days are in a week?", "seven"), ("What is the largest planet in our solar system?", "Jupiter"),
    ("What star is at the centre of our solar system?", "Sun"), ("What language is spoken in Spain?", "Spanish"),
    ("What is the boiling point of water in Celsius?", "100"), ("Which ocean is the largest?", "Pacific"),
    ("What is the chemical symbol for gold?", "Au"), ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("What fruit is yellow and curved?", "banana"), ("What is 10 times 10?", "100"),
    ("What do you call a baby cat?", "kitten"), ("What season comes after winter?", "spring"),
]


def strong_harder(n: int, rng: random.Random) -> list:
    pairs = [(a, b) for a in range(21, 100) for b in range(21, 100)]
    return [{"id": f"s-hard-{i}", "question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
            for i, (a, b) in enumerate(rng.sample(pairs, n))]


def weak_harder() -> list:
    return [{"id": f"w-hard-{t}-{k}", "question": q.format(c=c), "answer": code}
            for t, q in enumerate(WEAK_HARDER) for k, (c, code) in enumerate(zip(COLOURS, CODES))]


def retention(out: Path, model: str) -> tuple[Path, int]:
    """The retention items the untrained model answers right (a greedy probe eval, metric contains)."""
    candidates = write_jsonl(out / "data" / "retention-candidates.jsonl",
                             [{"id": f"r-{i}", "question": q, "answer": a} for i, (q, a) in enumerate(RETENTION)])
    probe = out / "retention-probe"
    tokensft("eval", model, candidates, "-o", probe, "--metric", "contains", "--max-new-tokens", "24",
             "--no-teacher-forced", "-q")
    import pyarrow.parquet as pq

    right = {r["id"] for r in pq.read_table(probe / "examples.parquet").to_pylist() if r["correct"]}
    kept = [{"id": f"r-{i}", "question": q, "answer": a} for i, (q, a) in enumerate(RETENTION) if f"r-{i}" in right]
    return write_jsonl(out / "data" / "retention.jsonl", kept), len(RETENTION)


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


def regime(name: str, train: Path, sets: list[str], out: Path, args, train_flags: list[str]) -> dict:
    from tokensft.analysis import load_targets, mask_drift, summary
    from tokensft.evaluate.sweep_config import job_dir, parse_arms

    began = time.perf_counter()
    scored = out / name / "scored"
    tokensft("score", train, "-o", scored, "--model", args.model, "-q")
    measured = summary(load_targets(scored, topk=False))  # what `tokensft report` shows for this data
    sweep_dir = out / name / "sweep"
    tokensft("sweep", scored, "--objectives", args.arms, *(f"--eval={s}" for s in sets), "-o", sweep_dir,
             "--seeds", args.seeds, "--baseline", "nll", "--model", args.model, "--max-new-tokens", "24", "-q",
             *train_flags)
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


def claims(strong: dict | None, weak: dict | None) -> dict:
    """Per regime and set, the papers' claim judged by the paired verdicts against nll. Strong end,
    "the prior-leaning objectives beat nll": reproduced if one of them is better, contradicted if one
    is worse and none better, else not distinguishable. Weak end, "nll beats p": reproduced if p is
    worse, contradicted if p is better. Each with the verdicts it rests on."""
    out = {}
    for name, r in (("strong", strong), ("weak", weak)):
        if r is None:
            continue
        for set_name, judged in r["sweep"]["sets"].items():
            verdicts = {a["arm"]: a["vs_baseline"]["verdict"] for a in judged["arms"] if a["arm"] != "nll"}
            if name == "strong":
                seen = set(verdicts.values())
                claim = "reproduced" if "better" in seen else "contradicted" if "worse" in seen else "not distinguishable"
            else:
                verdicts = {"p": verdicts.get("p")}
                claim = {"worse": "reproduced", "better": "contradicted"}.get(verdicts["p"], "not distinguishable")
            out[f"{name}/{set_name}"] = {"claim": claim, "verdicts": verdicts}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="continuum-out")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--arms", default="nll,p,threshold-nll:0.2,profit:0.1,dft")
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
    s_hard = strong_harder(n_heldout, rng)
    w_train, w_held = weak_data(1)
    data = out / "data"
    paths = {name: write_jsonl(data / f"{name}.jsonl", records) for name, records in
             (("strong-train", s_train), ("strong-heldout", s_held), ("strong-harder", s_hard),
              ("weak-train", w_train), ("weak-heldout", w_held), ("weak-harder", weak_harder()))}
    began = time.perf_counter()
    kept, candidates = retention(out, args.model)
    common = ["--batch-size", "8", "--warmup", "0.1"]
    regimes = set(args.regimes.split(","))
    retained = f"retention={kept}:contains"
    strong = regime("strong", paths["strong-train"], [f"in-domain={paths['strong-heldout']}:numeric",
                                                      f"harder={paths['strong-harder']}:numeric", retained], out, args,
                    [*common, "--epochs", args.strong_epochs, "--lr", args.strong_lr]) if "strong" in regimes else None
    weak = regime("weak", paths["weak-train"], [f"in-domain={paths['weak-heldout']}:exact",
                                                f"harder={paths['weak-harder']}:exact", retained], out, args,
                  [*common, "--epochs", "1" if args.quick else "2", "--lr", "1e-4"]) if "weak" in regimes else None
    report = {"strong": strong, "weak": weak, "claims": claims(strong, weak), "retention_kept": [
        sum(1 for _ in open(kept, encoding="utf-8")), candidates],
              "noise": args.noise, "strong_epochs": args.strong_epochs, "strong_lr": args.strong_lr,
              "corrupted": corrupted, "sizes": {k: len(v) for k, v in (("strong_train", s_train), ("strong_heldout", s_held),
                                                                        ("weak_train", w_train), ("weak_heldout", w_held))},
              "arms": args.arms, "seeds": args.seeds, "seconds": round(time.perf_counter() - began, 1)}
    (out / "continuum.json").write_text(json.dumps(report, indent=2, sort_keys=True), encoding="utf-8")
    for name, r in (("model-strong", strong), ("model-weak", weak)):
        if r is None:
            continue
        print(f"\n{name}: training mean target p {r['mean_p']:.3f} ({r['regime']}), {r['seconds']:.0f} s")
        for set_name, judged in r["sweep"]["sets"].items():
            initial = judged.get("initial") or {}
            print(f"  {set_name} ({judged['metric']}, {judged['examples']} examples; before training "
                  f"{initial.get('accuracy', float('nan')):.3f})")
            by_arm = {a["arm"]: a for a in judged["arms"]}
            for spec in judged["ranking"]:
                a = by_arm[spec]
                vs, moved = a["vs_baseline"], a.get("transitions") or {}
                ci = f"[{a['interval'][0]:.3f}, {a['interval'][1]:.3f}]" if a.get("interval") else ""
                diff = f"{vs['difference']:+.3f} [{vs['interval'][0]:+.3f}, {vs['interval'][1]:+.3f}]" if vs.get("interval") else ""
                print(f"    {spec:<20} {a['accuracy']:.3f} {ci}  vs nll {diff} {vs['verdict']}; "
                      f"fixed {moved.get('fixed')}, broke {moved.get('broke')}")
        for arm in r["sweep"]["arms"]:
            drift = ", ".join(f"{k} {v:.3f}" for k, v in arm.get("drift", {}).items())
            print(f"  drift (flipped, seed 0) {arm['arm']}: {drift}")
    print("\nthe papers' claims, per regime and set (verdicts against nll):")
    for key, c in report["claims"].items():
        print(f"  {key:<20} {c['claim']:<20} " + ", ".join(f"{arm} {v}" for arm, v in c["verdicts"].items()))
    print(f"({report['seconds']:.0f} s in all; corrupted {corrupted} of {len(s_train)} strong training responses; "
          f"retention: {report['retention_kept'][0]} of {report['retention_kept'][1]} candidates kept)")


if __name__ == "__main__":
    main()
