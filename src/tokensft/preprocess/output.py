"""The output directory of a scoring run: identity, locking, and finishing (merge).

    DIR/
      data-00000.arrow ...      shards, one per input chunk, appear only by atomic rename
      .tokensft/shards/*.json   each shard's record (size, rows, checksum): core.integrity
      .tokensft/run.json        the run's identity (what determines the shards' contents)
      .tokensft/lock-rank{r}    held (flock) by the process writing rank r
      tokensft.json             run metadata + summed counts            } written by `finish`,
      dataset_info.json         features, for datasets.load_from_disk   } state.json last: its
      state.json                shard list, for datasets.load_from_disk } presence = finished

A run whose identity equals the one on disk resumes; a different one is refused unless
--overwrite. The finished directory is the same whatever the number of ranks that wrote it.
Finishing verifies every shard against its record; resuming verifies the shards it keeps and
drops the damaged ones, to be written again (`drop_damaged`); finishing what is already finished
as it would be written changes nothing (a no-op `tokensft merge`).

A run that starts a *finished* dataset over (--overwrite, --no-resume) never deletes it while it
scores: it writes the new one into a hidden sibling, `.NAME.score` (`staging`), and swaps it in
whole when it is finished (`swap_in`), so readers read the old dataset until then, and the new one
after (`core.generations`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from tokensft.core.counts import Counts
from tokensft.core.dataset import SHARD_RE, finished_chunks, read_schema, read_shard_info, shard_name
from tokensft.core.errors import ConfigError
from tokensft.core.fileio import atomic_write, exchange_dirs
from tokensft.core.identity import changed_keys
from tokensft.core.integrity import check_shard, discard, repair
from tokensft.core.locks import OUTPUT_LOCK, rank_locked
from tokensft.core.schema import METADATA_FILE, STATE_DIR, STATE_FILE
from tokensft.preprocess.shards import scoring_counts

logger = logging.getLogger(__name__)
RUN_FILE = "run.json"
OUR_FILES = {METADATA_FILE, "dataset_info.json", STATE_FILE, STATE_DIR, OUTPUT_LOCK}


def is_ours(name: str) -> bool:
    """tokensft's own files, including temp files a killed run may have left (".x.tmp-...")."""
    return name in OUR_FILES or bool(SHARD_RE.match(name)) or (name.startswith(".") and ".tmp-" in name)


def write_json_atomic(path: Path, data: dict) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def read_run(directory: Path) -> dict | None:
    path = directory / STATE_DIR / RUN_FILE
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: corrupt run state ({exc}); rerun with --overwrite") from None
    if not isinstance(run, dict) or not {"identity", "num_chunks", "fingerprint"} <= set(run):
        raise ConfigError(f"{path}: corrupt run state (missing identity, num_chunks or fingerprint); rerun with --overwrite")
    return run


def is_finished(directory: Path) -> bool:
    return (directory / STATE_FILE).is_file()


def foreign(directory: Path) -> list[str]:
    """The names in `directory` tokensft did not write, sorted (what every prepare refuses)."""
    return sorted(p.name for p in directory.iterdir() if not is_ours(p.name)) if directory.is_dir() else []


def staging(directory: Path) -> Path:
    """Where a run that starts a finished dataset over writes the new one: a hidden sibling."""
    return directory.parent / f".{directory.name}.score"


def replacing(directory: Path, overwrite: bool, resume: bool) -> bool:
    """Whether a run with these flags would start over a finished dataset in `directory`."""
    return (overwrite or not resume) and is_finished(directory)


