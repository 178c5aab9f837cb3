"""`tokensft sweep DATA --objectives LIST --eval HELDOUT --output DIR`: which objective wins on this data.

    arms = parse_arms("nll,p,threshold-nll:0.2,nll@prob>=0.1")   # OBJECTIVE[@MASK], masks stored in DATA
    for each (arm, seed), this rank's share (job i belongs to rank i % world):
        DIR/arms/<arm>/seed-<s>/model   tokensft train DATA --objective ... --seed s   (a normal train output)
        DIR/arms/<arm>/seed-<s>/eval    tokensft eval that model on HELDOUT             (a normal eval output)
    DIR/baseline/eval                   the initial model, evaluated the same way
    when every job is done: DIR/results.json (per arm: accuracy per seed, mean, sd, held-out mean p,
    the commands that reproduce it; the ranking; the report's guidance and whether they agree) and
    DIR/index.html

Every arm trains from the same initial model on the same scored data, with the same settings and,
for a given seed, the same data order (train's order is a function of the seed alone). A killed
sweep resumes arm by arm: finished train and eval outputs say so and are not redone.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokensft import __version__
from tokensft.core.dataset import load_metadata
from tokensft.core.errors import ConfigError
from tokensft.core.fileio import atomic_write
from tokensft.core.identity import changed_keys
from tokensft.core.locks import OutputLock
from tokensft.core.masks import parse_mask
from tokensft.records.readers import input_fingerprint
from tokensft.train import parse_objective

SWEEP_FILE, RESULTS, PAGE = "sweep.json", "results.json", "index.html"


@dataclass(frozen=True)
class Arm:
    objective: str  # an --objective spec
    mask: str | None = None  # a stored mask (spec or name), as train's --mask

    @property
    def spec(self) -> str:
        return self.objective if self.mask is None else f"{self.objective}@{self.mask}"

    @property
    def name(self) -> str:
        """A directory name: the objective with every run of other characters made one '_', then the
        mask's canonical name (prob>=0.1 -> prob_ge_0.1, so >= and <= never collide)."""
        objective = re.sub(r"[^a-z0-9.=-]+", "_", self.objective).strip("_")
        return objective if self.mask is None else f"{objective}@{parse_mask(self.mask).name}"


def parse_arms(text: str) -> list[Arm]:
    """Arms from a comma-separated list of OBJECTIVE[@MASK]. A piece `key=value` continues the arm
    before it (qtarget:gamma=0.5,prior=teacher is one arm). Each part is checked as train checks it."""
    pieces: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if pieces and re.fullmatch(r"[a-z_]+=[^:@]*(@.*)?", piece):
            pieces[-1] += "," + piece
        else:
            pieces.append(piece)
    arms = []
    for piece in pieces:
        objective, _, mask = piece.partition("@")
        objective = objective.strip().lower().replace(" ", "")  # as parse_objective reads it: P and p are one arm
        parse_objective(objective)
        if mask:
            parse_mask(mask)
        arms.append(Arm(objective, mask or None))
    if not arms:
        raise ConfigError("--objectives: give at least one objective, e.g. nll,p,threshold-nll:0.2")
    if len({a.name for a in arms}) != len(arms):
        raise ConfigError(f"--objectives {text!r}: an arm is listed twice")
    return arms


@dataclass
class SweepConfig:
    """Everything `tokensft sweep` takes: train settings (`train`, TrainConfig's fields) and eval
    settings (`eval`, EvalConfig's fields) apply to every arm."""

    data: str  # a scored (enriched) dataset: the training data of every arm
    heldout: str  # records to evaluate on, in any input format score reads
    output: str
    objectives: str = "nll,p"
    seeds: list[int] = field(default_factory=lambda: [0])
    baseline: bool = True  # also evaluate the initial model
    train: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    overwrite: bool = False
    quiet: bool = False
    command: str = ""

    def validate(self) -> list[Arm]:
        """The arms; every arm's train settings and the eval settings are checked here, before any
        arm trains (a bad --samples must not wait for the first model)."""
        arms = parse_arms(self.objectives)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds {self.seeds}: give distinct seeds, e.g. 0,1,2")
        for name in ("data", "output", "objective", "mask", "seed", "overwrite", "quiet"):
            if name in self.train:
                raise ConfigError(f"sweep sets {name} for every arm itself; do not give it as a train setting")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"--rank {self.rank} --world-size {self.world_size}: need 0 <= rank < world size")
        for arm in arms:
            for seed in self.seeds:
                _train_config(self, Path(self.output), arm, seed).validate()
        _eval_config(self, Path(self.output), None, self.seeds[0]).validate()
        return arms


