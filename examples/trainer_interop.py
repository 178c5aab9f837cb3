"""tokensft objectives inside Hugging Face's Trainer or TRL's SFTTrainer.

After `make demo` (which scores and enriches demo-out/arithmetic-scored):

    .venv/bin/python examples/trainer_interop.py --data demo-out/arithmetic-scored \\
        --model smollm2-135m-instruct --trainer trl --objective nll --mask "prob>=0.1" --steps 4

The scored dataset goes in through `trainer_dataset` (only the columns the objective needs) and
`TokenSFTCollator` (keeps the per-token mask / prior / reference columns that TRL's own collator
would drop); `TokenSFTMixin` in front of the trainer class runs tokensft's memory-lean loss. For
an objective that needs no stored column, `compute_loss_func=TokenSFTLoss(objective)` on an
unmodified Trainer works too (TRL deprecates compute_loss_func: it costs an extra forward).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a scored (and enriched) dataset directory")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model name or directory (offline)")
    parser.add_argument("--trainer", choices=("transformers", "trl"), default="transformers")
    parser.add_argument("--objective", default="nll", help="any `tokensft train --objective` spec")
    parser.add_argument("--mask", default=None, help="a stored mask, e.g. 'prob>=0.1'")
    parser.add_argument("--ref", default=None, help="the named reference for poft (default: ref_mean_logprob)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--output", default="demo-out/trainer-interop")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from tokensft.core.models import load_tokenizer, resolve_model_dir
    from tokensft.train.interop import TokenSFTCollator, TokenSFTMixin, TokenSFTTrainer, trainer_dataset

    path, _ = resolve_model_dir(args.model)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    dataset = trainer_dataset(args.data, args.objective, args.mask, args.ref, tokenizer=tokenizer)
    common = dict(output_dir=args.output, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                  learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0, logging_steps=1,
                  save_strategy="no", report_to=[], disable_tqdm=True, seed=0,
                  remove_unused_columns=False,  # keep the tokensft_* columns for the collator
                  bf16=torch.cuda.is_available())  # fp32 on CPU
    if args.trainer == "trl":
        from trl import SFTConfig, SFTTrainer

        class TokenSFTSFTTrainer(TokenSFTMixin, SFTTrainer):
            """TRL's SFTTrainer (its optimizer, schedule, logging, hub and PEFT support) with tokensft's loss."""

        training_args = SFTConfig(**common, max_length=None, dataset_kwargs={"skip_prepare_dataset": True},
                                  gradient_checkpointing=False)
        trainer_cls = TokenSFTSFTTrainer
    else:
        training_args = TrainingArguments(**common)
        trainer_cls = TokenSFTTrainer
    trainer = trainer_cls(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
                          data_collator=TokenSFTCollator(tokenizer.pad_token_id), objective=args.objective)
    trainer.train()
    trainer.save_model(args.output)
    logs = [row for row in trainer.state.log_history if "loss" in row]
    summary = {"output": args.output, "steps": trainer.state.global_step, "first_loss": logs[0]["loss"],
               "last_loss": logs[-1]["loss"], "first_mean_p": logs[0].get("mean_p"), "last_mean_p": logs[-1].get("mean_p")}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    main()
