"""Model jobs of an enrichment: a PoFT reference or a Q-target teacher, resolved before any work.

Resolving a job reads only the tokenizer, the config and the weights' (cached) hash, so the plan
can be checked -- is it already in the dataset? does the teacher share the tokenizer? -- in
seconds, before a model is loaded. `job.load(config)` then returns the worker that scores a shard.
The scoring itself is `preprocess.rescore`: scoring under another model, beside the scorer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokensft.core.counts import Counts
from tokensft.core.errors import ConfigError
from tokensft.core.models import (
    load_model, load_tokenizer, pick_device, pick_dtype, resolve_model_dir, tokenizer_fingerprint, weights_hash,
)
from tokensft.core.schema import TEACHER_COLUMNS, TEACHER_LOGPROB, ref_column, ref_count_column
from tokensft.records.render import Renderer, resolve_template
from tokensft.preprocess.rescore import check_ref_name, default_ref_name, reference_columns, teacher_columns
from tokensft.core.scorer import Scorer

REF_TEMPLATE_FLAG = "--ref-template"  # what a reference's render errors suggest changing


@dataclass
class Job:
    kind: str  # "ref" | "teacher"
    name: str  # the reference's name; "teacher"
    spec: str  # the model as given
    identity: dict  # what decides its columns' values
    provenance: dict  # recorded in tokensft.json under enrichment
    columns: list[str]  # columns it adds
    reads: list[str]  # source columns it needs
    settings: dict = field(default_factory=dict)

    @property
    def part(self) -> str:
        return "teacher" if self.kind == "teacher" else f"ref_{self.name}"

    def present_in(self, enrichment: dict) -> bool:
        """Whether the dataset already holds this job's columns with the same provenance."""
        stored = enrichment.get("teacher") if self.kind == "teacher" else enrichment.get("refs", {}).get(self.name)
        return stored is not None and stored.get("identity") == self.identity

    def load(self, config) -> Callable:
        """Load the model; return worker(table, where) -> ({column: array}, counts, targets):
        counts are recorded in the metadata (summed over shards), targets feed the progress bar."""
        loaded = load_model(self.spec, dtype=config.dtype, device=config.device)
        scorer = Scorer(loaded.model, top_k=config.top_k if self.kind == "teacher" else 0,
                        batch_tokens=config.batch_tokens, chunk_size=config.chunk_size)
        if self.kind == "teacher":
            def work(table, where):
                columns = teacher_columns(table, scorer)
                logprob = columns[TEACHER_LOGPROB].values.to_numpy(zero_copy_only=False)
                return columns, Counts(), int((~np.isnan(logprob)).sum())
            return work
        renderer = Renderer(loaded.tokenizer, self.settings["template"], self.settings["max_length"],
                            flag=REF_TEMPLATE_FLAG)

        def work(table, where):
            columns, counts = reference_columns(table, renderer, scorer, where, config.skip_invalid)
            targets = int(columns["num_targets"].to_numpy().sum())
            return {self.columns[0]: columns["mean_logprob"], self.columns[1]: columns["num_targets"]}, counts, targets
        return work


def _config_value(path: Path, key: str) -> int | None:
    """A value of the model's config.json (or of its text_config), None when absent."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return config.get(key) or (config.get("text_config") or {}).get(key)


def _max_length(path: Path, given: int | None) -> int | None:
    """--ref-max-length, else the model's context length (as scoring does)."""
    return given or _config_value(path, "max_position_embeddings")


def _vocab_size(path: Path) -> int | None:
    return _config_value(path, "vocab_size")


def resolve_jobs(config, meta: dict) -> list[Job]:
    """The requested references and teacher, resolved and checked against the dataset's metadata."""
    dtype = str(pick_dtype(config.dtype, pick_device(config.device))).removeprefix("torch.")
    given = config.ref_names or [None] * len(config.refs)
    names = [name or default_ref_name(spec) for spec, name in zip(config.refs, given)]
    if len(set(names)) != len(names):
        raise ConfigError(f"two references would both be named {sorted(n for n in names if names.count(n) > 1)[0]!r}; "
                          "give each a --ref-name")
    jobs = []
    for spec, name in zip(config.refs, names):
        check_ref_name(name)
        path, display = resolve_model_dir(spec)
        tokenizer = load_tokenizer(path)
        settings = {"template": resolve_template(config.ref_template, tokenizer, REF_TEMPLATE_FLAG),
                    "max_length": _max_length(path, config.ref_max_length)}
        model = {"name": display, "content_hash": weights_hash(path)}
        fingerprint = tokenizer_fingerprint(tokenizer)  # with the chat template: it decides the render
        identity = {"model_hash": model["content_hash"], "tokenizer_fingerprint": fingerprint, **settings, "dtype": dtype}
        columns = [ref_column(name), ref_count_column(name)]
        provenance = {"model": model, "tokenizer_fingerprint": fingerprint, **settings,
                      "dtype": dtype, "columns": columns, "identity": identity}
        jobs.append(Job("ref", name, spec, identity, provenance, columns, ["id", "kind", "messages"], settings))
    if config.teacher:
        path, display = resolve_model_dir(config.teacher)
        tokenizer = load_tokenizer(path)
        theirs, ours = tokenizer_fingerprint(tokenizer, chat_template=False), meta.get("token_fingerprint")
        if theirs != ours:
            raise ConfigError(
                f"--teacher {config.teacher}: its tokenizer differs from the dataset's (token fingerprint "
                f"{theirs[:12]} vs {str(ours)[:12]}); a teacher scores the same input_ids, so it must share the "
                "scorer's tokenizer (a model with another tokenizer can be a PoFT --ref instead)"
            )
        model = {"name": display, "content_hash": weights_hash(path)}
        top_k = min(config.top_k, _vocab_size(path) or config.top_k)  # what the scorer will store
        identity = {"model_hash": model["content_hash"], "top_k": top_k, "dtype": dtype}
        provenance = {"model": model, "token_fingerprint": theirs, "top_k": top_k, "dtype": dtype,
                      "columns": list(TEACHER_COLUMNS), "identity": identity}
        jobs.append(Job("teacher", "teacher", config.teacher, identity, provenance, list(TEACHER_COLUMNS),
                        ["input_ids", "labels"]))
    return jobs