def _jobs(config: SweepConfig, arms: list[Arm]) -> list[tuple[Arm | None, int]]:
    """(arm, seed) of every job, in a fixed order; (None, 0) is the baseline."""
    return ([(None, 0)] if config.baseline else []) + [(arm, seed) for arm in arms for seed in config.seeds]


def job_dir(directory: Path, arm: Arm | None, seed: int) -> Path:
    return directory / "baseline" if arm is None else directory / "arms" / arm.name / f"seed-{seed}"


def sweep(config: SweepConfig) -> dict:
    """Run (or resume) this rank's jobs; aggregate when every job is done. Returns a summary."""
    arms = config.validate()
    directory = Path(config.output)
    meta = load_metadata(config.data)
    # what decides every arm: the scored data (its input and scorer), the held-out records' bytes, the settings
    identity = {"data": meta.get("input", {}).get("fingerprint"), "scorer": meta["model"].get("content_hash"),
                "enrichment": sorted(meta.get("enrichment", {}).get("masks", {})), "data_path": str(config.data),
                "heldout": str(config.heldout), "heldout_fingerprint": input_fingerprint(config.heldout),
                "arms": [a.spec for a in arms], "seeds": config.seeds, "baseline": config.baseline,
                "train": config.train, "eval": config.eval}
    with OutputLock(directory):
        _prepare(directory, identity, config.overwrite)
    jobs, scoring = _jobs(config, arms), _scoring(meta)
    for i, (arm, seed) in enumerate(jobs):
        if i % config.world_size == config.rank:
            if _scoring(load_metadata(config.data)) != scoring:
                raise ConfigError(f"{config.data} was scored again while this sweep ran: its arms would compare "
                                  "training on different data; rerun the sweep with --overwrite")
            run_job(config, directory, arm, seed)
    with OutputLock(directory):
        if all((job_dir(directory, arm, seed) / "eval" / "results.json").is_file() for arm, seed in jobs):
            results = aggregate(config, directory, arms)
            return {"status": "finished", "output": str(directory), "results": results}
    return {"status": "rank-done", "output": str(directory), "rank": config.rank}


def _scoring(meta: dict) -> list:
    """What decides the rows every arm trains on: the scoring run (an enrich adding columns changes
    no arm's data; a `score --overwrite` of DATA does)."""
    return [meta.get(key) for key in ("input", "model", "render", "max_length", "dtype", "weights")]


