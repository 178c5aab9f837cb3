"""A sweep's settings and where each of its jobs lives: the arms, the held-out sets, the config,
and the train and eval settings of one job (shared by sweep.py, which runs the jobs, and
sweep_results.py, which reads them).

    parse_arms("nll,p,nll@prob>=0.1")        # OBJECTIVE[@MASK] arms
    parse_heldout("hard=hard.jsonl:math")    # FILE | NAME=FILE | NAME=FILE:METRIC
    job_dir(DIR, arm, seed), eval_dir(config, DIR, arm, seed, heldout)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tokensft.core.errors import ConfigError
from tokensft.core.masks import parse_mask
from tokensft.evaluate.answers import METRICS, parse_metric
from tokensft.train import parse_objective

RESULTS, PAGE = "results.json", "index.html"  # a finished sweep's files (and every eval's results.json)

@dataclass(frozen=True)
class HeldOut:
    """One held-out set: its name (directory and column names), its records, its metric (None: --metric's)."""

    name: str
    path: str
    metric: str | None = None


def parse_heldout(text: str) -> HeldOut:
    """FILE, NAME=FILE or NAME=FILE:METRIC (METRIC one of --metric's, regex:PATTERN included)."""
    name, _, rest = text.partition("=") if re.match(r"^[A-Za-z][\w-]*=", text) else ("", "", text)
    path, metric = rest, None
    for i in (m.start() for m in re.finditer(":", rest)):
        tail = rest[i + 1:]
        if tail.split(":")[0] in {m.split(":")[0] for m in METRICS}:
            path, metric = rest[:i], tail
            break
    if metric is not None:
        parse_metric(metric)
    if not path:
        raise ConfigError(f"--eval {text!r}: give FILE, NAME=FILE or NAME=FILE:METRIC")
    return HeldOut(name or re.sub(r"[^\w-]+", "_", Path(path).stem) or "heldout", path, metric)


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
    heldout: list[HeldOut]  # the sets to evaluate on (records in any input format score reads)
    output: str
    objectives: str = "nll,p"
    seeds: list[int] = field(default_factory=lambda: [0])
    baseline: str | None = None  # the arm every arm is compared with; None: nll if an arm, else the first
    initial: bool = True  # also evaluate the untrained model (the transitions need it)
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
        if self.baseline is not None and self.baseline not in {a.spec for a in arms}:
            raise ConfigError(f"--baseline {self.baseline}: not one of the arms ({', '.join(a.spec for a in arms)})")
        if not self.heldout or len({h.name for h in self.heldout}) != len(self.heldout):
            raise ConfigError("--eval: give each held-out set once, with a name of its own (NAME=FILE)")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds {self.seeds}: give distinct seeds, e.g. 0,1,2")
        for name in ("data", "output", "objective", "mask", "seed", "overwrite", "quiet"):
            if name in self.train:
                raise ConfigError(f"sweep sets {name} for every arm itself; do not give it as a train setting")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"--rank {self.rank} --world-size {self.world_size}: need 0 <= rank < world size")
        for arm in arms:
            for seed in self.seeds:
                train_config(self, Path(self.output), arm, seed).validate()
        for heldout in self.heldout:
            eval_config(self, Path(self.output), None, self.seeds[0], heldout).validate()
        return arms

    def baseline_arm(self, arms: list[Arm]) -> str:
        return self.baseline or ("nll" if "nll" in {a.spec for a in arms} else arms[0].spec)


def jobs(config: SweepConfig, arms: list[Arm]) -> list[tuple[Arm | None, int]]:
    """(arm, seed) of every job, in a fixed order; (None, 0) is the untrained model."""
    return ([(None, 0)] if config.initial else []) + [(arm, seed) for arm in arms for seed in config.seeds]


def job_dir(directory: Path, arm: Arm | None, seed: int) -> Path:
    return directory / "initial" if arm is None else directory / "arms" / arm.name / f"seed-{seed}"


def eval_dir(config: SweepConfig, directory: Path, arm: Arm | None, seed: int, heldout: HeldOut) -> Path:
    """eval/ for the first held-out set (a one-set sweep keeps its layout), eval-<name>/ for the others."""
    first = heldout.name == config.heldout[0].name
    return job_dir(directory, arm, seed) / ("eval" if first else f"eval-{heldout.name}")


def train_config(config: SweepConfig, directory: Path, arm: Arm, seed: int):
    from tokensft.train import TrainConfig

    return TrainConfig(data=config.data, output=str(job_dir(directory, arm, seed) / "model"), objective=arm.objective,
                       mask=arm.mask, seed=seed, quiet=config.quiet, **config.train)


def eval_config(config: SweepConfig, directory: Path, arm: Arm | None, seed: int, heldout: HeldOut):
    from tokensft.evaluate.config import EvalConfig
    from tokensft.records.formats import FormatSpec
    from tokensft.train import TrainConfig

    model = str(job_dir(directory, arm, seed) / "model") if arm else config.train.get("model", TrainConfig.model)
    settings = {k: v for k, v in config.eval.items() if k != "format"}
    if heldout.metric is not None:
        settings["metric"] = heldout.metric
    return EvalConfig(model=model, input=heldout.path, output=str(eval_dir(config, directory, arm, seed, heldout)),
                      seed=seed, quiet=config.quiet, rank=0, world_size=1,
                      format=FormatSpec(**config.eval.get("format", {})), **settings)
