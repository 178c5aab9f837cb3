"""Checkpoints of `tokensft train`: save, find, resume (refusing a run with other settings), the final model.

    OUTPUT/checkpoints/step-N/    HF model + tokenizer (loads with from_pretrained), accelerate state
                                  (optimizer, scheduler, RNG), trainer_state.json (step, run identity)
                                  (LoRA: the adapter in PEFT format; the state holds only its parameters)
    OUTPUT/                       the final model, written through a staging directory;
                                  tokensft_train.json (with the run identity) last: the run is finished

A checkpoint directory is built under a temporary name (.step-N.tmp, never listed) and renamed
whole, and trainer_state.json is its last file, so a checkpoint that is listed is complete. A rerun
of the same command resumes from the latest one; a rerun with settings that change the result
(objective, data, batch, schedule, ...) is refused rather than mixed into the old run. A write that
fails (disk full, permissions) is a SaveError naming the path; the previous checkpoint is kept.
Where a full disk surfaces, measured (torch 2.13, safetensors 0.8): open().write raises OSError,
safetensors (model.safetensors, also inside save_pretrained) a SafetensorError "Error while
serializing: I/O error: No space left on device (os error 28)", and torch.save (accelerate's
optimizer.bin, scheduler.bin, RNG state) a RuntimeError from its zip writer ("[enforce fail at
inline_container.cc:...] unexpected pos ...") that carries no errno.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from tokensft.core.errors import ConfigError, TokensftError
from tokensft.train import lora

STATE_FILE = "trainer_state.json"
FINISHED_FILE = "tokensft_train.json"  # the final model's card, moved into OUTPUT last: its presence = finished
_TORCH_WRITE_FAILED = ("inline_container", "PytorchStreamWriter", "file write failed")  # torch.save's zip writer


class SaveError(TokensftError):
    """A checkpoint or the final model could not be written (disk full, permissions): the last complete
    checkpoint is kept, and a rerun of the same command resumes from it."""
# what a resumed run must share with the checkpointed one (batch_size x grad_accum x processes enter as global_batch)
IDENTITY_FIELDS = ("model", "objective", "mask", "ref", "normalize", "learning_rate", "epochs", "max_steps", "warmup",
                   "weight_decay", "beta1", "beta2", "clip", "seed", "eval_fraction", "dtype", "skip_invalid")


def run_identity(config, normalize: str, global_batch: int, total: int, data) -> dict:
    """The settings and data a checkpoint belongs to (JSON-able): a resume must match them exactly."""
    meta = data.meta
    return {**{name: getattr(config, name) for name in IDENTITY_FIELDS}, "normalize": normalize,
            "global_batch": global_batch, "total_steps": total,
            **({"weight": data.columns.weight} if data.columns.weight else {}),  # the column: prob^1 == weight_prob_pow_1
            **_weight_source(data.columns.weight, meta),
            **({"lora": {name: getattr(config, name) for name in lora.FIELDS}} if config.lora_r else {}),
            "data": {"input": meta.get("input", {}).get("fingerprint"), "scorer": meta.get("model", {}).get("content_hash"),
                     "columns": {k: v for k, v in vars(data.columns).items() if v and k != "weight"}}}


def _weight_source(column: str | None, meta: dict) -> dict:
    """What a computed --weight column's values came from (its spec, the teacher it read): a
    re-enrichment under another teacher changes the values under the same name, and a resume must notice."""
    record = meta.get("enrichment", {}).get("weights", {}).get(column) if column else None
    if not record:
        return {}
    return {"weight_source": {"spec": record.get("spec"), "teacher": (record.get("teacher") or {}).get("content_hash")}}


def differences(saved: dict, identity: dict) -> str:
    """Which run settings differ, for an error ("" when none): the first with both values, the others by name."""
    differ = [key for key in sorted(set(identity) | set(saved)) if saved.get(key) != identity.get(key)]
    if not differ:
        return ""
    first, *rest = differ
    return (f"{first}: {saved.get(first)!r} there, {identity.get(first)!r} now"
            + (f"; also {', '.join(rest)}" if rest else ""))


def checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints (trainer_state.json is written last), oldest first."""
    root = output / "checkpoints"
    found = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def finished(output: Path, identity: dict) -> bool:
    """Whether `output` holds the finished run of these settings; a ConfigError when it holds one of others."""
    marker = output / FINISHED_FILE
    if not marker.is_file():
        return False
    try:
        saved = json.loads(marker.read_text(encoding="utf-8")).get("identity") or {}
    except (ValueError, AttributeError):
        raise ConfigError(f"{marker}: not a valid tokensft_train.json; pass --overwrite to train again, or choose "
                          "another --output") from None
    differ = differences(saved, identity) if saved else "its settings are not recorded (an older tokensft)"
    if differ:
        raise ConfigError(f"{output}: holds a finished run with other settings ({differ}); pass --overwrite to "
                          "replace it, or choose another --output")
    return True


def resume(accelerator, output: Path, identity: dict, quiet: bool) -> int:
    """Load the latest checkpoint of this run, if any; its step (0 without one)."""
    found = checkpoints(output)
    if not found:
        return 0
    latest = found[-1]
    state = json.loads((latest / STATE_FILE).read_text())
    differ = differences(state.get("identity", {}), identity)
    if differ:
        raise ConfigError(f"{output}: holds checkpoints of a run with other settings ({differ}); "
                          "rerun with the same flags to resume, or pass --overwrite or another --output")
    accelerator.load_state(str(latest / "state"))
    if not quiet and accelerator.is_main_process:
        print(f"resuming from {latest} (step {state['step']})")
    return int(state["step"])


