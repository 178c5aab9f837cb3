"""`tokensft enrich DIR`: add masks, PoFT reference likelihoods and teacher distributions to a
scored dataset, without re-running the scorer. Computed once, reused by every training run.

    plan     = what is asked minus what DIR already holds with the same provenance
    staging  = --output DIR2, or a hidden sibling .DIR.enrich (in place)
    for each model job (reference, teacher), one model in memory at a time:
        for each chunk k of this rank:  part k = score(rows of shard k)      # atomic, resumable
    last rank, once every part exists:
        for each chunk k:  shard k = source shard k + parts + masks            # atomic, resumable
        finish(staging)                                                        # metadata, state.json
        in place: exchange(staging, DIR)      # one atomic rename: readers see old or new, whole

A killed run resumes from the parts and shards already written; the result equals a clean run's.
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from tokensft import __version__
from tokensft.errors import ConfigError
from tokensft.fileio import atomic_write, exchange_dirs
from tokensft.preprocess import output
from tokensft.preprocess.masks import MaskSpec, mask_values, parse_mask, quantile_threshold
from tokensft.preprocess.progress import Progress
from tokensft.preprocess.shards import (CHUNK_KEY, flat_list, read_schema, read_shard_info, read_table, shard_name,
                                       write_shard)
from tokensft.schema import METADATA_KEY, enrichment_field, enrichment_order, load_metadata

ENRICH_KEY = b"tokensft_enrich"  # per-shard mask counts and reference stats, summed at the end
PARTS_DIR = "parts"


@dataclass
class EnrichConfig:
    """Everything `tokensft enrich` takes (help text lives in cli.py)."""

    input: str
    output: str | None = None  # None: in place
    masks: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    ref_names: list[str | None] = field(default_factory=list)  # per ref; None: from the model's name
    ref_template: str = "auto"
    ref_max_length: int | None = None
    teacher: str | None = None
    top_k: int = 20  # the teacher's
    batch_tokens: int | None = None
    chunk_size: int = 256
    dtype: str = "auto"
    device: str = "auto"
    rank: int = 0
    world_size: int = 1
    skip_invalid: bool = False
    overwrite: bool = False
    quiet: bool = False
    command: str = ""

    def validate(self) -> None:
        if self.ref_names and len(self.ref_names) != len(self.refs):
            raise ConfigError(f"{len(self.ref_names)} names for {len(self.refs)} references: give one per reference")
        if self.teacher and self.top_k < 1:
            raise ConfigError(f"--top-k {self.top_k}: a teacher needs K >= 1 stored alternatives")
        if self.ref_max_length is not None and self.ref_max_length < 2:
            raise ConfigError(f"--ref-max-length {self.ref_max_length}: must be at least 2")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"--rank {self.rank} --world-size {self.world_size}: need 0 <= rank < world size")
        if (self.batch_tokens is not None and self.batch_tokens < 1) or self.chunk_size < 1:
            raise ConfigError("--batch-tokens and --chunk-size must be positive")
        if self.world_size > 1 and self.overwrite:
            raise ConfigError("--overwrite with several ranks: delete the output directory first instead")
        for text in self.masks:
            parse_mask(text)

    @property
    def requested(self) -> bool:
        return bool(self.masks or self.refs or self.teacher)


def enrich(config: EnrichConfig) -> dict:
    """Run (or resume) an enrichment. Returns a summary: status, output, metadata when finished.

    Planning, preparing and completing (assembly, finish, swap) run under one lock per dataset
    (for in-place runs a sibling file, never swapped): concurrent runs wait, resume the same
    work, or are refused, and the swap only happens onto the dataset the plan was made from.
    """
    config.validate()
    source = Path(config.input).resolve()  # `.`, `..` and symlinks: enrich the real directory
    in_place = config.output is None or Path(config.output).resolve() == source
    target = _staging(source) if in_place else Path(config.output).resolve()
    rank_lock = None
    with _lock(source, target, in_place):
        if in_place:
            _settle_staging(source)
        meta, source_run, masks, jobs = _plan(config, source, in_place)
        if in_place and not masks and not jobs:
            return {"status": "already-enriched", "output": str(source), "metadata": meta}
        identity = {
            "kind": "enrich", "source": source_run["fingerprint"], "masks": [m.spec for m in masks],
            "jobs": [j.identity for j in jobs], "skip_invalid": config.skip_invalid,
        }
        if not in_place and _finished_run(target, identity) is not None:
            return {"status": "already-finished", "output": str(target), "metadata": output.load_finished(target)}
        fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        run = {"identity": identity, "metadata": {}, "num_chunks": source_run["num_chunks"], "fingerprint": fingerprint}
        _prepare(target, run, overwrite=config.overwrite or in_place)
        rank_lock = output.RankLock(target, config.rank).__enter__()
    try:
        for job in jobs:
            _run_job(config, job, source, target, run["num_chunks"])
        with _lock(source, target, in_place):
            return _complete(config, source, target, in_place, meta, source_run, masks, jobs, run)
    finally:
        rank_lock.__exit__(None, None, None)


def preflight(config: EnrichConfig, scorer: str) -> None:
    """Check an enrichment request before the dataset exists (`score --mask/--ref/--teacher`):
    specs parse, models resolve, the teacher shares the scorer's tokenizer, teacher masks have a teacher."""
    from tokensft.preprocess.models import load_tokenizer, resolve_model_dir, tokenizer_fingerprint

    config.validate()
    masks = [parse_mask(t) for t in config.masks]
    if any(m.source == "teacher" for m in masks) and not config.teacher:
        raise ConfigError(f"--mask {next(m.spec for m in masks if m.source == 'teacher')!r} needs a teacher: add --teacher MODEL")
    if config.refs or config.teacher:
        token_fingerprint = tokenizer_fingerprint(load_tokenizer(resolve_model_dir(scorer)[0]), chat_template=False)
        _resolve_jobs(config, {"token_fingerprint": token_fingerprint})