def _prepare(directory: Path, identity: dict, overwrite: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    foreign = sorted(p.name for p in directory.iterdir()
                     if p.name not in {SWEEP_FILE, RESULTS, PAGE, "arms", "baseline", ".tokensft.lock"})
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
        for name in ("arms", "baseline", RESULTS, PAGE):
            p = directory / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        with atomic_write(path, "w", encoding="utf-8") as f:
            json.dump(identity, f, indent=2, sort_keys=True)


def _train_config(config: SweepConfig, directory: Path, arm: Arm, seed: int):
    from tokensft.train import TrainConfig

    return TrainConfig(data=config.data, output=str(job_dir(directory, arm, seed) / "model"), objective=arm.objective,
                       mask=arm.mask, seed=seed, quiet=config.quiet, **config.train)


def _eval_config(config: SweepConfig, directory: Path, arm: Arm | None, seed: int):
    from tokensft.evaluate.config import EvalConfig
    from tokensft.records.formats import FormatSpec
    from tokensft.train import TrainConfig

    model = str(job_dir(directory, arm, seed) / "model") if arm else config.train.get("model", TrainConfig.model)
    settings = {k: v for k, v in config.eval.items() if k != "format"}
    return EvalConfig(model=model, input=config.heldout, output=str(job_dir(directory, arm, seed) / "eval"),
                      seed=seed, quiet=config.quiet, rank=0, world_size=1,
                      format=FormatSpec(**config.eval.get("format", {})), **settings)


def run_job(config: SweepConfig, directory: Path, arm: Arm | None, seed: int) -> None:
    """Train (unless the baseline) and evaluate one job; both resume or skip when already done."""
    from tokensft.evaluate.run import evaluate
    from tokensft.train import train

    if arm is not None:
        train(_train_config(config, directory, arm, seed))
    evaluate(_eval_config(config, directory, arm, seed))


def _commands(config: SweepConfig, directory: Path, arm: Arm | None, seed: int) -> list[str]:
    """The commands that reproduce a job by hand."""
    def flags(settings: dict) -> list[str]:
        out = []
        for key, value in sorted(settings.items()):
            flag = "--" + key.replace("_", "-")
            if value is True:
                out.append(flag)
            elif value is False and key == "teacher_forced":
                out.append("--no-teacher-forced")
            elif value is not None and value is not False:
                out += [flag, str(value)]
        return out

    ev = _eval_config(config, directory, arm, seed)
    settings = {**{k: v for k, v in config.eval.items() if k != "format"}, **config.eval.get("format", {})}
    eval_cmd = ["tokensft", "eval", ev.model, config.heldout, "-o", ev.output, "--seed", str(seed), *flags(settings)]
    if arm is None:
        return [shlex.join(eval_cmd)]
    tr = _train_config(config, directory, arm, seed)
    train_cmd = ["tokensft", "train", config.data, "-o", tr.output, "--objective", arm.objective,
                 *(["--mask", arm.mask] if arm.mask else []), "--seed", str(seed), *flags(config.train)]
    return [shlex.join(train_cmd), shlex.join(eval_cmd)]


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    clean = [v for v in values if v is not None]
    if not clean:
        return None, None
    return float(np.mean(clean)), float(np.std(clean, ddof=1)) if len(clean) > 1 else None


def aggregate(config: SweepConfig, directory: Path, arms: list[Arm]) -> dict:
    """results.json and index.html from every job's eval results."""
    def job(arm, seed) -> dict:
        results = json.loads((job_dir(directory, arm, seed) / "eval" / "results.json").read_text(encoding="utf-8"))
        tf = results.get("teacher_forced") or {}
        return {"seed": seed, "accuracy": results["accuracy"], "heldout_mean_p": tf.get("mean_p"),
                "heldout_nll": tf.get("nll"), "commands": _commands(config, directory, arm, seed)}

    rows = []
    for arm in arms:
        runs = [job(arm, seed) for seed in config.seeds]
        acc, acc_sd = _mean_sd([r["accuracy"] for r in runs])
        mean_p, _ = _mean_sd([r["heldout_mean_p"] for r in runs])
        rows.append({"arm": arm.spec, "objective": arm.objective, "mask": arm.mask, "accuracy": acc,
                     "accuracy_sd": acc_sd, "heldout_mean_p": mean_p, "runs": runs})
    ranking = [r["arm"] for r in sorted(rows, key=lambda r: (-(r["accuracy"] or 0.0), r["arm"]))]
    results = {
        "arms": rows, "ranking": ranking, "baseline": job(None, 0) if config.baseline else None,
        "guidance": guidance(config.data, rows), "seeds": config.seeds, "data": config.data,
        "heldout": config.heldout, "metric": config.eval.get("metric", "exact"), "train": config.train,
        "eval": config.eval, "command": config.command, "tokensft_version": __version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    from tokensft.reports import sweep_page

    with atomic_write(directory / PAGE, "w", encoding="utf-8") as f:
        f.write(sweep_page(results))
    with atomic_write(directory / RESULTS, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    return results


def guidance(data: str, rows: list[dict]) -> dict:
    """The report's heuristic advice for `data` beside the measurement (see analysis.continuum.agreement)."""
    from tokensft.analysis import agreement, load_targets, summary

    return agreement(rows, summary(load_targets(data, topk=False))["recommendation"])