def clear(output: Path) -> None:
    """--overwrite: forget a previous run in `output` (its checkpoints, metrics and final model files)."""
    (output / FINISHED_FILE).unlink(missing_ok=True)  # first: a killed rerun is then never taken as finished
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
    with _writing(final, "checkpoint", output, tmp if accelerator.is_main_process else None):
        accelerator.save_state(str(tmp / "state"))  # every process takes part (sharded states)
        weights = full_weights(accelerator, module)  # FSDP: every process takes part
        if accelerator.is_main_process:
            accelerator.unwrap_model(module).model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / STATE_FILE).write_text(json.dumps({"step": step, "identity": identity}))
            tmp.rename(final)
    if accelerator.is_main_process:
        for old in checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def full_weights(accelerator, module) -> dict | None:
    """Under FSDP the model's parameters are shards: its full state dict (keys as the unwrapped
    model's, tensors on CPU), gathered by a collective every process must call (accelerate's
    get_state_dict); None elsewhere (save_pretrained reads the whole parameters). A LoRA model: None
    (its adapter is saved by tokensft.train.lora, which FSDP does not cover yet)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP or lora.is_lora(accelerator.unwrap_model(module).model):
        return None
    state = accelerator.get_state_dict(module)  # ObjectiveModule's: the model's keys under "model."
    return {name.removeprefix("model."): tensor for name, tensor in state.items()} if accelerator.is_main_process else None


def save_final(accelerator, module, tokenizer, output: Path, info: dict, identity: dict, merge: bool = False) -> None:
    """The final model in OUTPUT, written to a staging directory first and moved in file by file,
    so every file in OUTPUT is complete whenever it is read (a kill here: rerun to redo it), and
    tokensft_train.json last: a run is finished once it is there. Only the model's files are moved:
    OUTPUT's .tokensft/ (the locks), checkpoints/ and metrics are left as they are. A LoRA model: its
    adapter, or with `merge` the merged model (tokensft.train.lora.save_model)."""
    accelerator.wait_for_everyone()
    weights = full_weights(accelerator, module)  # FSDP: every process takes part
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(module).model
        if lora.is_lora(model):
            info = {**info, "merged": merge}
            _install_final(output, info, identity, tokenizer, lambda staging: lora.save_model(model, staging, merge))
        else:
            _install_final(output, info, identity, tokenizer,
                           lambda staging: model.save_pretrained(staging, state_dict=weights, safe_serialization=True))


def needs_merge(output: Path, config) -> bool:
    """A finished LoRA run rerun with --merge whose OUTPUT holds the adapter alone (it ran without)."""
    return bool(config.lora_r and config.merge and (output / "adapter_config.json").is_file()
                and not (output / lora.ADAPTER_DIR).is_dir())


def merge_final(output: Path, base, tokenizer) -> None:
    """--merge after the fact: OUTPUT's adapter merged into `base` (the base model, loaded as the run
    held it) and installed as the final model, the adapter moved to OUTPUT/adapter, as a run with
    --merge would have written it; the run card is kept, marked merged."""
    from peft import PeftModel

    info = json.loads((output / FINISHED_FILE).read_text(encoding="utf-8"))
    identity = info.pop("identity")
    model = PeftModel.from_pretrained(base, str(output))
    _install_final(output, {**info, "merged": True}, identity, tokenizer, lambda staging: lora.save_model(model, staging, True))


def _install_final(output: Path, info: dict, identity: dict, tokenizer, write) -> None:
    """write(staging) the model's files, then the tokenizer and the run card, and move them into
    OUTPUT file by file, the run card (the finished marker) last (see save_final)."""
    staging = output / ".final.tmp"
    if staging.exists():
        shutil.rmtree(staging)  # a killed run's partial save
    with _writing(output, "the final model", output, staging):
        write(staging)
        tokenizer.save_pretrained(staging)
        (staging / FINISHED_FILE).write_text(json.dumps({**info, "identity": identity}, indent=2))
        lora.remove_stale(output, {f.name for f in staging.iterdir()})  # a full model after an adapter, or back
        for file in sorted(staging.iterdir(), key=lambda f: f.name == FINISHED_FILE):  # the marker last
            if file.is_dir():
                shutil.rmtree(output / file.name, ignore_errors=True)  # OUTPUT/adapter: replaced whole
            os.replace(file, output / file.name)
        staging.rmdir()


@contextmanager
def _writing(path: Path, what: str, output: Path, partial: Path | None):
    """A failed write (see the module docstring for what raises) as a one-line SaveError naming `path`;
    `partial`, the half-written directory, is removed (it is never listed as a checkpoint anyway)."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as exc:
        reason = _write_failure(exc)
        if reason is None:  # a RuntimeError that is no write failure: a bug, with its traceback
            raise
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)  # frees what it took of the disk
        found = checkpoints(output)
        kept = (f"the last complete checkpoint, {found[-1]}, is kept: free some space and rerun the same command to "
                "resume from it" if found else "there is no checkpoint to resume from (--save-every N makes them): "
                "free some space and rerun the same command")
        raise SaveError(f"{path}: cannot write {what} ({reason}); {kept}") from exc


def _write_failure(exc: Exception) -> str | None:
    """Why a write failed, in a few words; None when `exc` is not a write failure."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = " ".join(str(exc).split())
    if isinstance(exc, SafetensorError) and "I/O error: " in text:
        return text.split("I/O error: ")[-1]
    if any(marker in text for marker in _TORCH_WRITE_FAILED):
        return "torch.save could not write its file; is the disk full?"
    return None
