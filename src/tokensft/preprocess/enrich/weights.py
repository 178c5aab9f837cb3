"""Computed loss weights in an enrichment (`enrich --weight SPEC`): which to compute, in what
order, and their per-shard statistics and provenance. The math is `core.weights`.

    weights = plan_weights(requested, stored, recomputed)   # new, changed, or stale; each after what it reads
    check_reads(source, masks, weights, columns)            # refuse before any work what cannot be computed
    stats = add_weights(weights, shard)                     # per shard: the columns, and their counts
    entries = weight_entries(weights, merge_stats(shards), known, scorer, teacher)   # tokensft.json

Roles, as in Rho-1: the scorer (the dataset's `logprob`) is the model to train, the teacher
(`enrich --teacher REF`, same tokenizer, `teacher_logprob`) the reference trained on good data;
`excess` = (-log p_scorer) - (-log p_reference) = teacher_logprob - logprob.

Staleness: a stored weight is recomputed when a column it reads is recomputed in this plan (a new
teacher's teacher_logprob, a mask or weight it multiplies), transitively.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from tokensft.core.errors import ConfigError
from tokensft.core.masks import MaskSpec, parse_mask
from tokensft.core.schema import TEACHER_LOGPROB, WEIGHT, WEIGHT_PREFIX, is_mask_column
from tokensft.core.weights import WeightSpec, parse_weight, weight_values


def plan_weights(requested: list[WeightSpec], stored: dict, recomputed: set[str]) -> list[WeightSpec]:
    """The weights to compute: those requested that are not stored with the same spec, and every
    weight (requested or stored) that reads a column recomputed by this plan, transitively.
    stored: the metadata's enrichment["weights"]; recomputed: the columns jobs and masks rewrite."""
    wanted = list({w.column: w for w in requested}.values())
    previous = {column: parse_weight(entry["spec"]) for column, entry in sorted(stored.items())}
    candidates = wanted + [w for c, w in previous.items() if c not in {x.column for x in wanted}]
    chosen, changed = set(), set(recomputed)
    grew = True
    while grew:  # a fixpoint: a product of a restaled weight is restaled too
        grew = False
        for w in candidates:
            fresh = w in wanted and stored.get(w.column, {}).get("spec") != w.spec
            if w.column not in chosen and (fresh or changed & set(w.reads)):
                chosen.add(w.column)
                changed.add(w.column)
                grew = True
    return ordered([w for w in candidates if w.column in chosen])


def ordered(weights: list[WeightSpec]) -> list[WeightSpec]:
    """A stable topological order: the order given, except that a weight moves after those of
    `weights` it reads. (No cycle is possible: a product's name contains its factors' names.)"""
    columns = {w.column for w in weights}
    pending, done, out = list(weights), set(), []
    while pending:
        w = next(w for w in pending if all(r in done or r not in columns for r in w.reads))
        pending.remove(w)
        done.add(w.column)
        out.append(w)
    return out


def check_reads(source: Path, masks: list[MaskSpec], weights: list[WeightSpec], have: set[str]) -> None:
    """Refuse, before any work, a mask or weight whose inputs will not exist: every read must be in
    the source, added by a job, a mask of this plan, or a weight before it in the plan's order.
    have: the source's columns and the jobs' columns."""
    have = set(have)
    for mask in masks:
        for column in mask.reads:
            if column not in have:
                raise missing_column(source, "--mask", mask.spec, column)
    have |= {m.column for m in masks}
    for weight in weights:
        for column in weight.reads:
            if column not in have:
                raise missing_column(source, "--weight", weight.spec, column)
        have.add(weight.column)


def missing_column(source: Path, flag: str, spec: str, column: str) -> ConfigError:
    """The one-line error for a mask or weight that reads `column`, naming what adds it."""
    if column == WEIGHT:
        return ConfigError(f"{source}: {flag} {spec!r} reads the data's `weight` column, but this dataset has no data "
                           "weights: give the input records weights and re-score")
    if column == TEACHER_LOGPROB:
        fix = f"add a teacher first (`tokensft enrich {source} --teacher MODEL`) or pass --teacher with it"
    elif is_mask_column(column) or column.startswith(WEIGHT_PREFIX):
        kind = "--mask" if is_mask_column(column) else "--weight"
        adds = _spec_of(column)
        fix = f"add it first (`tokensft enrich {source} {kind} {adds}`) or pass {kind} {adds} with it"
    else:
        fix = "re-score the dataset with this tokensft"
    return ConfigError(f"{source}: {flag} {spec!r} needs the column {column}, which this dataset lacks; {fix}")


