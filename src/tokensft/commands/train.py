"""`tokensft train`: its flags (defaults and the objectives' help from the train stage, no torch) and the call."""

from __future__ import annotations

import argparse

from tokensft.commands.common import given
from tokensft.reports import console


def add(sub) -> None:
    from tokensft.train.config import TrainConfig as D  # defaults live in the dataclass, once
    from tokensft.train.objectives import objectives_help  # the catalogue, without torch

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
    p.add_argument("--objective", help=f"see below (default {D.objective})")
    p.add_argument("--mask", help="train only on a stored mask's tokens: its spec or name (tokensft enrich --mask)")
    e = add_train_settings(p)
    e.add_argument("--overwrite", action="store_true", default=None,
                   help="start over in OUTPUT (its checkpoints and metrics) instead of resuming; needed when the settings changed")
    e.add_argument("--skip-invalid", action="store_true", default=None, help="poft: train without examples lacking a reference score")
    e.add_argument("--quiet", "-q", action="store_true", default=None)
    p.set_defaults(func=run)


def run(args) -> int:
    from tokensft.train.config import TrainConfig, settings_file
    from tokensft.train.loop import train

    settings = settings_file(args.config) if args.config else {}
    settings.update(given(args, TrainConfig, exclude=("data", "output")))
    summary = train(TrainConfig(data=args.data, output=args.output, **settings))
    print(console.train_line(summary))
    return 0


def add_train_settings(p):
    """The optimization and evaluation settings (TrainConfig's fields), shared with `tokensft sweep`,
    which applies them to every arm. Returns the "evaluation, checkpoints" group."""
    from tokensft.train.config import DTYPES, TrainConfig as D
    from tokensft.train.objectives import NORMALIZE

    p.add_argument("--model", "-m", help=f"the model to train, sharing the scorer's tokenizer (default {D.model})")
    p.add_argument("--ref", help="poft: the reference to compare with (ref_<name>_mean_logprob; default ref_mean_logprob)")
    p.add_argument("--weight", help="each target's loss times a stored weight: `weight` (the data's), a weight_<name> "
                                    "or the spec that made it (tokensft enrich --weight 'prob^1'); see below")
    p.add_argument("--allow-negative-weights", action="store_true", default=None,
                   help="--weight: train on negative weights (a push away from those tokens) instead of refusing them")
    p.add_argument("--normalize", choices=NORMALIZE, help="default: the objective's own, with or without --weight")
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
    return e
