"""A finished sweep's results.json and index.html: every held-out set judged (verdicts.py), the
overlap of each set with the training data, the commands that reproduce each run, the guidance.

    results["sets"][name]        {"arms", "ranking", "lead", "initial", "overlap", "metric", "path"}
    results["arms"]              the first set's arms, each with its runs (seed, accuracy, held-out
                                 mean p, the train and eval commands)
    results["ranking"]           the first set's: better than the baseline first, worse last
    results["guidance"]          the report's advice for the data, and whether the measurement agrees

A held-out record whose prompt (every message before its last target turn, whitespace collapsed,
case folded) is also a prompt of the training data is counted, and warned about: its accuracy
measures memory (BLL's own validation file is the first 128 rows of its training split).
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from pathlib import Path

import numpy as np

from tokensft import __version__
from tokensft.core.fileio import atomic_write
from tokensft.evaluate.answers import normalize
from tokensft.evaluate.sweep_config import (PAGE, RESULTS, Arm, HeldOut, SweepConfig, eval_config, eval_dir,
                                            train_config)
from tokensft.evaluate.verdicts import judge_set, read_draws

logger = logging.getLogger(__name__)


def prompt_key(messages) -> str | None:
    """What two records share when they ask the same thing: the messages before the last target one
    (system prompts left out: the training data may have been scored with one the held-out set lacks)."""
    targets = [i for i, m in enumerate(messages) if (m["target"] if isinstance(m, dict) else m.is_target)]
    if not targets:
        return None
    before = [m for m in messages[:targets[-1]] if (m["role"] if isinstance(m, dict) else m.role) != "system"]
    return normalize(" ".join(m["content"] if isinstance(m, dict) else m.content for m in before)) or None


def overlap(config: SweepConfig, heldout: HeldOut) -> dict:
    """{"records", "in_training"}: how many held-out records ask a prompt the training data asks."""
    from tokensft.core.dataset import load
    from tokensft.core.errors import InputError
    from tokensft.records.formats import to_example
    from tokensft.records.readers import detect_kind, iter_rows
    from tokensft.records.validate import detect_record_format

    trained = {prompt_key(m) for m in load(config.data)["messages"]} - {None}
    probe = eval_config(config, Path(config.output), None, config.seeds[0], heldout)  # how eval reads the set
    kind = probe.input_format or detect_kind(heldout.path)
    fmt = detect_record_format(probe, kind)
    records = shared = 0
    for row in iter_rows(heldout.path, kind=kind):
        if row.record is None:
            continue
        try:
            example = to_example(row.record, probe.format, row.where, fmt)
        except InputError:  # eval counts bad records itself; here they only do not count
            continue
        records += 1
        shared += prompt_key(example.messages) in trained
    if shared:
        logger.warning("warning: held-out set %s: %d of its %d records ask a prompt of the training data; their "
                       "accuracy measures memory, not generalization", heldout.name, shared, records)
    return {"records": records, "in_training": shared}


def _flags(settings: dict) -> list[str]:
    out = []
    for key, value in sorted(settings.items()):
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False and key == "teacher_forced":
            out.append("--no-teacher-forced")
        elif isinstance(value, list):
            out += [flag, ",".join(map(str, value))]
        elif value is not None and value is not False:
            out += [flag, str(value)]
    return out


def commands(config: SweepConfig, directory: Path, arm: Arm | None, seed: int) -> list[str]:
    """The commands that reproduce a job by hand: train (unless the untrained model), then one eval per set."""
    settings = {**{k: v for k, v in config.eval.items() if k != "format"}, **config.eval.get("format", {})}
    out = []
    if arm is not None:
        tr = train_config(config, directory, arm, seed)
        out.append(shlex.join(["tokensft", "train", config.data, "-o", tr.output, "--objective", arm.objective,
                               *(["--mask", arm.mask] if arm.mask else []), "--seed", str(seed), *_flags(config.train)]))
    for heldout in config.heldout:
        ev = eval_config(config, directory, arm, seed, heldout)
        mine = {**settings, **({"metric": heldout.metric} if heldout.metric else {})}
        out.append(shlex.join(["tokensft", "eval", ev.model, heldout.path, "-o", ev.output, "--seed", str(seed),
                               *_flags(mine)]))
    return out


def _results(directory: Path) -> dict:
    return json.loads((directory / "results.json").read_text(encoding="utf-8"))


def aggregate(config: SweepConfig, directory: Path, arms: list[Arm]) -> dict:
    """results.json and index.html from every job's evals."""
    baseline = config.baseline_arm(arms)
    sets = {}
    for heldout in config.heldout:
        draws = {arm.spec: [read_draws(eval_dir(config, directory, arm, s, heldout)) for s in config.seeds]
                 for arm in arms}
        initial = read_draws(eval_dir(config, directory, None, 0, heldout)) if config.initial else None
        judged = judge_set(draws, initial, baseline, seed=config.seeds[0])
        first = _results(eval_dir(config, directory, arms[0], config.seeds[0], heldout))
        sets[heldout.name] = {**judged, "path": heldout.path, "metric": first["metric"],
                              "overlap": overlap(config, heldout)}
    primary = config.heldout[0]
    rows = []
    for arm, judged in zip(arms, sets[primary.name]["arms"]):
        runs = []
        for seed in config.seeds:
            r = _results(eval_dir(config, directory, arm, seed, primary))
            tf = r.get("teacher_forced") or {}
            runs.append({"seed": seed, "accuracy": r["accuracy"], "interval": r.get("interval"),
                         "heldout_mean_p": tf.get("mean_p"), "heldout_nll": tf.get("nll"),
                         "commands": commands(config, directory, arm, seed)})
        mean_p = [r["heldout_mean_p"] for r in runs if r["heldout_mean_p"] is not None]
        rows.append({**judged, "objective": arm.objective, "mask": arm.mask,
                     "heldout_mean_p": float(np.mean(mean_p)) if mean_p else None, "runs": runs})
    initial = None
    if config.initial:
        r = _results(eval_dir(config, directory, None, 0, primary))
        tf = r.get("teacher_forced") or {}
        initial = {"accuracy": r["accuracy"], "interval": r.get("interval"), "heldout_mean_p": tf.get("mean_p"),
                   "commands": commands(config, directory, None, 0)}
    lead = sets[primary.name]["lead"]
    results = {
        "arms": rows, "ranking": sets[primary.name]["ranking"], "lead": lead, "baseline": baseline,
        "initial": initial, "sets": sets, "guidance": guidance(config.data, rows, lead), "seeds": config.seeds,
        "data": config.data, "heldout": primary.path, "metric": sets[primary.name]["metric"], "train": config.train,
        "eval": config.eval, "command": config.command, "tokensft_version": __version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    from tokensft.reports import sweep_page

    with atomic_write(directory / PAGE, "w", encoding="utf-8") as f:
        f.write(sweep_page(results))
    with atomic_write(directory / RESULTS, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    return results


def guidance(data: str, rows: list[dict], lead: dict | None) -> dict:
    """The report's heuristic advice for `data` beside the measurement (see analysis.continuum.agreement)."""
    from tokensft.analysis import agreement, load_targets, summary

    return agreement(rows, summary(load_targets(data, topk=False))["recommendation"], lead)
