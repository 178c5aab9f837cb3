"""`tokensft sweep DATA --objectives LIST --eval HELDOUT --output DIR`: which objective wins on this data.

    arms = parse_arms("nll,p,threshold-nll:0.2,nll@prob>=0.1")   # OBJECTIVE[@MASK], masks stored in DATA
    sets = [parse_heldout("heldout.jsonl"), parse_heldout("hard=hard.jsonl:math")]   # --eval, repeatable
    for each (arm, seed), this rank's share (job i belongs to rank i % world):
        DIR/arms/<arm>/seed-<s>/model          tokensft train DATA --objective ... --seed s   (a normal train output)
        DIR/arms/<arm>/seed-<s>/eval           tokensft eval that model on the first held-out set (a normal eval output)
        DIR/arms/<arm>/seed-<s>/eval-<name>    ... on every other set
    DIR/initial/eval[-<name>]                  the untrained model, evaluated the same way (--no-initial: not)
    when every job is done: DIR/results.json and DIR/index.html (sweep_results.py): per set and arm the
    accuracy with its interval, the paired verdict against --baseline (default nll), the transitions
    against the untrained model; the ranking by verdict; the report's guidance and whether they agree

Every arm trains from the same initial model on the same scored data, with the same settings and,
for a given seed, the same data order (train's order is a function of the seed alone). A killed
sweep resumes arm by arm: finished train and eval outputs say so and are not redone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tokensft.core.dataset import load_metadata
from tokensft.core.errors import ConfigError
from tokensft.core.fileio import atomic_write
from tokensft.core.identity import changed_keys
from tokensft.core.locks import OutputLock
from tokensft.evaluate.sweep_config import (PAGE, RESULTS, Arm, HeldOut, SweepConfig, eval_config, eval_dir,  # noqa: F401
                                            parse_arms, parse_heldout, train_config)
from tokensft.evaluate.sweep_config import jobs as sweep_jobs
from tokensft.records.readers import input_fingerprint

SWEEP_FILE = "sweep.json"
OUR_NAMES = {SWEEP_FILE, RESULTS, PAGE, "arms", "initial", ".tokensft.lock"}


def sweep(config: SweepConfig) -> dict:
    """Run (or resume) this rank's jobs; aggregate when every job is done. Returns a summary."""
    arms = config.validate()
    directory = Path(config.output)
    meta = load_metadata(config.data)
    # what decides every arm: the scored data (its input and scorer), the held-out records' bytes, the settings
    identity = {"data": meta.get("input", {}).get("fingerprint"), "scorer": meta["model"].get("content_hash"),
                "enrichment": sorted(meta.get("enrichment", {}).get("masks", {})), "data_path": str(config.data),
                "heldout": [[h.name, str(h.path), input_fingerprint(h.path), h.metric] for h in config.heldout],
                "arms": [a.spec for a in arms], "seeds": config.seeds, "baseline": config.baseline_arm(arms),
                "initial": config.initial, "train": config.train, "eval": config.eval}
    with OutputLock(directory):
        _prepare(directory, identity, config.overwrite)
    jobs, scoring = sweep_jobs(config, arms), _scoring(meta)
    for i, (arm, seed) in enumerate(jobs):
        if i % config.world_size == config.rank:
            if _scoring(load_metadata(config.data)) != scoring:
                raise ConfigError(f"{config.data} was scored again while this sweep ran: its arms would compare "
                                  "training on different data; rerun the sweep with --overwrite")
            run_job(config, directory, arm, seed)
    with OutputLock(directory):
        if all((eval_dir(config, directory, arm, seed, h) / "results.json").is_file()
               for arm, seed in jobs for h in config.heldout):
            from tokensft.evaluate.sweep_results import aggregate

            results = aggregate(config, directory, arms)
            return {"status": "finished", "output": str(directory), "results": results}
    return {"status": "rank-done", "output": str(directory), "rank": config.rank}


def _scoring(meta: dict) -> list:
    """What decides the rows every arm trains on: the scoring run (an enrich adding columns changes
    no arm's data; a `score --overwrite` of DATA does)."""
    return [meta.get(key) for key in ("input", "model", "render", "max_length", "dtype", "weights")]


def _prepare(directory: Path, identity: dict, overwrite: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in OUR_NAMES)
    if foreign:
        raise ConfigError(f"{directory}: not an empty directory or a tokensft sweep (found {', '.join(foreign[:3])}); "
                          "choose another --output")
    path = directory / SWEEP_FILE
    existing = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if existing is not None and existing != identity and not overwrite:
        changed = changed_keys(existing, identity)
        raise ConfigError(f"{directory} holds a sweep with other settings (differs in: {', '.join(changed)}); "
                          "pass --overwrite to start over, or choose another --output")
    if existing != identity:
        for name in ("arms", "initial", RESULTS, PAGE):
            p = directory / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        with atomic_write(path, "w", encoding="utf-8") as f:
            json.dump(identity, f, indent=2, sort_keys=True)


def run_job(config: SweepConfig, directory: Path, arm: Arm | None, seed: int) -> None:
    """Train (unless the baseline) and evaluate one job; both resume or skip when already done."""
    from tokensft.evaluate.run import evaluate
    from tokensft.train import train

    if arm is not None:
        train(train_config(config, directory, arm, seed))
    for heldout in config.heldout:
        evaluate(eval_config(config, directory, arm, seed, heldout))
