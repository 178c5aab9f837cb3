"""Running an enrichment: locks, the staging directory, the model jobs, and completion.

    with lock:  settle a staging dir left by a kill; plan; prepare the target (resume or start)
    for each job:  score this rank's chunks into part files              # no lock: ranks in parallel
    with lock:  once every part exists, assemble + finish (+ swap in place)   # see assemble.py
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import pyarrow as pa

from tokensft.core.dataset import load_metadata, shard_name
from tokensft.core.errors import ConfigError
from tokensft.core.fileio import atomic_write, keeping
from tokensft.core.locks import OutputLock, RankLock, replace_lock
from tokensft.core.progress import Progress
from tokensft.core.schema import CHUNK_KEY, ENRICH_KEY
from tokensft.preprocess import output
# assemble's functions are called through the module (assemble._swap, ...), never imported by name:
# that keeps a single definition to replace, e.g. when a test interrupts a run at the swap
from tokensft.preprocess.enrich import assemble
from tokensft.preprocess.enrich.plan import PARTS_DIR, EnrichConfig, EnrichPlan, make_plan


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
    if not in_place and source in target.parents:  # its files would block every later in-place enrich
        raise ConfigError(f"--output {config.output}: is inside the dataset being enriched ({config.input}); "
                          "choose a directory outside it")
    kept = ("the dataset is unchanged and the parts scored so far are kept" if in_place else
            "the parts and shards written so far are kept") + ": free some space, then rerun the same command to resume"
    with keeping(kept):
        return _enrich(config, source, target, in_place)


def _enrich(config: EnrichConfig, source: Path, target: Path, in_place: bool) -> dict:
    rank_lock = None
    with _lock(source, target, in_place, wait=config.wait):  # --no-wait: refused here, before any work
        if in_place:
            _settle_staging(source)
        plan = make_plan(config, source, target, in_place)
        if in_place and not plan.masks and not plan.weights and not plan.jobs:
            return {"status": "already-enriched", "output": str(source), "metadata": plan.meta}
        if not in_place and _finished_run(target, plan.identity) is not None:
            return {"status": "already-finished", "output": str(target), "metadata": output.load_finished(target)}
        _prepare(plan, overwrite=config.overwrite, staging=in_place)
        rank_lock = RankLock(target, config.rank).__enter__()
    try:
        for job in plan.jobs:
            _run_job(config, plan, job)
        with _lock(source, target, in_place):
            return _complete(config, plan)
    finally:
        rank_lock.__exit__(None, None, None)


def _lock(source: Path, target: Path, in_place: bool, wait: bool = True):
    """In place: the dataset's replace lock, a sibling `.NAME.lock` (the dataset and its staging both
    get swapped; `score --overwrite` takes it too); into --output: that output's own lock."""
    if in_place:
        return replace_lock(source, wait=wait)
    return OutputLock(target, wait=wait)


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
        assemble._swap(staging, source)
    else:
        shutil.rmtree(staging, ignore_errors=True)


def _prepare(plan: EnrichPlan, overwrite: bool, staging: bool) -> None:
    """Make the target ready: resume this run's parts and shards, or start over (refused while
    another process writes there). staging: the target is in-place enrichment's own hidden sibling,
    so another run's leftovers there are replaced without --overwrite; this run's own are resumed."""
    target, run = plan.target, plan.run
    try:
        existing = output.read_run(target)
    except ConfigError:
        existing = None
        if overwrite or staging:
            shutil.rmtree(target / output.STATE_DIR, ignore_errors=True)
    if existing and existing.get("enrich_identity") == run["identity"] and not output.is_finished(target):
        output.write_json_atomic(target / output.STATE_DIR / output.RUN_FILE, run)  # killed just before finishing
        existing = run
    overwrite = overwrite or (staging and (existing or {}).get("identity") != run["identity"])
    if output.prepare(target, run, overwrite=overwrite) == "resume":  # final shards are written under our lock:
        output.drop_damaged(target, range(plan.num_chunks))  # a damaged one is rebuilt from its source and parts


def _run_job(config: EnrichConfig, plan: EnrichPlan, job) -> None:
    """Score this rank's chunks under one model, writing one part file per chunk."""
    pending = [k for k in range(plan.num_chunks) if k % config.world_size == config.rank and plan.needs(job, k)]
    if not pending:
        return
    source = plan.source
    rows = sum(json.loads(plan.shard(k).schema.metadata[CHUNK_KEY]).get("written", 0) for k in pending)
    worker = job.load(config)
    progress = Progress(total_rows=rows, disable=config.quiet, desc=f"{job.kind} {job.name}")
    (plan.target / output.STATE_DIR / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    for k in pending:
        table = plan.shard(k, job.reads)
        columns, counts, targets = worker(table, f"{source}/{shard_name(k)}")
        part = pa.table(columns)
        part = part.replace_schema_metadata({ENRICH_KEY: json.dumps(counts).encode()})
        with atomic_write(plan.part(job, k), "wb") as sink, pa.ipc.new_stream(sink, part.schema) as writer:
            writer.write_table(part)
        progress.update(rows=table.num_rows, targets=targets)
    progress.close()
    del worker
    gc.collect()


def _complete(config: EnrichConfig, plan: EnrichPlan) -> dict:
    """Under the lock: assemble, finish and (in place) swap -- once every part exists."""
    result = plan.result
    if _enriched(result, plan.identity):  # another rank completed it meanwhile
        return {"status": "finished", "output": str(result), "metadata": load_metadata(result)}
    if plan.in_place and (output.read_run(plan.source) or {}).get("fingerprint") != plan.source_run["fingerprint"]:
        raise ConfigError(f"{plan.source} changed while this enrichment ran (another one finished first); "
                          "rerun the command")
    if any(plan.needs(j, k) for j in plan.jobs for k in range(plan.num_chunks)):
        return {"status": "rank-done", "output": str(plan.target), "rank": config.rank}
    assemble.write_final_shards(plan)
    assemble.write_metadata(config, plan)
    if plan.in_place:
        assemble._swap(plan.target, plan.source)
    return {"status": "finished", "output": str(result), "metadata": load_metadata(result)}


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
