"""`tokensft eval` and `tokensft sweep`: their flags, and the calls into `tokensft.evaluate`."""

from __future__ import annotations

import argparse
import shlex

from tokensft.commands.common import add_record_flags, add_run_flags, given, nonnegative_int
from tokensft.commands.train import add_train_settings
from tokensft.core.errors import TokensftError
from tokensft.reports import console

SWEEP_SETS = ("data", "output", "objective", "mask", "seed", "overwrite", "quiet", "config")  # per arm, by sweep


def _add_decoding(p):
    """The decoding and answer-check flags (EvalConfig's fields), shared by eval and sweep; returns the group."""
    from tokensft.evaluate.config import EvalConfig as D

    d = p.add_argument_group("decoding and answers")
    d.add_argument("--metric", help="exact, numeric (last number; GSM8K's #### understood), contains, regex:PATTERN "
                                    "(its first group), choice (a letter A-E; none read is no answer), or math "
                                    f"(Math-Verify: last \\boxed{{}} first; needs tokensft[math]) (default {D.metric})")
    d.add_argument("--max-new-tokens", type=int, help=f"tokens generated at most per completion (default {D.max_new_tokens})")
    d.add_argument("--temperature", type=float, help=f"0: greedy (default {D.temperature})")
    d.add_argument("--top-p", type=float, help=f"nucleus sampling mass, with --temperature (default {D.top_p})")
    d.add_argument("--samples", type=int, help="completions per example: avg@N (the mean over every draw, as BLL "
                                               f"reports), pass@k, maj@N; needs --temperature (default {D.samples})")
    d.add_argument("--pass-k", type=_ks, help="comma-separated k of pass@k (unbiased estimator), each <= --samples "
                                              "(default: 1 and N)")
    return d


def _ks(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 1,4") from None


def add(sub) -> None:
    from tokensft.evaluate.config import EvalConfig as D

    p = sub.add_parser(
        "eval", help="held-out task accuracy by generation (and teacher-forced mean target p)",
        description="Generate an answer to every held-out record's prompt (rendered exactly as scoring renders it), "
        "check it against the record's answer, and score the records teacher-forced. Writes examples.parquet and "
        "results.json; a killed run resumes.")
    p.add_argument("model", help="a local HF directory, a `tokensft train` output, a .gguf file, or smollm2-135m-instruct")
    p.add_argument("input", nargs="?", help="held-out records, in any format `tokensft score` reads (optional with "
                                            "--lm-eval)")
    p.add_argument("--output", "-o", required=True, help="eval directory (results.json, examples.parquet)")
    d = _add_decoding(p)
    d.add_argument("--seed", type=nonnegative_int, help=f"sampling seed (default {D.seed})")
    g, r = add_record_flags(p, "rendering")
    g.add_argument("--skip-invalid", action="store_true", default=None, help="skip invalid rows, counted by reason")
    r.add_argument("--shard-size", type=int, help=f"input rows per part, the unit of resume (default {D.shard_size})")
    r.add_argument("--teacher-forced", action=argparse.BooleanOptionalAction, default=None,
                   help="also score the records teacher-forced, as `tokensft score` would: held-out mean target p "
                        "and NLL per token (default)")
    add_run_flags(p, ranks="input chunk k is evaluated by rank k mod world size",
                  batch="padded tokens per batch: prompt + completion when decoding (default: 8192 on CUDA, 4096 on "
                        "CPU), and in the teacher-forced pass (default there: 8192 on CUDA, 1024 on CPU)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="continue an interrupted run with the same settings (default); --no-resume starts it over")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an eval with other settings")
    h = p.add_argument_group("benchmark suites (lm-evaluation-harness, pip install 'tokensft[lm-eval]')")
    h.add_argument("--lm-eval", metavar="TASKS", help="comma-separated harness tasks, run on the same loaded model; "
                                                      "results in DIR/lm_eval.json")
    h.add_argument("--lm-eval-include", metavar="DIR", help="a directory of local task YAMLs (dataset_path: json)")
    h.add_argument("--lm-eval-limit", type=int, metavar="N", help="at most N documents per task")
    p.set_defaults(func=run_eval)
    _add_sweep(sub)


def run_eval(args) -> int:
    from tokensft.evaluate.config import EvalConfig
    from tokensft.evaluate.run import evaluate
    from tokensft.records.formats import FormatSpec

    config = EvalConfig(model=args.model, input=args.input, output=args.output,
                        format=FormatSpec(**given(args, FormatSpec)), command=shlex.join(["tokensft", *args.argv]),
                        **given(args, EvalConfig, exclude=("model", "input", "output", "format")))
    print("\n".join(console.eval_lines(evaluate(config))))
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep", help="train several objectives on one scored dataset and evaluate each side by side",
        description="The empirical version of the report's advice: from one scored (enriched) dataset, train each "
        "objective from the same model with the same settings, data order and seeds, evaluate each with "
        "`tokensft eval`, and rank them (DIR/results.json, DIR/index.html). Every arm is a normal train and eval "
        "output under DIR/arms/: a killed sweep resumes arm by arm.")
    p.add_argument("data", help="a dataset written by `tokensft score` (and `enrich`): the training data of every arm")
    p.add_argument("--objectives", required=True, help="arms, comma-separated: OBJECTIVE[@MASK], e.g. "
                   "nll,p,threshold-nll:0.2,profit:0.1,nll@prob>=0.1,qtarget:gamma=0.5,prior=teacher")
    p.add_argument("--eval", required=True, dest="heldout", metavar="HELDOUT", action="append",
                   help="held-out records (any score format): FILE, NAME=FILE, or NAME=FILE:METRIC (its own --metric); "
                        "repeatable: each set is judged on its own")
    p.add_argument("--output", "-o", required=True, help="sweep directory")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each arm trains once per seed (default 0)")
    p.add_argument("--baseline", metavar="ARM", help="the arm every arm is compared with, paired on the same examples "
                                                     "(default: nll when it is an arm, else the first)")
    p.add_argument("--initial", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate the untrained model: its accuracy, and what training broke and fixed (default)")
    add_train_settings(p)  # every train setting, applied to all arms
    _add_decoding(p)
    g, _ = add_record_flags(p, "held-out records: rendering")
    for flag in ("--rank", "--world-size"):
        p.add_argument(flag, type=nonnegative_int, help="arms split across ranks, job i on rank i mod world size "
                                                        "(default 0 of 1)")
    p.add_argument("--overwrite", action="store_true", help="start over when the settings changed")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=run_sweep)


