"""`tokensft train`: the training loop, explicit, top to bottom, on accelerate.

    setup:  data (checked: something to train on), tokenizer (fingerprint checked), OUTPUT (empty or
            a training output), accelerate
    guard:  every process takes its rank lock on OUTPUT (one run per output); a finished run of the
            same settings is complete (nothing to do), of other settings refused unless --overwrite
    model, AdamW, cosine schedule
    resume: the latest complete checkpoint in OUTPUT/checkpoints, if any (exact: weights, optimizer,
            scheduler, RNG; the data order is a function of the step)
    for step in range(start, total):
        indices = data.step_indices(step)            # the global batch of this step
        mine    = indices[rank::world]               # this process's share, in micro-batches
        denominator = counts over all micro-batches, summed over processes
        for each micro-batch: loss = weight * objective(...) / denominator; backward (grads synced on the last)
        online kept count (thresholds, kept-targets): gradients / the step's global kept count
        clip, optimizer step, scheduler step; log metrics (a step that kept no target: flagged, warned);
        maybe evaluate; maybe checkpoint
    save the final model to OUTPUT (loads with AutoModelForCausalLM.from_pretrained)

`accelerate launch -m tokensft train ...` runs it on several processes or machines (DDP; FSDP
with configs/accelerate/fsdp.yaml, GPUs only; DeepSpeed through accelerate's config), bf16 autocast on CUDA, fp32 on CPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch

from tokensft.core.errors import ConfigError
from tokensft.core.fileio import atomic_write
from tokensft.core.schema import WEIGHT
from tokensft.train import checkpoints, lora
from tokensft.train.config import TrainConfig
from tokensft.train.data import TrainData
from tokensft.train.loss import Denominator, micro_batch_loss
from tokensft.train.memory import enable_checkpointing, model_budget
from tokensft.train.objectives import parse_objective
from tokensft.train.optim import adamw
from tokensft.train.output import check_output, locked
from tokensft.train.packing import prepare_packing
from tokensft.train.step import STAT_KEYS, TrainingDiverged, check_finite, denominator, evaluate, micro_batches
from tokensft.train.step import stack_stats, step_counts
from tokensft.train.step import step_metrics as _metrics  # by this name: tests stop a run at its n-th step
from tokensft.train.trackers import start_trackers, tracker_settings

logger = logging.getLogger(__name__)
__all__ = ["TrainingDiverged", "exit_processes", "train"]
_KEPT: list = []  # a multi-process run's DDP module and accelerator, never torn down (see the end of train)


def exit_processes() -> None:
    """After a multi-process run has printed its line: every rank meets, then exits at once, skipping
    the interpreter's teardown of the process group (which can hang or abort under gloo). A single
    process returns and exits normally."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    dist.barrier()  # no rank leaves while another still needs the group
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _precision(dtype: str, use_cuda: bool) -> str:
    """accelerate's mixed_precision for --dtype (weights stay fp32; autocast runs the forward)."""
    if dtype == "float16" and not use_cuda:
        raise ConfigError("--dtype float16 needs CUDA; on CPU use float32 (or bfloat16, slower here)")
    if dtype == "bfloat16" and not use_cuda:
        logger.warning("--dtype bfloat16 on CPU: autocast works but is usually several times slower than float32")
    return {"auto": "bf16" if use_cuda else "no", "float32": "no", "bfloat16": "bf16", "float16": "fp16"}[dtype]


def load_model(path, dtype, attn_implementation: str = "auto"):
    """The model to train, with --attn-implementation (auto: the model's default); an attention the
    machine cannot run (flash-attn not installed, no CUDA) is a ConfigError naming the flag."""
    from transformers import AutoModelForCausalLM

    extra = {} if attn_implementation == "auto" else {"attn_implementation": attn_implementation}
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, **extra)
    except (ImportError, ValueError) as exc:
        if not extra:
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--attn-implementation {attn_implementation}: {reason}; install what it names, or use "
                          "--attn-implementation auto") from None


