"""The end of an enrichment, once every part exists: final shards, metadata, the swap.

    for each chunk k:  shard k = source shard k - replaced columns + parts k + masks + weights   # write_final_shards
    finish(target)     # per-shard counts summed into tokensft.json; state.json last              # write_metadata
    in place: _swap(target, source)                                                              # one rename

Masks are computed first, then weights in the plan's order (a product reads the masks and weights
before it). Each final shard carries its enrichment counts (mask kept/targets, reference scored/
truncated/failed, weight targets/sum/min/max/negative) under ENRICH_KEY, so `write_metadata` sums
them over shards like scoring's counts: a shard written before a kill counts the same as one
written after the resume.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from tokensft import __version__
from tokensft.core.counts import Counts
from tokensft.core.dataset import flat_list, read_schema, read_table, shard_name
from tokensft.core.masks import EXCESS, MaskSpec, mask_values, quantile_threshold, source_values
from tokensft.core.schema import (CHUNK_KEY, ENRICH_KEY, IGNORE_INDEX, METADATA_KEY, REF_MEAN_LOGPROB, SCHEMA_VERSION,
                                  TEACHER_LOGPROB, enrichment_field, enrichment_order, is_enrichment, ref_columns)
from tokensft.preprocess import output
from tokensft.preprocess.enrich import weights as enrich_weights
from tokensft.preprocess.enrich.plan import PARTS_DIR, EnrichConfig, EnrichPlan
from tokensft.preprocess.shards import write_shard


def _read_part(plan: EnrichPlan, job, chunk: int) -> tuple[pa.Table, dict]:
    """A job's columns for one chunk, and the counts it recorded with them."""
    table = read_table(plan.part(job, chunk))
    return table, json.loads((table.schema.metadata or {}).get(ENRICH_KEY, b"{}"))


def _quantile_thresholds(plan: EnrichPlan) -> dict:
    """Exact dataset-wide thresholds of the quantile masks, on the values each ranks (a source's
    log-probs, or the excess loss): one pass over the columns they read."""
    thresholds = {}
    quantile = [m for m in plan.masks if m.rule == "quantile>="]
    for reads in sorted({m.reads for m in quantile}):
        first = next(m for m in quantile if m.reads == reads)  # every mask reading `reads` ranks the same values
        values = []
        for k in range(plan.num_chunks):
            flat = {c: flat_list(_read_column(plan, c, k))[0] for c in reads}
            ranked = source_values(first, flat)
            values.append(ranked[~np.isnan(ranked)])
        everything = np.concatenate(values) if values else np.zeros(0, np.float32)
        for m in quantile:
            if m.reads == reads:
                thresholds[m.column] = quantile_threshold(everything, m.params[0])
    return thresholds


def _read_column(plan: EnrichPlan, column: str, chunk: int) -> pa.ChunkedArray:
    """One column of chunk `chunk`: from the part of the job that adds it, else from the source shard."""
    job = next((j for j in plan.jobs if column in j.columns), None)
    table = _read_part(plan, job, chunk)[0] if job else plan.shard(chunk, [column])
    return table.column(column)


class ShardColumns:
    """A shard's columns being assembled, with their flat values read once: shard[c] is column c's
    (N,) values; offsets (R + 1,) and target (N,) bool (labels != -100) are shared by every column."""

    def __init__(self, columns: dict):
        self.columns, self._flat = columns, {}
        labels, self.offsets = flat_list(columns["labels"])
        self.target = labels != IGNORE_INDEX  # (N,)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._flat:
            values, offsets = flat_list(self.columns[name])
            assert np.array_equal(offsets, self.offsets), f"{name} is not aligned with labels"
            self._flat[name] = values
        return self._flat[name]

    def put(self, name: str, values: np.ndarray) -> None:
        """Add (or replace) a list column from its flat values."""
        self.columns[name] = enrich_weights.list_column(self.offsets, values)
        self._flat[name] = values


