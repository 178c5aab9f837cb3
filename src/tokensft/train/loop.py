"""`tokensft train`: the training loop, explicit, top to bottom, on accelerate.

    setup:  data (checked), model + tokenizer (fingerprint checked), AdamW, cosine schedule, accelerate
    resume: the latest complete checkpoint in OUTPUT/checkpoints, if any (exact: weights, optimizer,
            scheduler, RNG; the data order is a function of the step)
    for step in range(start, total):
        indices = data.step_indices(step)            # the global batch of this step
        mine    = indices[rank::world]               # this process's share, in micro-batches
        denominator = counts over all micro-batches, summed over processes
        for each micro-batch: loss = objective(...) / denominator; backward (grads synced on the last)
        clip, optimizer step, scheduler step; log metrics; maybe evaluate; maybe checkpoint
    save the final model to OUTPUT (loads with AutoModelForCausalLM.from_pretrained)

`accelerate launch -m tokensft train ...` runs it on several processes or machines (DDP; FSDP and
DeepSpeed through accelerate's config), bf16 autocast on CUDA, fp32 on CPU.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tokensft.errors import ConfigError, TokensftError
from tokensft.fileio import atomic_write
from tokensft.train.data import TrainData
from tokensft.train.loss import Denominator, count_batch, micro_batch_loss
from tokensft.train.objectives import NORMALIZE, parse_objective


class TrainingDiverged(TokensftError):
    """A non-finite loss: training stopped, the last good checkpoint kept."""


@dataclass
class TrainConfig:
    """Everything `tokensft train` takes (help text lives in cli.py)."""

    data: str
    output: str
    model: str = "smollm2-135m-instruct"
    objective: str = "nll"
    mask: str | None = None
    ref: str | None = None
    normalize: str | None = None  # None: the objective's own default
    learning_rate: float = 5e-5
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 4  # sequences per micro-batch per process
    grad_accum: int = 1
    warmup: float = 0.1  # fraction of the steps
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    clip: float = 1.0
    seed: int = 0
    chunk_size: int = 256
    eval_fraction: float = 0.0
    eval_every: int = 0
    save_every: int = 0
    keep_checkpoints: int = 2
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    skip_invalid: bool = False
    quiet: bool = False

    def validate(self) -> None:
        objective = parse_objective(self.objective)
        if self.normalize is not None and self.normalize not in NORMALIZE:
            raise ConfigError(f"--normalize {self.normalize!r}: use one of {', '.join(NORMALIZE)}")
        if objective.name == "poft" and self.normalize not in (None, "sequences"):
            raise ConfigError("--objective poft is per sequence: --normalize sequences (the default)")
        for name in ("batch_size", "grad_accum", "chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if not 0 <= self.eval_fraction < 1 or not 0 <= self.warmup <= 1:
            raise ConfigError("--eval-fraction must be in [0, 1) and --warmup in [0, 1]")
        if self.learning_rate <= 0 or (self.max_steps is not None and self.max_steps < 1) or self.epochs <= 0:
            raise ConfigError("--learning-rate, --epochs and --max-steps must be positive")


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
    from accelerate.utils import set_seed
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from tokensft.preprocess.models import load_tokenizer, resolve_model_dir, tokenizer_fingerprint
    from tokensft.train.progress import StepLog

    config.validate()
    hf_logging.disable_progress_bar()
    objective = parse_objective(config.objective)
    normalize = config.normalize or objective.default_normalize
    data = TrainData(config.data, objective, config.mask, config.ref, config.eval_fraction, config.seed, config.skip_invalid)
    path, name = resolve_model_dir(config.model)
    tokenizer = load_tokenizer(path)
    if tokenizer_fingerprint(tokenizer, chat_template=False) != data.meta.get("token_fingerprint"):
        raise ConfigError(f"--model {config.model}: its tokenizer differs from the one {config.data} was scored with "
                          "(token fingerprints differ); train a model that shares the scorer's tokenizer")
    use_cuda = torch.cuda.is_available()
    precision = "bf16" if config.dtype in ("auto", "bfloat16") and use_cuda else "no"
    # step_scheduler_with_optimizer=False: one schedule step per optimizer step whatever the process
    # count (accelerate would otherwise step it once per process, assuming a per-process data loader)
    accelerator = Accelerator(mixed_precision=precision, cpu=not use_cuda, step_scheduler_with_optimizer=False)
    set_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    model.config.use_cache = False
    module = ObjectiveModule(model, objective, normalize, config.chunk_size)
    world = accelerator.num_processes
    global_batch = config.batch_size * config.grad_accum * world
    total = config.max_steps or max(1, math.ceil(config.epochs * len(data.train_indices) / global_batch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(config.beta1, config.beta2),
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(total, math.ceil(config.warmup * total)))
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    output = Path(config.output)
    start = _resume(accelerator, output, config)
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        with atomic_write(output / "train_config.json", "w", encoding="utf-8") as f:
            json.dump({**asdict(config), "normalize": normalize, "total_steps": total, "world_size": world}, f, indent=2)
    log = StepLog(output / "metrics.jsonl", total, start, disable=config.quiet or not accelerator.is_main_process,
                  main=accelerator.is_main_process)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    static_kept = objective.name not in ("threshold", "profit")
    last = {}
    for step in range(start, total):
        began = time.perf_counter()
        mine = data.step_indices(step, global_batch, config.seed)[accelerator.process_index::world]
        batches = [data.collate(mine[i:i + config.batch_size], pad_id) for i in range(0, len(mine), config.batch_size)]
        counts = torch.tensor([[c["targets"], c["sequences"], c["kept"]] for c in map(count_batch, batches)]).sum(0)
        counts = accelerator.reduce(counts.to(accelerator.device), reduction="sum").tolist()
        denominator = Denominator(counts[0], counts[1], counts[2] if static_kept else None, len(batches), world)
        sums, losses = {}, []
        module.train()
        for i, batch in enumerate(batches):
            batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            sync = i == len(batches) - 1
            with accelerator.no_sync(module) if not sync else nullcontext():  # sync grads once per step
                loss, stats = module(batch, denominator)
                accelerator.backward(loss)
            losses.append(loss.detach())
            stats["loss"] = loss.detach() / world  # undo the * world_size that offsets DDP's gradient averaging
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
        finite = torch.isfinite(torch.stack(losses))  # one device sync per step, before the weights move
        if not finite.all():
            bad = int((~finite).nonzero()[0])
            raise TrainingDiverged(f"step {step + 1}: non-finite loss ({losses[bad].item()}) on examples "
                                   f"{', '.join(batches[bad]['ids'][:5])}; the last good checkpoint is kept in {output}")
        grad_norm = accelerator.clip_grad_norm_(module.parameters(), config.clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        totals = accelerator.reduce(_stack(sums, accelerator.device), reduction="sum").tolist()
        last = _metrics(step + 1, total, dict(zip(STAT_KEYS, totals)), scheduler.get_last_lr()[0],
                        float(grad_norm), time.perf_counter() - began, counts[0])
        if config.eval_every and (step + 1) % config.eval_every == 0 and len(data.eval_indices):
            last.update(evaluate(module, data, config, accelerator, pad_id, static_kept))
        log.write(last)
        if config.save_every and (step + 1) % config.save_every == 0 and step + 1 < total:
            _save_checkpoint(accelerator, module, tokenizer, output, step + 1, config)
    if len(data.eval_indices) and "eval_loss" not in last:
        last.update(evaluate(module, data, config, accelerator, pad_id, static_kept))
        log.write({"step": total, **{k: v for k, v in last.items() if k.startswith("eval_")}})
    log.close()
    _save_final(accelerator, module, tokenizer, output, data, config, name)
    # destroy the process group (several processes): left to the interpreter's exit, gloo's threads
    # sometimes abort it ("terminate called without an active exception") after all the work is saved
    accelerator.end_training()
    return {"output": str(output), "steps": total, "metrics": last, "normalize": normalize}


STAT_KEYS = ("loss", "loss_sum", "nll_sum", "p_sum", "targets", "kept", "poft_weight_sum", "poft_sequences")


def _stack(sums: dict, device) -> torch.Tensor:
    """(len(STAT_KEYS),) float32 on `device`: the step's metric sums (floats or 0-dim tensors)."""
    return torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float32, device=device) for k in STAT_KEYS])


