"""One SGD step (lr 1, no clipping) of TokenSFTTrainer over 8 examples, saved to OUTPUT; run by
test_interop under `accelerate launch` with 2 processes (2 examples x 2 accumulation x 2 processes).
An optional 7th argument is a --weight column (test_weights_train)."""

import sys

import torch
from transformers import AutoModelForCausalLM, TrainingArguments

from tokensft.train.interop import TokenSFTCollator, TokenSFTTrainer, trainer_dataset

data, model_dir, objective, mask, normalize, output = sys.argv[1:7]
mask = mask or None
weight = sys.argv[7] if len(sys.argv) > 7 else None
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
args = TrainingArguments(output_dir=output, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=1,
                         learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                         max_grad_norm=0.0, use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, seed=3,
                         remove_unused_columns=False)
trainer = TokenSFTTrainer(model=model, args=args, train_dataset=trainer_dataset(data, objective, mask, weight=weight),
                          data_collator=TokenSFTCollator(0), objective=objective, normalize=normalize)
trainer.train()
trainer.save_model(output)
if torch.distributed.is_initialized():  # an orderly exit: left to the interpreter, gloo's threads sometimes abort it
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