def write_final_shards(plan: EnrichPlan) -> None:
    """Write every missing final shard: the source shard's columns, the parts' columns, the masks, the weights."""
    thresholds = _quantile_thresholds(plan)
    replaced = {m.column for m in plan.masks} | {w.column for w in plan.weights} | {c for j in plan.jobs for c in j.columns}
    if any(j.kind == "ref" for j in plan.jobs):
        replaced.add(REF_MEAN_LOGPROB)
    for k in range(plan.num_chunks):
        if (plan.target / shard_name(k)).is_file():
            continue
        table = plan.shard(k)
        chunk_stats = json.loads(table.schema.metadata[CHUNK_KEY])
        columns = {name: table.column(name) for name in table.column_names if name not in replaced}
        counts = Counts(masks={}, refs={})
        for job in plan.jobs:
            part, part_counts = _read_part(plan, job, k)
            for name in part.column_names:
                columns[name] = part.column(name)
            if job.kind == "ref":
                counts.merge({"refs": {job.name: part_counts}})
        ids = columns["id"].to_pylist()
        shard = ShardColumns(columns)
        for mask in plan.masks:
            ranked = source_values(mask, {c: shard[c] for c in mask.reads})  # (N,) float32, NaN at non-targets
            values = mask_values(mask, ranked, shard.offsets, ids, thresholds.get(mask.column))
            shard.put(mask.column, values)
            counts.add("masks", int(values.sum()), mask.column, "kept")
            counts.add("masks", int((~np.isnan(ranked)).sum()), mask.column, "targets")
        weight_stats = enrich_weights.add_weights(plan.weights, shard)
        refs = ref_columns(columns)
        if refs:
            columns[REF_MEAN_LOGPROB] = pa.array(_nanmean([columns[c] for c in refs], table.num_rows))
        base = [f for f in table.schema if not (f.name in replaced or is_enrichment(f.name))]
        extra = sorted((c for c in columns if is_enrichment(c)), key=enrichment_order)
        # thresholds are dataset-wide, the same in every shard: stored beside the counts, not summed
        stats = {"counts": counts, "thresholds": thresholds, "weights": weight_stats}
        schema = pa.schema(base + [enrichment_field(c) for c in extra], metadata={
            METADATA_KEY: json.dumps(plan.identity, sort_keys=True).encode(),
            ENRICH_KEY: json.dumps(stats, sort_keys=True).encode(),
        })
        out = pa.Table.from_arrays([_as_array(columns[f.name]) for f in schema], schema=schema)
        write_shard(plan.target, k, out, chunk_stats)