def _spec_of(column: str) -> str:
    """The spec that adds a mask or weight column, when its name says it (a product's does not: SPEC)."""
    try:
        return (parse_mask if is_mask_column(column) else parse_weight)(column).spec
    except ConfigError:
        return "SPEC"


def add_weights(weights: list[WeightSpec], shard) -> dict:
    """Compute each weight of one shard, in order (each may read the ones before it), into `shard`
    (assemble.ShardColumns: flat values by column, `offsets`, `target`, `put`). Returns per column
    {targets, sum, min, max, negative} over the shard's targets (min/max None without targets)."""
    stats = {}
    for spec in weights:
        values = weight_values(spec, {c: shard[c] for c in spec.reads}, shard.offsets, shard.target)  # (N,) float32
        shard.put(spec.column, values)
        at = values[shard.target]
        stats[spec.column] = {"targets": int(at.size), "sum": float(at.sum(dtype=np.float64)),
                              "abs_sum": float(np.abs(at).sum(dtype=np.float64)),
                              "min": float(at.min()) if at.size else None, "max": float(at.max()) if at.size else None,
                              "negative": int((at < 0).sum())}
    return stats


def merge_stats(shards: list[dict]) -> dict:
    """The per-shard weight statistics (each shard's ENRICH_KEY "weights") combined, in shard order."""
    out: dict = {}
    for shard in shards:
        for column, s in shard.get("weights", {}).items():
            o = out.setdefault(column, {"targets": 0, "sum": 0.0, "abs_sum": 0.0, "min": None, "max": None,
                                        "negative": 0})
            o["targets"] += s["targets"]
            o["sum"] += s["sum"]
            o["abs_sum"] += s["abs_sum"]
            o["negative"] += s["negative"]
            for key, pick in (("min", min), ("max", max)):
                if s[key] is not None:
                    o[key] = s[key] if o[key] is None else pick(o[key], s[key])
    return out


def known_reads(enrichment: dict, masks: list[MaskSpec], weights: list[WeightSpec]) -> dict[str, tuple[str, ...]]:
    """{column: the columns it is computed from} for every mask and weight stored or computed now."""
    known = {c: parse_mask(e["spec"]).reads for c, e in enrichment.get("masks", {}).items()}
    known |= {c: tuple(e.get("reads") or parse_weight(e["spec"]).reads) for c, e in enrichment.get("weights", {}).items()}
    return known | {m.column: m.reads for m in masks} | {w.column: w.reads for w in weights}


def depends_on(column: str, reads: tuple[str, ...], known: dict) -> bool:
    """Whether something computed from `reads` depends on `column`, directly or through its factors."""
    seen, stack = set(), list(reads)
    while stack:
        c = stack.pop()
        if c == column:
            return True
        if c not in seen:
            seen.add(c)
            stack.extend(known.get(c, ()))
    return False


def weight_entries(weights: list[WeightSpec], stats: dict, known: dict, scorer: dict, teacher: dict | None) -> dict:
    """enrichment["weights"][column] for each weight computed now: spec, reads, provenance, statistics.
    effective_tokens = sum |w| / max |w|: how many full-weight targets the weights amount to (None
    when every weight is 0), as the report computes it."""
    out = {}
    for spec in weights:
        s = stats.get(spec.column, {"targets": 0, "sum": 0.0, "abs_sum": 0.0, "min": None, "max": None, "negative": 0})
        n = s["targets"]
        top = max(abs(s["min"]), abs(s["max"])) if n else None  # max |w|
        out[spec.column] = {
            "spec": spec.spec, "reads": list(spec.reads), "scorer": scorer,
            "teacher": teacher if depends_on(TEACHER_LOGPROB, spec.reads, known) else None,
            "targets": n, "mean": s["sum"] / n if n else None, "min": s["min"], "max": s["max"],
            "negative": s["negative"], "effective_tokens": s["abs_sum"] / top if top else None,
        }
    return out


def list_column(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    """A list column with the shard's row offsets around flat per-token values."""
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
