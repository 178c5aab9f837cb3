"""`tokensft enrich` (and the enrichment flags `score` takes too): flags, config, the call."""

from __future__ import annotations

import argparse
import shlex

from tokensft.commands.common import add_run_flags, given, nonnegative_int
from tokensft.core.errors import TokensftError
from tokensft.reports import console


class _RefName(argparse.Action):
    """--ref-name names the --ref given just before it: `--ref A --ref-name a --ref B` names A only."""

    def __call__(self, parser, namespace, value, option_string=None):
        names = dict(getattr(namespace, "ref_names_by_index", None) or {})
        index = len(namespace.ref) - 1
        if index < 0 or index in names:
            parser.error(f"--ref-name {value}: put it right after the --ref it names")
        names[index] = value
        namespace.ref_names_by_index = names


def add_enrich_flags(g, teacher_top_k: str) -> None:
    from tokensft.records.render import TEMPLATES

    g.add_argument("--mask", action="append", default=[], metavar="SPEC",
                   help="add a mask column mask_<name> (repeatable): prob>=T (ProFit: 0.1), prob<=T, prob-between:A:B, "
                        "top-frac:F (per sequence), quantile>=Q (dataset-wide), random:F:SEED (drop F); "
                        "prefix teacher: to threshold the teacher's probabilities; excess-top-frac:F, "
                        "excess-quantile>=Q (Rho-1: rank by teacher_logprob - logprob, the teacher as reference)")
    g.add_argument("--weight", action="append", default=[], metavar="SPEC",
                   help="add a loss-weight column weight_<name> (repeatable, computed in order, after the masks): "
                        "prob^A (sg(p)^A; DFT at A=1), excess (Rho-1: teacher_logprob - logprob, the scorer the "
                        "model to train, the --teacher the reference), product:A*B (stored weights and masks, "
                        "`weight` the data's), then modifiers ,clip:LO:HI ,normalize:sequence "
                        "(e.g. prob^1,clip:0.05:1)")
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
    g.add_argument(teacher_top_k, type=nonnegative_int, dest="teacher_top_k",  # 0 with a teacher: EnrichConfig says why not
                   help="alternatives the teacher stores per target (default: " +
                        ("20" if teacher_top_k == "--top-k" else "--top-k, else 20") + ")")


EXPLICIT = ("input", "output", "masks", "weights", "refs", "ref_names", "teacher", "top_k")  # set by enrich_config itself


def enrich_config(args, input: str, top_k: int, output: str | None = None, **fixed):
    from tokensft.core.identity import RunConfig
    from tokensft.preprocess.enrich import EnrichConfig

    names = getattr(args, "ref_names_by_index", None) or {}
    settings = {**given(args, RunConfig), **fixed}
    return EnrichConfig(input=input, output=output, masks=args.mask, weights=args.weight, refs=args.ref,
                        ref_names=[names.get(i) for i in range(len(args.ref))], teacher=args.teacher, top_k=top_k,
                        command=shlex.join(["tokensft", *args.argv]),
                        **given(args, EnrichConfig, exclude=(*EXPLICIT, *settings)), **settings)


def run_enrich(config) -> dict:
    from tokensft.preprocess.enrich import enrich

    return enrich(config)


def add(sub) -> None:
    p = sub.add_parser(
        "enrich", help="add masks, loss weights, PoFT reference likelihoods and teacher top-k to a scored dataset",
        description="Add columns to a scored dataset without re-running its scorer: masks and loss weights from "
        "the stored probabilities, PoFT reference likelihoods (each reference in its own tokenizer and template), and a "
        "teacher's top-k distributions for Q-target training. In place (atomically) unless --output.",
    )
    p.add_argument("directory", help="a dataset written by `tokensft score`")
    p.add_argument("--output", "-o", help="write the enriched dataset here instead of replacing DIRECTORY")
    add_enrich_flags(p.add_argument_group("what to add"), teacher_top_k="--top-k")
    p.add_argument("--skip-invalid", action="store_true", default=None,
                   help="a row a reference cannot render gets NaN and is counted, instead of stopping")
    add_run_flags(p, ranks="references and teacher are split by shard")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an --output written by a different run")
    p.set_defaults(func=run)


def run(args) -> int:
    top_k = args.teacher_top_k if args.teacher_top_k is not None else 20
    config = enrich_config(args, input=args.directory, top_k=top_k, output=args.output)
    if not config.requested:
        raise TokensftError("nothing to add: give --mask, --weight, --ref or --teacher")
    print("\n".join(console.enrich_lines(run_enrich(config))))
    return 0