def _as_array(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _nanmean(columns: list, rows: int) -> np.ndarray:
    """(R,) float32: the mean over references of the non-NaN values; NaN where none is valid."""
    stacked = np.stack([_as_array(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in columns])  # (M, R)
    valid = ~np.isnan(stacked)
    total = np.where(valid, stacked, 0.0).sum(axis=0)
    count = valid.sum(axis=0)
    out = np.full(rows, np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out.astype(np.float32)


def write_metadata(config: EnrichConfig, plan: EnrichPlan) -> dict:
    """Sum the per-shard enrichment counts into the metadata, then finish the staging output."""
    shards = [json.loads((read_schema(plan.target / shard_name(k)).metadata or {}).get(ENRICH_KEY, b"{}"))
              for k in range(plan.num_chunks)]
    counts = Counts.total((s.get("counts", {}) for s in shards), masks={}, refs={})
    thresholds = shards[-1].get("thresholds", {}) if shards else {}
    meta, teacher = plan.meta, plan.teacher
    enrichment = json.loads(json.dumps(meta.get("enrichment", {})))  # deep copy
    enrichment.setdefault("masks", {})
    enrichment.setdefault("refs", {})
    teacher_model = teacher.provenance["model"] if teacher else enrichment.get("teacher", {}).get("model")
    for mask in plan.masks:
        scorer = teacher_model if mask.source == "teacher" else meta["model"]
        kept = counts["masks"].get(mask.column, {})
        n_kept, n_targets = kept.get("kept", 0), kept.get("targets", 0)
        enrichment["masks"][mask.column] = {
            "spec": mask.spec, "source": mask.source, "reads": list(mask.reads),
            "source_column": f"{TEACHER_LOGPROB} - {mask.reads[0]}" if mask.source == EXCESS else mask.logprob_column,
            "threshold": _threshold(mask, thresholds.get(mask.column)), "kept_targets": n_kept, "targets": n_targets,
            "kept_fraction": n_kept / n_targets if n_targets else None, "scorer": scorer,
            "teacher": teacher_model if TEACHER_LOGPROB in mask.reads else None,
        }
    known = enrich_weights.known_reads(enrichment, plan.masks, plan.weights)
    enrichment["weights"] = dict(sorted({
        **enrichment.get("weights", {}),
        **enrich_weights.weight_entries(plan.weights, enrich_weights.merge_stats(shards), known, meta["model"], teacher_model),
    }.items()))
    for job in plan.jobs:
        if job.kind == "ref":
            enrichment["refs"][job.name] = {**job.provenance, "counts": counts["refs"].get(job.name, {})}
        else:
            enrichment["teacher"] = job.provenance
    enrichment["refs"] = dict(sorted(enrichment["refs"].items()))
    enrichment["masks"] = dict(sorted(enrichment["masks"].items()))
    step = {"command": config.command, "tokensft_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "added": [m.column for m in plan.masks] + [w.column for w in plan.weights] + [c for j in plan.jobs for c in j.columns]}
    # the output holds this version's columns: a version-2 dataset enriched now is a version-3 one
    base = {k: v for k, v in meta.items() if k not in ("counts", "num_shards", "finished")} | {"schema_version": SCHEMA_VERSION}
    metadata = {**base, "enrichment": enrichment, "enrich_history": [*meta.get("enrich_history", []), step]}
    # The output is the source's scoring run, enriched: `tokensft score` with the same arguments
    # sees it as finished, and a rerun of this enrichment sees `enrich_identity`. Written before
    # finish() writes state.json, so a finished output always carries both.
    final = {**plan.run, "metadata": metadata, "identity": plan.source_run["identity"], "enrich_identity": plan.identity}
    output.write_json_atomic(plan.target / output.STATE_DIR / output.RUN_FILE, final)
    finished = output.finish(plan.target)
    shutil.rmtree(plan.target / output.STATE_DIR / PARTS_DIR, ignore_errors=True)
    return finished


def _threshold(mask: MaskSpec, quantile_logprob: float | None) -> dict:
    p = mask.params
    if mask.rule == "prob>=":
        return {"min_prob": p[0]}
    if mask.rule == "prob<=":
        return {"max_prob": p[0]}
    if mask.rule == "prob-between":
        return {"min_prob": p[0], "max_prob": p[1]}
    if mask.rule == "top-frac":
        return {"fraction_per_sequence": p[0]}
    if mask.rule == "quantile>=" and mask.source == EXCESS:  # an excess loss, not a log-prob
        ok = quantile_logprob is not None and not np.isnan(quantile_logprob)
        return {"quantile": p[0], "min_excess": quantile_logprob if ok else None}
    if mask.rule == "quantile>=":
        ok = quantile_logprob is not None and not np.isnan(quantile_logprob)
        return {"quantile": p[0], "min_logprob": quantile_logprob if ok else None,
                "min_prob": float(np.exp(np.float64(quantile_logprob))) if ok else None}
    return {"drop_fraction": p[0], "seed": int(p[1])}


def _swap(staging: Path, source: Path) -> None:
    """Put the finished staging directory in place of the source, atomically; drop the old one."""
    output.swap_in(staging, source)
