"""Standard benchmark suites through EleutherAI's lm-evaluation-harness (`pip install 'tokensft[lm-eval]'`).

    tokensft eval MODEL --lm-eval gsm8k,arc_easy -o DIR               # DIR/lm_eval.json
    tokensft eval MODEL HELDOUT --lm-eval mytask --lm-eval-include tasks/ -o DIR   # beside our own eval

The harness gets the model tokensft loaded (`simple_evaluate(model=HFLM(pretrained=<model>,
tokenizer=<tokenizer>))`: our dtype and device, no second load, nothing from the Hub); a local task
is a YAML with `dataset_path: json` and `dataset_kwargs: {data_files: ...}` (one file loads as
split `train`), found with `--lm-eval-include DIR`. Its results (per task and metric, with the
harness's own stderr: sample sd / sqrt(n), per model, unpaired) are written whole to
DIR/lm_eval.json, atomically, with the settings that made them; a rerun with the same settings
reads them back. Which of ours matches which of its GSM8K filters: its "strict-match" (`####
number`) is our `numeric` on a completion with `####`, its "flexible-extract" (the last number) our
`numeric` on one without.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokensft.core.errors import ConfigError
from tokensft.core.fileio import atomic_write

RESULTS = "lm_eval.json"


def available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def tasks(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"--lm-eval {text!r}: give comma-separated task names, e.g. gsm8k,arc_easy")
    return names


def run_harness(loaded, directory: Path, task_text: str, include: str | None, batch_size: int, limit: int | None,
                settings: dict) -> dict:
    """The harness's results for `task_text` on the loaded model, from DIR/lm_eval.json when it holds
    this very run, else computed and written there."""
    if not available():
        raise ConfigError("--lm-eval runs EleutherAI's lm-evaluation-harness: pip install 'tokensft[lm-eval]' "
                          "(or lm-eval) first")
    identity = {"tasks": tasks(task_text), "include": include, "limit": limit, **settings}
    path = directory / RESULTS
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = {}
        if stored.get("identity") == identity:
            return stored
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if include is not None and not Path(include).is_dir():
        raise ConfigError(f"--lm-eval-include {include}: not a directory of task YAML files")
    manager = TaskManager(include_path=include) if include else TaskManager()
    unknown = [t for t in identity["tasks"] if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"--lm-eval: no task named {unknown[0]!r} (lm-eval knows {len(manager.all_tasks)}; "
                          "local ones come with --lm-eval-include DIR)")
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size)
    out = simple_evaluate(model=lm, tasks=identity["tasks"], task_manager=manager, limit=limit, log_samples=False)
    kept = {key: out.get(key) for key in ("results", "versions", "n-shot", "n-samples", "higher_is_better",
                                          "lm_eval_version", "date")}
    stored = json.loads(json.dumps({"identity": identity, **kept}, default=str))
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(stored, f, indent=2, sort_keys=True)
    return stored
