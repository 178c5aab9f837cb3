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
    from tokensft.train.loop import exit_processes, train

    settings = settings_file(args.config) if args.config else {}
    settings.update(given(args, TrainConfig, exclude=("data", "output")))
    summary = train(TrainConfig(data=args.data, output=args.output, **settings))
    print(console.train_line(summary))
    exit_processes()  # several processes: all leave together, skipping gloo's teardown
    return 0


def add_train_settings(p):
    """The optimization and evaluation settings (TrainConfig's fields), shared with `tokensft sweep`,
    which applies them to every arm. Returns the "evaluation, checkpoints" group."""
    from tokensft.train.config import ATTENTION, BATCHING, DTYPES, REPORT_TO, TrainConfig as D
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
    h.add_argument("--gradient-checkpointing", action="store_true", default=None,
                   help="recompute the backbone's layers in backward: activations ~1/17 of the layers' (slower steps)")
    h.add_argument("--batching", choices=BATCHING, help="grouped: each step's examples sorted by length before they are "
                   "split into micro-batches, so they pad less (the same examples per step); packed: each micro-batch "
                   "one row of its real tokens, no padding (per-sequence positions; the same examples and "
                   f"micro-batches as padded) (default {D.batching})")
    h.add_argument("--attn-implementation", choices=ATTENTION, help="transformers' attention: flash_attention_2 "
                   "(pip install flash-attn; CUDA, bf16) runs --batching packed without an L x L mask "
                   f"(default {D.attn_implementation}: the model's own, usually sdpa)")
    h.add_argument("--report-to", choices=REPORT_TO, help="an accelerate tracker besides metrics.jsonl, offline: "
                   f"tensorboard (OUTPUT/tensorboard), wandb (offline mode), mlflow (OUTPUT/mlruns) (default {D.report_to})")
    r = p.add_argument_group("LoRA (pip install tokensft[peft])")
    r.add_argument("--lora-r", type=int, help="train a LoRA adapter of this rank instead of every weight (default 0: full)")
    r.add_argument("--lora-alpha", type=float, help=f"the adapter's scale is alpha / r (default {D.lora_alpha:g})")
    r.add_argument("--lora-dropout", type=float, help=f"dropout on the adapter's input (default {D.lora_dropout:g})")
    r.add_argument("--lora-targets", help="comma list of Linear module names (default: the attention and MLP "
                                          "projections, e.g. q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)")
    r.add_argument("--lora-base-bf16", action="store_true", default=None, help="hold the frozen base in bf16 (the adapter in fp32)")
    r.add_argument("--merge", action="store_true", default=None, help="the final output is the merged full model, "
                   "which `tokensft score` and from_pretrained load (the adapter in OUTPUT/adapter)")
    e = p.add_argument_group("evaluation, checkpoints")
    e.add_argument("--eval-fraction", type=float, help=f"held-out fraction, by a hash of the example id (default {D.eval_fraction})")
    e.add_argument("--eval-every", type=int, help="evaluate every N steps, and at the end (default 0: at the end)")
    e.add_argument("--save-every", type=int, help="checkpoint every N steps (resume: rerun the command; default 0: never)")
    e.add_argument("--keep-checkpoints", type=int, help=f"the latest N kept (default {D.keep_checkpoints})")
    return e
