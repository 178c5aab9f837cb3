"""What an enrichment will do: its config, and the plan made from it before any work.

    config = EnrichConfig(input=DIR, masks=[...], weights=[...], refs=[...], teacher=...)
    plan = make_plan(config, source, target, in_place)   # the request minus what DIR already holds
    plan.masks, plan.weights, plan.jobs                # what is left to compute (or is stale)
    plan.identity                                      # what decides the output (resume key)
    plan.shard(k, columns)                             # the source's chunk k, as it was when planned

The source is read once, at planning: its metadata, run state and every shard (memory-mapped) from
one generation (`core.generations`), so an in-place enrich or `score --overwrite` of the source
finishing while this enrichment runs changes nothing of what it reads.

`preflight` checks a request before the dataset exists (`score --mask/--weight/--ref/--teacher`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from tokensft.core.dataset import load_metadata, read_table, shard_name
from tokensft.core.errors import ConfigError
from tokensft.core.generations import read_whole
from tokensft.core.masks import MaskSpec, parse_mask
from tokensft.core.schema import METADATA_FILE, TEACHER_LOGPROB, WEIGHT_PREFIX, is_mask_column
from tokensft.core.weights import WeightSpec, parse_weight
from tokensft.preprocess import output
from tokensft.core.identity import RunConfig
from tokensft.preprocess.enrich.weights import check_reads, plan_weights

if TYPE_CHECKING:  # jobs imports torch and transformers: seconds that masks alone never need
    from tokensft.preprocess.enrich.jobs import Job

PARTS_DIR = "parts"  # under the target's STATE_DIR: one file per model job and chunk


@dataclass
class EnrichConfig(RunConfig):
    """What only `tokensft enrich` takes (help text lives in cli.py); the run flags are RunConfig's."""

    input: str
    output: str | None = None  # None: in place
    masks: list[str] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    ref_names: list[str | None] = field(default_factory=list)  # per ref; None: from the model's name
    ref_template: str = "auto"
    ref_max_length: int | None = None
    teacher: str | None = None
    top_k: int = 20  # the teacher's

    def validate(self) -> None:
        super().validate()
        if self.ref_names and len(self.ref_names) != len(self.refs):
            raise ConfigError(f"{len(self.ref_names)} names for {len(self.refs)} references: give one per reference")
        if self.teacher and self.top_k < 1:
            raise ConfigError(f"--top-k {self.top_k}: a teacher needs K >= 1 stored alternatives")
        if self.ref_max_length is not None and self.ref_max_length < 2:
            raise ConfigError(f"--ref-max-length {self.ref_max_length}: must be at least 2")
        for text in self.masks:
            parse_mask(text)
        for text in self.weights:
            parse_weight(text)

    @property
    def requested(self) -> bool:
        return bool(self.masks or self.weights or self.refs or self.teacher)


@dataclass
class EnrichPlan:
    """What was decided, under the lock, before any work: from where, into where, what to add."""

    source: Path  # the scored dataset, resolved
    target: Path  # where the new dataset is built: --output, or the hidden staging sibling in place
    in_place: bool
    meta: dict  # the source's tokensft.json
    source_run: dict  # the source's run state (.tokensft/run.json): fingerprint, identity, num_chunks
    masks: list[MaskSpec]  # the masks to compute (new, changed, or stale under a new teacher)
    weights: list[WeightSpec]  # the weights to compute, in order (new, changed, or reading a recomputed column)
    jobs: list[Job]  # the model jobs to run (references, teacher) not already in the source
    identity: dict  # what decides the output: a rerun with the same identity resumes this one
    tables: list[pa.Table] = field(default_factory=list)  # the source's shards, memory-mapped when planned

    @property
    def num_chunks(self) -> int:
        return self.source_run["num_chunks"]

    @property
    def result(self) -> Path:
        """Where the finished dataset ends up."""
        return self.source if self.in_place else self.target

    def shard(self, chunk: int, columns: list[str] | None = None) -> pa.Table:
        """The source's chunk `chunk` (optionally only `columns`), schema metadata included."""
        table = self.tables[chunk]
        return table.select(list(columns)) if columns is not None else table

    @property
    def teacher(self) -> Job | None:
        return next((j for j in self.jobs if j.kind == "teacher"), None)

    @property
    def run(self) -> dict:
        """The run state this enrichment writes into the target (`output.prepare`)."""
        fingerprint = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        return {"identity": self.identity, "metadata": {}, "num_chunks": self.num_chunks, "fingerprint": fingerprint}

    def part(self, job: Job, chunk: int) -> Path:
        """The file holding `job`'s columns for chunk `chunk` (deleted once the dataset is finished)."""
        return self.target / output.STATE_DIR / PARTS_DIR / f"{job.part}-{chunk:05d}.arrow"

    def needs(self, job: Job, chunk: int) -> bool:
        """Whether `job` has yet to score chunk `chunk`: no part, and no final shard made from one."""
        return not self.part(job, chunk).is_file() and not (self.target / shard_name(chunk)).is_file()


