"""The output directory of `tokensft train`: what may be one, and one writer at a time.

    check_output(OUTPUT, model_dir, data_dir)   # before anything is written: refuse what is not ours
    with locked(accelerator, OUTPUT):           # every process its rank lock; one refusal refuses all
        ...                                     # (checkpoints.finished / resume / the loop)

    OUTPUT/
      .tokensft/lock-rank{r}     held (flock) by process r of the run training here
      train_config.json          the resolved settings: the first file a run writes, after its locks
      metrics.jsonl, checkpoints/, .final.tmp/
      config.json, model*.safetensors, tokenizer files, ...   the final model (names depend on the model)
      tokensft_train.json        moved in last: the run is finished (see checkpoints.finished)

What counts as a training output: a directory holding train_config.json (then every other file in
it is taken as the run's, since the final model's file names depend on the model and tokenizer).
Before that file exists a run has written only its lock files, so a directory holding nothing but
.tokensft/lock-rank* (and a temp file of train_config.json) is one too: a run killed or refused at
its start. Anything else (the model being trained, the dataset, a foreign directory) is refused,
even with --overwrite. `tokensft score` and `enrich` in turn refuse a training output: it holds
files they did not write.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from tokensft.core.errors import ConfigError
from tokensft.core.locks import OUTPUT_LOCK, RankLock
from tokensft.core.schema import STATE_DIR

CONFIG_FILE = "train_config.json"


def check_output(output: Path, model_dir: Path, data_dir: Path) -> None:
    """A ConfigError naming the path unless `output` is new, empty or a tokensft training output."""
    where, fix = f"--output {output}", "choose another --output"
    if output.resolve() == Path(model_dir).resolve():
        raise ConfigError(f"{where}: is the model being trained; its weights would be overwritten: {fix}")
    if Path(model_dir).resolve().is_relative_to(output.resolve()):  # e.g. -m OUTPUT/checkpoints/step-10
        raise ConfigError(f"{where}: holds the model being trained ({model_dir}), which a rerun or --overwrite "
                          f"would delete: copy it out first, or {fix}")
    if output.resolve() == Path(data_dir).resolve():
        raise ConfigError(f"{where}: is the dataset being trained on: {fix}")
    if output.resolve().is_relative_to(Path(data_dir).resolve()):  # in it, tokensft would no longer call it a dataset
        raise ConfigError(f"{where}: is inside the dataset being trained on ({data_dir}): {fix}")
    if not output.exists():
        return
    if not output.is_dir():
        raise ConfigError(f"{where}: is a file, not a directory: {fix}")
    if (output / CONFIG_FILE).is_file():
        return
    foreign = sorted(p.name for p in output.iterdir() if not _ours_before_config(p))
    if foreign:
        raise ConfigError(f"{where}: not empty and not a tokensft training output (found {', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}): {fix}")


def _ours_before_config(path: Path) -> bool:
    """What a training run writes before train_config.json: its lock files, a temp file of that config
    (and .tokensft.lock, which `tokensft score` takes before refusing a directory)."""
    if path.name == STATE_DIR:
        return path.is_dir() and all(p.name.startswith("lock-rank") for p in path.iterdir())
    return path.name == OUTPUT_LOCK or path.name.startswith(f".{CONFIG_FILE}.tmp-")


@contextmanager
def locked(accelerator, output: Path):
    """Hold OUTPUT/.tokensft/lock-rank{r} on every process r while training; released on any exit.
    Each process tries its own lock, then one collective tells every process whether any was
    refused, so a refused run stops on all of them (none is left waiting in a later collective)."""
    with ExitStack() as stack:
        refusal = None
        try:
            stack.enter_context(RankLock(output, accelerator.process_index))
        except ConfigError as exc:  # another run holds this rank's lock (the message names it)
            refusal = exc
        flag = torch.tensor([float(refusal is not None)], device=accelerator.device)
        if accelerator.reduce(flag, reduction="sum").item() > 0:
            raise refusal or ConfigError(f"{output}: another tokensft run is writing this output (another process of "
                                         "this run was refused its lock); wait for it to finish or stop it")
        yield
