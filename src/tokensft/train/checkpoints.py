"""Checkpoints of `tokensft train`: save, find, resume (refusing a run with other settings), the final model.

    OUTPUT/checkpoints/step-N/    HF model + tokenizer (loads with from_pretrained), accelerate state
                                  (optimizer, scheduler, RNG), trainer_state.json (step, run identity)
    OUTPUT/                       the final model, written through a staging directory

A checkpoint directory is built under a temporary name and renamed whole, and trainer_state.json
is its last file, so a checkpoint that is listed is complete. A rerun of the same command resumes
from the latest one; a rerun with settings that change the result (objective, data, batch,
schedule, ...) is refused rather than mixed into the old run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tokensft.core.errors import ConfigError

STATE_FILE = "trainer_state.json"
# what a resumed run must share with the checkpointed one (batch_size x grad_accum x processes enter as global_batch)
IDENTITY_FIELDS = ("model", "objective", "mask", "ref", "normalize", "learning_rate", "epochs", "max_steps", "warmup",
                   "weight_decay", "beta1", "beta2", "clip", "seed", "eval_fraction", "dtype", "skip_invalid")


def run_identity(config, normalize: str, global_batch: int, total: int, data) -> dict:
    """The settings and data a checkpoint belongs to (JSON-able): a resume must match them exactly."""
    meta = data.meta
    return {**{name: getattr(config, name) for name in IDENTITY_FIELDS}, "normalize": normalize,
            "global_batch": global_batch, "total_steps": total,
            "data": {"input": meta.get("input", {}).get("fingerprint"), "scorer": meta.get("model", {}).get("content_hash"),
                     "columns": {k: v for k, v in vars(data.columns).items() if v}}}


def checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints (trainer_state.json is written last), oldest first."""
    root = output / "checkpoints"
    found = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def resume(accelerator, output: Path, identity: dict, quiet: bool) -> int:
    """Load the latest checkpoint of this run, if any; its step (0 without one)."""
    found = checkpoints(output)
    if not found:
        return 0
    latest = found[-1]
    state = json.loads((latest / STATE_FILE).read_text())
    saved = state.get("identity", {})
    differ = [key for key in sorted(set(identity) | set(saved)) if saved.get(key) != identity.get(key)]
    if differ:
        key = differ[0]
        raise ConfigError(f"{output}: holds checkpoints of a run with other settings ({key}: {saved.get(key)!r} there, "
                          f"{identity.get(key)!r} now{f'; {len(differ) - 1} more differ' if len(differ) > 1 else ''}); "
                          "rerun with the same flags to resume, or pass --overwrite or another --output")
    accelerator.load_state(str(latest / "state"))
    if not quiet and accelerator.is_main_process:
        print(f"resuming from {latest} (step {state['step']})")
    return int(state["step"])


def clear(output: Path) -> None:
    """--overwrite: forget a previous run in `output` (its checkpoints, metrics and final model files)."""
    shutil.rmtree(output / "checkpoints", ignore_errors=True)
    shutil.rmtree(output / ".final.tmp", ignore_errors=True)
    (output / "metrics.jsonl").unlink(missing_ok=True)


def save_checkpoint(accelerator, module, tokenizer, output: Path, step: int, identity: dict, keep: int) -> None:
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
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, "identity": identity}))
        tmp.rename(final)
        for old in checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def save_final(accelerator, module, tokenizer, output: Path, info: dict) -> None:
    """The final model in OUTPUT, written to a staging directory first and moved in file by file,
    so every file in OUTPUT is complete whenever it is read (a kill here: rerun to redo it)."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        staging = output / ".final.tmp"
        if staging.exists():
            shutil.rmtree(staging)  # a killed run's partial save
        accelerator.unwrap_model(module).model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "tokensft_train.json").write_text(json.dumps(info, indent=2))
        for file in sorted(staging.iterdir()):
            os.replace(file, output / file.name)
        staging.rmdir()