def _lock(source: Path, target: Path, in_place: bool):
    """In place: a sibling `.NAME.enrich.lock` (the dataset and its staging both get swapped);
    into --output: that output's own lock."""
    if in_place:
        return output.OutputLock(source.parent, name=f".{source.name}.enrich.lock")
    return output.OutputLock(target)


def _plan(config: EnrichConfig, source: Path, in_place: bool) -> tuple[dict, dict, list[MaskSpec], list]:
    """What to compute: the request minus what the dataset already holds with the same provenance."""
    meta = load_metadata(source)
    source_run = output.read_run(source)
    if source_run is None:
        raise ConfigError(f"{source}: no .tokensft/run.json; this dataset was not written by `tokensft score`")
    if in_place:
        foreign = sorted(p.name for p in source.iterdir() if not output.is_ours(p.name))
        if foreign:
            raise ConfigError(f"{source} holds files tokensft did not write ({', '.join(foreign[:3])}); enriching in "
                              "place replaces the directory, so move them away or write a copy with --output")
    masks = list({m.column: m for m in (parse_mask(t) for t in config.masks)}.values())
    jobs = _resolve_jobs(config, meta) if config.refs or config.teacher else []
    present = meta.get("enrichment", {})
    jobs = [j for j in jobs if not j.present_in(present)]
    teacher_job = next((j for j in jobs if j.kind == "teacher"), None)
    if teacher_job is not None:  # a new teacher makes stored teacher masks stale: redo them too
        stored = [parse_mask(v["spec"]) for v in present.get("masks", {}).values() if v.get("source") == "teacher"]
        masks += [m for m in stored if m.column not in {x.column for x in masks}]
    masks = [m for m in masks if teacher_job is not None and m.source == "teacher" or not _mask_present(m, present)]
    columns = set(read_schema(source / shard_name(0)).names)
    _check_columns(source, masks, jobs, columns)
    return meta, source_run, masks, jobs


def _prepare(target: Path, run: dict, overwrite: bool) -> None:
    """Make `target` ready: resume this run's parts and shards, or start over (refused while
    another process writes there)."""
    try:
        existing = output.read_run(target)
    except ConfigError:
        existing = None
        if overwrite:
            shutil.rmtree(target / output.STATE_DIR, ignore_errors=True)
    if existing and existing.get("enrich_identity") == run["identity"] and not output.is_finished(target):
        output.write_json_atomic(target / output.STATE_DIR / output.RUN_FILE, run)  # killed just before finishing
    output.prepare(target, run, overwrite=overwrite)