def _metrics(step, total, s, lr, grad_norm, seconds, targets) -> dict:
    out = {"step": step, "total_steps": total, "loss": s["loss"], "lr": lr, "grad_norm": grad_norm,
           "targets_per_s": targets / seconds, "mean_p": s["p_sum"] / max(s["targets"], 1),
           "kept_fraction": s["kept"] / max(s["targets"], 1)}
    if s["poft_sequences"]:
        out["poft_weight_mean"] = s["poft_weight_sum"] / s["poft_sequences"]
    return out


@torch.no_grad()
def evaluate(module, data: TrainData, config: TrainConfig, accelerator, pad_id: int, static_kept: bool) -> dict:
    """Objective loss, NLL and mean target p on the held-out split (this process's share, summed)."""
    module.eval()
    mine = data.eval_indices[accelerator.process_index::accelerator.num_processes]
    batches = [data.collate(mine[i:i + config.batch_size], pad_id) for i in range(0, len(mine), config.batch_size)]
    counts = torch.tensor([[c["targets"], c["sequences"], c["kept"]] for c in map(count_batch, batches)] or [[0.0] * 3]).sum(0)
    counts = accelerator.reduce(counts.to(accelerator.device), reduction="sum").tolist()
    denominator = Denominator(counts[0], counts[1], counts[2] if static_kept else None, max(len(batches), 1), 1)
    inner = accelerator.unwrap_model(module)
    loss_sum = torch.zeros(3, device=accelerator.device)  # objective loss, nll sum, p sum
    for batch in batches:
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, stats = micro_batch_loss(inner.model, batch, inner.objective, inner.normalize, denominator, config.chunk_size)
        loss_sum += torch.stack([loss.float(), stats["nll_sum"].float(), stats["p_sum"].float()])
    loss_sum = accelerator.reduce(loss_sum, reduction="sum").tolist()
    return {"eval_loss": loss_sum[0], "eval_nll": loss_sum[1] / max(counts[0], 1),
            "eval_mean_p": loss_sum[2] / max(counts[0], 1)}