def prepare_staging(directory: Path, run: dict, resume: bool, overwrite: bool) -> tuple[Path, str]:
    """(the staging directory, its status) for a run replacing the finished `directory`: this run's
    own staging from a killed attempt resumes (or is swapped in, when it was finished); anything
    else there, or --no-resume, starts over. Refuses what `prepare` refuses in `directory`: foreign
    files, and (without --overwrite) a dataset of other settings."""
    if names := foreign(directory):
        raise ConfigError(f"{directory}: not an empty directory or a tokensft output (found {', '.join(names[:3])}); "
                          "choose another --output")
    current = read_run(directory)
    if not overwrite and (current is None or current["identity"] != run["identity"]):
        changed = changed_keys(current["identity"], run["identity"]) if current else []
        hint = f" (differs in: {', '.join(changed)})" if changed else ""
        raise ConfigError(f"{directory} holds a different scoring run{hint}; pass --overwrite to replace it, "
                          "or choose another --output")
    stage = staging(directory)
    try:
        existing = read_run(stage)
    except ConfigError:  # unreadable: nothing of it can be trusted
        existing = None
    if stage.exists() and (not resume or existing is None or existing["identity"] != run["identity"]
                           or _older(stage, directory)):
        shutil.rmtree(stage)  # the staging directory is ours alone: another run's, or one to start over
    return stage, prepare(stage, run, overwrite=False)


def _older(stage: Path, directory: Path) -> bool:
    """Whether `stage` holds a dataset finished before the one in `directory`: the old generation a
    swap killed before its clean-up left there, never to be swapped back."""
    try:
        return (stage / STATE_FILE).stat().st_mtime_ns < (directory / STATE_FILE).stat().st_mtime_ns
    except FileNotFoundError:
        return False


def swap_in(stage: Path, directory: Path) -> None:
    """Put the finished `stage` in place of `directory` with one exchange, then delete the old one
    (readers that opened it keep what they mapped; see core.generations)."""
    exchange_dirs(stage, directory)
    shutil.rmtree(stage, ignore_errors=True)


def prepare(directory: Path, run: dict, overwrite: bool, resume: bool = True) -> str:
    """Make `directory` ready for `run` (a JSON-able dict with key "identity"). Call it holding
    the OutputLock, and take the RankLock in the same section, so that probing the rank locks
    here never races with a rank taking its own.

    Returns "new", "resume" or "finished". Refuses a directory holding a different run or
    foreign files unless `overwrite`, in which case only tokensft's own files are removed.
    `resume=False` starts a same-config run over (single-process use: every rank would wipe).
    """
    directory.mkdir(parents=True, exist_ok=True)
    existing = read_run(directory)
    ours = [p for p in directory.iterdir() if is_ours(p.name) and p.name != OUTPUT_LOCK]
    if names := foreign(directory):
        raise ConfigError(f"{directory}: not an empty directory or a tokensft output (found {', '.join(names[:3])}); "
                          "choose another --output")
    same = existing is not None and existing["identity"] == run["identity"]
    if same and resume and not overwrite:
        if not rank_locked(directory / STATE_DIR):  # nobody is writing: temp files are a killed run's leftovers
            for path in ours:
                if path.name.startswith(".") and ".tmp-" in path.name:
                    path.unlink(missing_ok=True)
        return "finished" if is_finished(directory) else "resume"
    if ours and not overwrite and not same:
        what = "a different scoring run" if existing else "tokensft files without run state"
        changed = changed_keys(existing["identity"], run["identity"]) if existing else []
        hint = f" (differs in: {', '.join(changed)})" if changed else ""
        raise ConfigError(f"{directory} holds {what}{hint}; pass --overwrite to replace it, or choose another --output")
    if rank_locked(directory / STATE_DIR):
        raise ConfigError(f"{directory}: another tokensft run is writing this output; wait for it or stop it")
    for path in ours:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (directory / STATE_DIR).mkdir(exist_ok=True)
    write_json_atomic(directory / STATE_DIR / RUN_FILE, run)
    return "new"


def missing_chunks(directory: Path, num_chunks: int) -> list[int]:
    done = finished_chunks(directory)
    return [k for k in range(num_chunks) if k not in done]


def load_finished(directory: Path) -> dict:
    """The metadata of a finished output (checked as every reader checks it)."""
    from tokensft.core.dataset import load_metadata

    return load_metadata(directory)