def _complete(config, source, target, in_place, meta, source_run, masks, jobs, run) -> dict:
    """Under the lock: assemble, finish and (in place) swap -- once every part exists."""
    result = source if in_place else target
    if _enriched(result, run["identity"]):  # another rank completed it meanwhile
        return {"status": "finished", "output": str(result), "metadata": load_metadata(result)}
    if in_place and (output.read_run(source) or {}).get("fingerprint") != source_run["fingerprint"]:
        raise ConfigError(f"{source} changed while this enrichment ran (another one finished first); rerun the command")
    num_chunks = run["num_chunks"]
    if any(not _part(target, j, k).is_file() and not (target / shard_name(k)).is_file()
           for j in jobs for k in range(num_chunks)):
        return {"status": "rank-done", "output": str(target), "rank": config.rank}
    _assemble(config, source, target, masks, jobs, num_chunks, run["identity"])
    _finish(config, source, source_run, meta, target, masks, jobs, run)
    if in_place:
        _swap(target, source)
    return {"status": "finished", "output": str(result), "metadata": load_metadata(result)}


def _staging(source: Path) -> Path:
    """Where an in-place enrichment builds the new dataset: a hidden sibling (same filesystem)."""
    return source.parent / f".{source.name}.enrich"


def _settle_staging(source: Path) -> None:
    """A finished staging directory left by a killed run is either a completed enrichment of the
    current dataset not yet swapped in (swap it now) or the old dataset left there after the swap
    (remove it). An unfinished one stays: it resumes, or is restarted by `_prepare`."""
    staging = _staging(source)
    if not staging.is_dir():
        return
    try:
        run = output.read_run(staging)
    except ConfigError:
        run = None
    if run is None or not output.is_finished(staging):
        return
    current = (output.read_run(source) or {}).get("fingerprint")
    if (run.get("enrich_identity") or {}).get("source") == current:
        _swap(staging, source)
    else:
        shutil.rmtree(staging, ignore_errors=True)


def _resolve_jobs(config: EnrichConfig, meta: dict) -> list:
    """Deferred imports: torch and transformers take seconds, and masks alone need neither."""
    from transformers.utils import logging as hf_logging

    from tokensft.preprocess.jobs import resolve_jobs

    hf_logging.disable_progress_bar()  # our bar is the one to watch
    return resolve_jobs(config, meta)


def _mask_present(mask: MaskSpec, present: dict) -> bool:
    entry = present.get("masks", {}).get(mask.column)
    return entry is not None and entry.get("spec") == mask.spec


def _check_columns(source: Path, masks: list[MaskSpec], jobs: list, columns: set[str]) -> None:
    """Refuse, before any work, a request whose inputs the dataset lacks (naming what adds them)."""
    will_have = columns | {c for j in jobs for c in j.columns}
    for mask in masks:
        if mask.logprob_column not in will_have:
            raise ConfigError(
                f"{source}: --mask {mask.spec!r} needs the column {mask.logprob_column}, which this dataset lacks; "
                f"add a teacher first (`tokensft enrich {source} --teacher MODEL`) or pass --teacher with it"
            )
    if any(j.kind == "ref" for j in jobs) and "messages" not in columns:
        raise ConfigError(f"{source}: no messages column to re-render for references; re-score it with this tokensft")


def _part(target: Path, job, chunk: int) -> Path:
    return target / output.STATE_DIR / PARTS_DIR / f"{job.part}-{chunk:05d}.arrow"