def _checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints (trainer_state.json is written last), oldest first."""
    root = output / "checkpoints"
    found = [p for p in root.glob("step-*") if (p / "trainer_state.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _resume(accelerator, output: Path, config: TrainConfig) -> int:
    checkpoints = _checkpoints(output)
    if not checkpoints:
        return 0
    latest = checkpoints[-1]
    state = json.loads((latest / "trainer_state.json").read_text())
    accelerator.load_state(str(latest / "state"))
    if not config.quiet and accelerator.is_main_process:
        print(f"resuming from {latest} (step {state['step']})")
    return int(state["step"])


def _save_checkpoint(accelerator, module, tokenizer, output: Path, step: int, config: TrainConfig) -> None:
    """OUTPUT/checkpoints/step-N: HF model + tokenizer + accelerate state, renamed into place whole."""
    final = output / "checkpoints" / f"step-{step}"
    tmp = final.with_name(f".{final.name}.tmp")  # the same name on every process
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # a killed run's partial checkpoint
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "state"))  # every process takes part (sharded states)
    if accelerator.is_main_process:
        accelerator.unwrap_model(module).model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        tmp.rename(final)
        for old in _checkpoints(output)[:-config.keep_checkpoints or None]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _save_final(accelerator, module, tokenizer, output: Path, data: TrainData, config: TrainConfig, model_name: str) -> None:
    """The final model in OUTPUT, written to a staging directory first and moved in file by file,
    so every file in OUTPUT is complete whenever it is read (a kill here: rerun to redo it)."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        staging = output / ".final.tmp"
        if staging.exists():
            shutil.rmtree(staging)  # a killed run's partial save
        accelerator.unwrap_model(module).model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "tokensft_train.json").write_text(json.dumps({
            "base_model": model_name, "data": config.data, "objective": config.objective, "mask": config.mask,
            "ref": config.ref, "train_examples": int(len(data.train_indices)), "eval_examples": int(len(data.eval_indices)),
            "skipped_examples": data.skipped}, indent=2))
        for file in sorted(staging.iterdir()):
            os.replace(file, output / file.name)
        staging.rmdir()