def run_sweep(args) -> int:
    from tokensft.evaluate.config import EvalConfig
    from tokensft.evaluate.sweep import SweepConfig, parse_heldout, sweep
    from tokensft.records.formats import FormatSpec
    from tokensft.train.config import TrainConfig

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise TokensftError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2") from None
    if args.seed is not None:  # train's --seed, which the sweep sets per arm
        raise TokensftError(f"--seed {args.seed}: a sweep trains each arm once per seed of --seeds; use --seeds {args.seed}")
    train = given(args, TrainConfig, exclude=SWEEP_SETS)
    if train.get("lora_r") and not train.get("merge"):  # eval loads a full model: LoRA arms are merged
        train["merge"] = True
    evaluation = given(args, EvalConfig, exclude=("model", "input", "output", "format", "seed", "quiet", "rank",
                                                  "world_size", "overwrite", "skip_invalid", "wait", "resume"))
    if "template" not in evaluation:  # held-out prompts rendered as the training data was
        from tokensft.core.dataset import load_metadata

        evaluation["template"] = load_metadata(args.data).get("render", {}).get("template", EvalConfig.template)
    spec = given(args, FormatSpec)
    if spec:
        evaluation["format"] = spec  # a dict here (results.json keeps it); EvalConfig gets a FormatSpec
    config = SweepConfig(data=args.data, heldout=[parse_heldout(h) for h in args.heldout], output=args.output,
                         objectives=args.objectives, seeds=seeds, baseline=args.baseline, initial=args.initial,
                         train=train, eval=evaluation,
                         rank=args.rank if args.rank is not None else 0,
                         world_size=args.world_size if args.world_size is not None else 1, overwrite=args.overwrite,
                         quiet=args.quiet, command=shlex.join(["tokensft", *args.argv]))
    print("\n".join(console.sweep_lines(sweep(config))))
    return 0