def _cosine(total: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return factor


class ObjectiveModule(torch.nn.Module):
    """The model plus its loss, so DDP/FSDP wrap one forward that does everything."""

    def __init__(self, model, objective, normalize: str, chunk_size: int):
        super().__init__()
        self.model, self.objective, self.normalize, self.chunk_size = model, objective, normalize, chunk_size

    def forward(self, batch: dict, denominator: Denominator):
        return micro_batch_loss(self.model, batch, self.objective, self.normalize, denominator, self.chunk_size)


def train(config: TrainConfig) -> dict:
    """Train (or resume); returns a summary with the output directory and the last metrics."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from tokensft.core.models import load_tokenizer, resolve_model_dir, tokenizer_fingerprint
    from tokensft.train.progress import StepLog, last_metrics

    config.validate()
    hf_logging.disable_progress_bar()
    objective = parse_objective(config.objective)
    normalize = config.normalize or objective.default_normalize
    data = TrainData(config.data, objective, config.mask, config.ref, config.eval_fraction, config.skip_invalid,
                     config.weight, config.allow_negative_weights)
    if WEIGHT in data.table.column_names and config.weight is None and not config.quiet:
        # a dataset may carry weights a run means to ignore: legal, but never silently
        print(f"warning: {config.data} carries the data's loss weights (column weight); this run ignores them "
              "(pass --weight weight to train with them)", file=sys.stderr)
    path, name = resolve_model_dir(config.model)
    tokenizer = load_tokenizer(path)
    if tokenizer_fingerprint(tokenizer, chat_template=False) != data.meta.get("token_fingerprint"):
        raise ConfigError(f"--model {config.model}: its tokenizer differs from the one {config.data} was scored with "
                          "(token fingerprints differ); train a model that shares the scorer's tokenizer")
    output = Path(config.output)
    check_output(output, path, Path(config.data))  # before anything is written there
    data.check_context(getattr(AutoConfig.from_pretrained(path, local_files_only=True), "max_position_embeddings", None),
                       config.model)
    use_cuda = torch.cuda.is_available()
    # step_scheduler_with_optimizer=False: one schedule step per optimizer step whatever the process
    # count (accelerate would otherwise step it once per process, assuming a per-process data loader)
    log_with, project_dir = tracker_settings(config.report_to, output)  # --report-to: a ConfigError if not installed
    accelerator = Accelerator(mixed_precision=_precision(config.dtype, use_cuda), cpu=not use_cuda,
                              step_scheduler_with_optimizer=False, log_with=log_with, project_dir=project_dir)
    world = accelerator.num_processes
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and accelerator.distributed_type != DistributedType.FSDP:
        if accelerator.is_main_process:  # accelerate selects FSDP on GPUs only: never a silent DDP
            print("warning: an accelerate FSDP config, but accelerate runs this on CPU as DDP (every process holds the "
                  "whole model); FSDP needs GPUs", file=sys.stderr)
    global_batch = config.batch_size * config.grad_accum * world
    budget = config.max_steps * global_batch if config.max_steps else math.ceil(config.epochs * len(data.train_indices))
    total = math.ceil(budget / global_batch)  # the last step takes what is left of the budget
    identity = checkpoints.run_identity(config, normalize, global_batch, total, data)
    base_dtype = torch.bfloat16 if config.lora_base_bf16 else torch.float32  # --lora-base-bf16: the frozen base
    with locked(accelerator, output):  # one run writes an output: a second is refused, on every process
        if not config.overwrite and checkpoints.finished(output, identity):  # other settings: refused
            if checkpoints.needs_merge(output, config):  # --merge added to a finished LoRA run: merge, not retrain
                if accelerator.is_main_process:
                    checkpoints.merge_final(output, load_model(path, base_dtype), tokenizer)
                accelerator.wait_for_everyone()
            accelerator.end_training()
            return {"output": str(output), "steps": total, "metrics": last_metrics(output / "metrics.jsonl", total),
                    "normalize": normalize, "complete": True}
        set_seed(config.seed)
        model = load_model(path, base_dtype, config.attn_implementation)
        model.config.use_cache = False
        if config.gradient_checkpointing:  # the decoder layers recompute in backward (train mode: module.train() below)
            enable_checkpointing(model)
        batching = config.batching
        if batching == "packed" and not prepare_packing(model, config.attn_implementation):
            batching = "grouped"
            if accelerator.is_main_process:  # a warning, not progress: -q keeps it
                print(f"warning: --batching packed: {type(model).__name__}'s attention does not keep packed sequences "
                      "apart (transformers builds no per-sequence mask for it); training with --batching grouped "
                      "instead", file=sys.stderr)
        attention_used = model.config._attn_implementation  # recorded in tokensft_train.json
        if config.lora_r:  # a PeftModel: only the adapter trains, and checkpoints hold only it
            model = lora.wrap(model, config)
            lora.register_state_hooks(accelerator)
        module = ObjectiveModule(model, objective, normalize, config.chunk_size)
        optimizer, optimizer_impl = adamw(lora.trainable(model), accelerator.device, lr=config.learning_rate,
                                          betas=(config.beta1, config.beta2), weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(total, math.ceil(config.warmup * total)))
        module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
        if config.overwrite and accelerator.is_main_process:
            checkpoints.clear(output)
        accelerator.wait_for_everyone()
        start = checkpoints.resume(accelerator, output, identity, config.quiet)
        if accelerator.is_main_process:
            output.mkdir(parents=True, exist_ok=True)
            with atomic_write(output / "train_config.json", "w", encoding="utf-8") as f:
                settings = {k: v for k, v in asdict(config).items() if k != "overwrite"}  # read back by --config
                json.dump({**settings, "normalize": normalize, "total_steps": total, "world_size": world}, f, indent=2)
        start_trackers(accelerator, config.report_to, {**asdict(config), "normalize": normalize, "total_steps": total})
        if not config.quiet and accelerator.is_main_process:  # before step 1: will it fit?
            print(model_budget(accelerator.unwrap_model(module).model, config.batch_size, data.longest(),
                               2 if accelerator.mixed_precision in ("bf16", "fp16") else 4,
                               config.gradient_checkpointing)[1])
        log = StepLog(output / "metrics.jsonl", total, start, disable=config.quiet or not accelerator.is_main_process,
                      main=accelerator.is_main_process)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # an online kept count (thresholds under kept-targets) is only known after the forward passes:
        # the micro-batches backward their sums and the gradients are divided by the step's global
        # count, so the step is the same however it is split. DeepSpeed owns the gradients: there each
        # micro-batch divides by its own count instead (see tokensft.train.loss)
        rescale = (normalize == "kept-targets" and objective.online_kept
                   and accelerator.distributed_type != DistributedType.DEEPSPEED)
        last = {}
        for step in range(start, total):
            began = time.perf_counter()
            drawn = data.step_indices(step, global_batch, config.seed, budget)
            batches = micro_batches(data, drawn, accelerator.process_index, world, config.batch_size, pad_id, batching)
            counts = accelerator.reduce(step_counts(batches, objective.sequence_level).to(accelerator.device),
                                        reduction="sum").tolist()  # targets, sequences, kept, weight sum
            step_denominator = denominator(counts, objective.online_kept, len(batches), world, rescale)
            sums, losses = {}, []
            module.train()
            for i, batch in enumerate(batches):
                batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                sync = i == len(batches) - 1
                with accelerator.no_sync(module) if not sync else nullcontext():  # sync grads once per step
                    loss, stats = module(batch, step_denominator)
                    accelerator.backward(loss)
                losses.append(loss.detach())
                stats["loss"] = loss.detach() / world  # undo the * world_size that offsets DDP's gradient averaging
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
            kept_total = 1.0
            if rescale:  # one collective: the step's kept targets on every process
                kept = torch.as_tensor(sums.get("kept", 0.0), dtype=torch.float32, device=accelerator.device).reshape(1)
                kept_total = accelerator.reduce(kept, reduction="sum").clamp(min=1.0)
                for p in module.parameters():
                    if p.grad is not None:
                        p.grad.div_(kept_total.to(p.grad.dtype))
            # --clip 0: no clipping, but the norm is still logged (and checked)
            grad_norm = accelerator.clip_grad_norm_(module.parameters(), config.clip if config.clip > 0 else float("inf"))
            check_finite(step, losses, torch.as_tensor(grad_norm, device=accelerator.device), batches, output)
            lr = scheduler.get_last_lr()[0]  # the rate this step uses
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            totals = dict(zip(STAT_KEYS, accelerator.reduce(stack_stats(sums, accelerator.device), reduction="sum").tolist()))
            totals["loss"] /= float(kept_total)
            last = _metrics(step + 1, total, totals, lr, float(grad_norm), time.perf_counter() - began, counts,
                            weighted=config.weight is not None)
            if use_cuda:  # the run's peak so far, on this process's device (what the memory switches change)
                last["peak_memory_gb"] = torch.cuda.max_memory_allocated(accelerator.device) / 1e9
            if totals["kept"] == 0:  # the step trained nothing (an online threshold kept no target): counted, not silent
                log.zero_kept += 1
                last.update(zero_kept=True, zero_kept_steps=log.zero_kept)
                log.warning(f"step {step + 1} of {total}: no target kept ({config.objective} kept none of the step's "
                            f"{counts[0]:.0f} targets; {log.zero_kept} such step{'s' * (log.zero_kept > 1)} so far)")
            if config.eval_every and (step + 1) % config.eval_every == 0 and len(data.eval_indices):
                last.update(evaluate(module, data, config.batch_size, accelerator, pad_id, batching))
            log.write(last)
            if config.report_to != "none":
                accelerator.log({k: v for k, v in last.items() if isinstance(v, (int, float))}, step=step + 1)
            if config.save_every and (step + 1) % config.save_every == 0 and step + 1 < total:
                checkpoints.save_checkpoint(accelerator, module, tokenizer, output, step + 1, identity,
                                            config.keep_checkpoints)
        if len(data.eval_indices) and "eval_loss" not in last:
            last.update(evaluate(module, data, config.batch_size, accelerator, pad_id, batching))
            log.write({"step": total, **{k: v for k, v in last.items() if k.startswith("eval_")}})
        log.close()
        checkpoints.save_final(accelerator, module, tokenizer, output, {
            "base_model": name, "data": config.data, "objective": config.objective, "mask": config.mask, "weight": data.columns.weight,
            "ref": config.ref,
            "train_examples": int(len(data.train_indices)), "eval_examples": int(len(data.eval_indices)),
            "skipped_examples": data.skipped, "optimizer": f"adamw ({optimizer_impl})",
            "batching": batching, "attention": attention_used,
            **(lora.parameter_counts(model) if config.lora_r else {})}, identity, merge=config.merge)
        # Several processes: gloo's teardown can hang (a rank's ~ProcessGroupGloo joins threads forever
        # once its peer has exited) or abort ("terminate called without an active exception"), after
        # all the work is saved. So the DDP module (whose Reducer holds the group) is kept alive here,
        # and `exit_processes` ends every rank together, without the teardown.
        if world > 1:
            _KEPT.append((module, optimizer, accelerator))
        accelerator.end_training()
        return {"output": str(output), "steps": total, "metrics": last, "normalize": normalize,
                "zero_kept_steps": log.zero_kept, "optimizer": f"adamw ({optimizer_impl})"}