def drop_damaged(directory: Path, chunks: Iterable[int], world_size: int = 1) -> list[int]:
    """Verify the shards among `chunks` before resuming (or rerunning over a finished output):
    delete each damaged or unverified one with its record, so that it is written again, and make
    a finished output unfinished (in which a missing shard is damage too). An enriched output is
    refused instead: rescoring a shard would lose its enrichment columns. Returns the chunks dropped.

    Call it holding the RankLock of every rank that writes `chunks` (a shard whose record is being
    written would count as unverified), and the OutputLock too over a finished output."""
    run, finished = read_run(directory) or {}, is_finished(directory)
    damaged = {}
    for k in chunks:
        shard = directory / shard_name(k)
        if (finished or shard.is_file()) and (problem := check_shard(shard)):
            damaged[k] = problem
    if not damaged:
        return []
    if "enrich_identity" in run:
        k, problem = next(iter(damaged.items()))
        also = f" ({len(damaged)} shards in all)" if len(damaged) > 1 else ""
        raise ConfigError(f"{directory / shard_name(k)}: {problem}{also}; {repair(directory, run.get('metadata', {}))}")
    for name in (STATE_FILE, "dataset_info.json", METADATA_FILE):  # state.json first: its absence = unfinished
        (directory / name).unlink(missing_ok=True)
    for k, problem in damaged.items():
        by = f" by rank {k % world_size} (rerun it)" if world_size > 1 else ""
        logger.warning("warning: %s: %s; it will be rescored%s", directory / shard_name(k), problem, by)
        discard(directory / shard_name(k))
    return sorted(damaged)


def finish(directory: Path, extra_metadata: dict | None = None) -> dict:
    """Write tokensft.json, dataset_info.json and state.json once every chunk has its shard.

    Safe to call from every rank: whoever sees all shards writes the same files atomically
    (identical content apart from `finished` time), state.json last.
    """
    run = read_run(directory)
    if run is None:
        raise ConfigError(f"{directory}: no scoring run here (no {STATE_DIR}/{RUN_FILE})")
    missing = missing_chunks(directory, run["num_chunks"])
    if missing:
        raise ConfigError(
            f"{directory}: {len(missing)} of {run['num_chunks']} chunks not scored yet (first: chunk {missing[0]}); "
            f"finish the ranks that own them (chunk k belongs to rank k % world_size), then merge"
        )
    _verify(directory, run)
    totals = scoring_counts().merge(
        Counts.total(read_shard_info(directory / shard_name(k))[1] for k in range(run["num_chunks"])))
    meta = {**run["metadata"], **(extra_metadata or {}), "counts": totals, "num_shards": run["num_chunks"]}
    files = {METADATA_FILE: meta, "dataset_info.json": _dataset_info(directory, run), STATE_FILE: _state(run)}
    written = _read_json(directory / METADATA_FILE)
    if isinstance(written, dict) and {k: v for k, v in written.items() if k != "finished"} == _as_json(meta) and all(
            _read_json(directory / name) == _as_json(data) for name, data in files.items() if name != METADATA_FILE):
        return written  # finished as it would be written: a no-op changes nothing, not even the time
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for name, data in files.items():  # state.json last: its presence = finished
        write_json_atomic(directory / name, data)
    return meta


def _as_json(data):
    """`data` as it reads back from JSON (tuples as lists)."""
    return json.loads(json.dumps(data))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _verify(directory: Path, run: dict) -> None:
    """Refuse to finish over a shard that differs from its record or has none."""
    for k in range(run["num_chunks"]):
        problem = check_shard(directory / shard_name(k))
        if problem:
            fix = repair(directory, run.get("metadata", {}))
            if "enrich_identity" not in run:
                fix += f" (with several ranks: the rank that owns chunk {k}, i.e. {k} % world size, then merge)"
            raise ConfigError(f"{directory / shard_name(k)}: {problem}; {fix}")


def _dataset_info(directory: Path, run: dict) -> dict:
    import datasets  # deferred: ~1 s import

    schema = read_schema(directory / shard_name(0))
    info = datasets.DatasetInfo(
        description="Token-level scores written by tokensft score; see tokensft.json.",
        features=datasets.Features.from_arrow_schema(schema),
    )
    return {key: value for key, value in sorted(asdict(info).items())}


def _state(run: dict) -> dict:
    return {
        "_data_files": [{"filename": shard_name(k)} for k in range(run["num_chunks"])],
        "_fingerprint": run["fingerprint"],
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