def _run_job(config: EnrichConfig, job, source: Path, target: Path, num_chunks: int) -> None:
    """Score this rank's chunks under one model, writing one part file per chunk."""
    pending = [k for k in range(num_chunks) if k % config.world_size == config.rank
               and not _part(target, job, k).is_file() and not (target / shard_name(k)).is_file()]
    if not pending:
        return
    rows = sum(read_shard_info(source / shard_name(k))[1].get("written", 0) for k in pending)
    worker = job.load(config)
    progress = Progress(total_rows=rows, disable=config.quiet, desc=f"{job.kind} {job.name}")
    (target / output.STATE_DIR / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    for k in pending:
        table = read_table(source / shard_name(k), job.reads)
        columns, stats = worker(table, f"{source}/{shard_name(k)}")
        part = pa.table(columns)
        part = part.replace_schema_metadata({ENRICH_KEY: json.dumps(stats).encode()})
        with atomic_write(_part(target, job, k), "wb") as sink, pa.ipc.new_stream(sink, part.schema) as writer:
            writer.write_table(part)
        progress.update(rows=table.num_rows, targets=stats.get("targets", 0))
    progress.close()
    del worker
    gc.collect()


def _read_part(target: Path, job, chunk: int) -> tuple[pa.Table, dict]:
    table = read_table(_part(target, job, chunk))
    return table, json.loads((table.schema.metadata or {}).get(ENRICH_KEY, b"{}"))


def _quantile_thresholds(source: Path, target: Path, masks: list[MaskSpec], jobs: list, num_chunks: int) -> dict:
    """Exact dataset-wide log-prob thresholds of the quantile masks (one pass over the column)."""
    thresholds = {}
    for column in sorted({m.logprob_column for m in masks if m.rule == "quantile>="}):
        job = next((j for j in jobs if column in j.columns), None)
        values = []
        for k in range(num_chunks):
            table = _read_part(target, job, k)[0] if job else read_table(source / shard_name(k), [column])
            flat, _ = flat_list(table.column(column))
            values.append(flat[~np.isnan(flat)])
        everything = np.concatenate(values) if values else np.zeros(0, np.float32)
        for m in masks:
            if m.rule == "quantile>=" and m.logprob_column == column:
                thresholds[m.column] = quantile_threshold(everything, m.params[0])
    return thresholds


def _assemble(config, source, target, masks, jobs, num_chunks, identity) -> None:
    """Write every missing final shard: the source shard's columns, the parts' columns, the masks."""
    thresholds = _quantile_thresholds(source, target, masks, jobs, num_chunks)
    replaced = {m.column for m in masks} | {c for j in jobs for c in j.columns}
    if any(j.kind == "ref" for j in jobs):
        replaced.add("ref_mean_logprob")
    for k in range(num_chunks):
        if (target / shard_name(k)).is_file():
            continue
        table = read_table(source / shard_name(k))
        chunk_stats = json.loads(table.schema.metadata[CHUNK_KEY])
        columns = {name: table.column(name) for name in table.column_names if name not in replaced}
        enrich_stats = {"masks": {}, "refs": {}}
        for job in jobs:
            part, stats = _read_part(target, job, k)
            for name in part.column_names:
                columns[name] = part.column(name)
            if job.kind == "ref":
                enrich_stats["refs"][job.name] = stats
        ids = columns["id"].to_pylist()
        for mask in masks:
            logprob, offsets = flat_list(columns[mask.logprob_column])
            values = mask_values(mask, logprob.astype(np.float32, copy=False), offsets, ids, thresholds.get(mask.column))
            columns[mask.column] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
            enrich_stats["masks"][mask.column] = [int(values.sum()), int((~np.isnan(logprob)).sum())]
        refs = sorted(c for c in columns if c.startswith("ref_") and c.endswith("_mean_logprob") and c != "ref_mean_logprob")
        if refs:
            columns["ref_mean_logprob"] = pa.array(_nanmean([columns[c] for c in refs], table.num_rows))
        enrich_stats["thresholds"] = thresholds
        base = [f for f in table.schema if not (f.name in replaced or _is_enrichment(f.name))]
        extra = sorted((c for c in columns if _is_enrichment(c)), key=enrichment_order)
        schema = pa.schema(base + [enrichment_field(c) for c in extra], metadata={
            METADATA_KEY: json.dumps(identity, sort_keys=True).encode(),
            ENRICH_KEY: json.dumps(enrich_stats, sort_keys=True).encode(),
        })
        out = pa.Table.from_arrays([_as_array(columns[f.name]) for f in schema], schema=schema)
        write_shard(target, k, out, chunk_stats)


def _is_enrichment(name: str) -> bool:
    return name.startswith(("mask_", "ref_", "teacher_"))


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


def _finish(config, source, source_run, meta, target, masks, jobs, run) -> dict:
    """Sum the per-shard enrichment stats into the metadata, then finish the staging output."""
    enrichment = json.loads(json.dumps(meta.get("enrichment", {})))  # deep copy
    enrichment.setdefault("masks", {})
    enrichment.setdefault("refs", {})
    kept = {m.column: [0, 0] for m in masks}
    ref_stats: dict[str, dict] = {}
    thresholds: dict = {}
    for k in range(run["num_chunks"]):
        stats = json.loads((read_schema(target / shard_name(k)).metadata or {}).get(ENRICH_KEY, b"{}"))
        thresholds = stats.get("thresholds", thresholds)
        for column, (n_kept, n_targets) in stats.get("masks", {}).items():
            kept[column][0] += n_kept
            kept[column][1] += n_targets
        for name, s in stats.get("refs", {}).items():
            total = ref_stats.setdefault(name, {"scored": 0, "truncated": 0, "failed": {}})
            total["scored"] += s["scored"]
            total["truncated"] += s["truncated"]
            for reason, n in s["failed"].items():
                total["failed"][reason] = total["failed"].get(reason, 0) + n
    teacher = next((j for j in jobs if j.kind == "teacher"), None)
    for mask in masks:
        scorer = teacher.provenance["model"] if mask.source == "teacher" and teacher else (
            enrichment.get("teacher", {}).get("model") if mask.source == "teacher" else meta["model"])
        n_kept, n_targets = kept[mask.column]
        enrichment["masks"][mask.column] = {
            "spec": mask.spec, "source": mask.source, "source_column": mask.logprob_column,
            "threshold": _threshold(mask, thresholds.get(mask.column)), "kept_targets": n_kept, "targets": n_targets,
            "kept_fraction": n_kept / n_targets if n_targets else None, "scorer": scorer,
        }
    for job in jobs:
        if job.kind == "ref":
            enrichment["refs"][job.name] = {**job.provenance, "counts": ref_stats.get(job.name, {})}
        else:
            enrichment["teacher"] = job.provenance
    enrichment["refs"] = dict(sorted(enrichment["refs"].items()))
    enrichment["masks"] = dict(sorted(enrichment["masks"].items()))
    step = {"command": config.command, "tokensft_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "added": [m.column for m in masks] + [c for j in jobs for c in j.columns]}
    base = {k: v for k, v in meta.items() if k not in ("counts", "num_shards", "finished")}
    run["metadata"] = {**base, "enrichment": enrichment, "enrich_history": [*meta.get("enrich_history", []), step]}
    # The output is the source's scoring run, enriched: `tokensft score` with the same arguments
    # sees it as finished, and a rerun of this enrichment sees `enrich_identity`. Written before
    # finish() writes state.json, so a finished output always carries both.
    final = {**run, "identity": source_run["identity"], "enrich_identity": run["identity"]}
    output.write_json_atomic(target / output.STATE_DIR / output.RUN_FILE, final)
    finished = output.finish(target)
    shutil.rmtree(target / output.STATE_DIR / PARTS_DIR, ignore_errors=True)
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
    if mask.rule == "quantile>=":
        ok = quantile_logprob is not None and not np.isnan(quantile_logprob)
        return {"quantile": p[0], "min_logprob": quantile_logprob if ok else None,
                "min_prob": float(np.exp(np.float64(quantile_logprob))) if ok else None}
    return {"drop_fraction": p[0], "seed": int(p[1])}


def _finished_run(target: Path, identity: dict) -> dict | None:
    """The run state of `target` when it is a finished output of exactly this enrichment."""
    try:
        run = output.read_run(target)
    except ConfigError:
        return None
    if run and run.get("enrich_identity", run.get("identity")) == identity and output.is_finished(target):
        return run
    return None


def _enriched(directory: Path, identity: dict) -> bool:
    """Whether `directory` already is the result of this enrichment (another rank swapped it)."""
    return _finished_run(directory, identity) is not None and "enrich_identity" in (output.read_run(directory) or {})


def _swap(staging: Path, source: Path) -> None:
    """Put the finished staging directory in place of the source, atomically; drop the old one."""
    exchange_dirs(staging, source)
    shutil.rmtree(staging, ignore_errors=True)