def preflight(config: EnrichConfig, scorer: str) -> None:
    """Check an enrichment request before the dataset exists (`score --mask/--weight/--ref/--teacher`):
    specs parse, models resolve, the teacher shares the scorer's tokenizer, what reads the teacher
    has one, and (for a new dataset) a product's stored factors are added by this request."""
    from tokensft.core.models import load_tokenizer, resolve_model_dir, tokenizer_fingerprint

    config.validate()
    masks = [parse_mask(t) for t in config.masks]
    weights = [parse_weight(t) for t in config.weights]
    for flag, spec in [("--mask", m) for m in masks] + [("--weight", w) for w in weights]:
        if TEACHER_LOGPROB in spec.reads and not config.teacher:
            raise ConfigError(f"{flag} {spec.spec!r} needs a teacher: add --teacher MODEL")
    if not (Path(config.input) / METADATA_FILE).is_file():  # a new dataset holds no masks or weights yet
        adds = {m.column for m in masks} | {w.column for w in weights}
        for w in weights:
            factor = next((c for c in w.reads if (is_mask_column(c) or c.startswith(WEIGHT_PREFIX)) and c not in adds), None)
            if factor is not None:
                kind = "--mask" if is_mask_column(factor) else "--weight"
                raise ConfigError(f"--weight {w.spec!r} needs the column {factor}, which a new dataset lacks; "
                                  f"pass the {kind} that adds it too")
    if config.refs or config.teacher:
        token_fingerprint = tokenizer_fingerprint(load_tokenizer(resolve_model_dir(scorer)[0]), chat_template=False)
        _resolve_jobs(config, {"token_fingerprint": token_fingerprint})


def _read_source(source: Path) -> tuple[dict, dict, list[pa.Table]]:
    """The source's metadata, run state and shards (memory-mapped), to be read in one generation."""
    meta = load_metadata(source)
    source_run = output.read_run(source)
    if source_run is None:
        raise ConfigError(f"{source}: no .tokensft/run.json; this dataset was not written by `tokensft score`")
    return meta, source_run, [read_table(source / shard_name(k)) for k in range(source_run["num_chunks"])]


def make_plan(config: EnrichConfig, source: Path, target: Path, in_place: bool) -> EnrichPlan:
    """What to compute: the request minus what the dataset already holds with the same provenance."""
    meta, source_run, tables = read_whole(source, lambda: _read_source(source))
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
    if teacher_job is not None:  # a new teacher makes stored masks that read the teacher stale: redo them too
        stored = [parse_mask(v["spec"]) for v in present.get("masks", {}).values()]
        masks += [m for m in stored if TEACHER_LOGPROB in m.reads and m.column not in {x.column for x in masks}]
    masks = [m for m in masks if teacher_job is not None and TEACHER_LOGPROB in m.reads or not _mask_present(m, present)]
    recomputed = {m.column for m in masks} | {c for j in jobs for c in j.columns}
    weights = plan_weights([parse_weight(t) for t in config.weights], present.get("weights", {}), recomputed)
    columns = set(tables[0].schema.names) if tables else set()
    _check_columns(source, masks, weights, jobs, columns)
    identity = {
        "kind": "enrich", "source": source_run["fingerprint"], "masks": [m.spec for m in masks],
        **({"weights": [w.spec for w in weights]} if weights else {}),  # absent without: older identities still match
        "jobs": [j.identity for j in jobs], "skip_invalid": config.skip_invalid,
    }
    return EnrichPlan(source, target, in_place, meta, source_run, masks, weights, jobs, identity, tables)


def _resolve_jobs(config: EnrichConfig, meta: dict) -> list[Job]:
    """Deferred imports: torch and transformers take seconds, and masks alone need neither."""
    from transformers.utils import logging as hf_logging

    from tokensft.preprocess.enrich.jobs import resolve_jobs

    hf_logging.disable_progress_bar()  # our bar is the one to watch
    return resolve_jobs(config, meta)


def _mask_present(mask: MaskSpec, present: dict) -> bool:
    entry = present.get("masks", {}).get(mask.column)
    return entry is not None and entry.get("spec") == mask.spec


def _check_columns(source: Path, masks: list[MaskSpec], weights: list[WeightSpec], jobs: list[Job],
                   columns: set[str]) -> None:
    """Refuse, before any work, a request whose inputs the dataset lacks (naming what adds them)."""
    check_reads(source, masks, weights, columns | {c for j in jobs for c in j.columns})
    if any(j.kind == "ref" for j in jobs) and "messages" not in columns:
        raise ConfigError(f"{source}: no messages column to re-render for references; re-score it with this tokensft")
