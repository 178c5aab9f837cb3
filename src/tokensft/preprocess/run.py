"""`tokensft score`: read -> normalize -> render -> score -> write shards, resumable and sharded.

    rows    = iter_rows(INPUT)                     # SourceRow(index, where, record | error)
    chunk k = rows [k*S, (k+1)*S)                  # S = --shard-size; rank r owns k % world == r
    drop_damaged(kept shards)                      # resuming: a shard that fails its record is rescored
    for each chunk of this rank without a shard:
        examples = to_example(row) -> Renderer     # invalid rows: error, or skipped and counted
        scored   = Scorer.score(examples)          # length-bucketed batches (core.scorer)
        write_shard(k)                             # atomic; a killed run redoes only chunk k
    finish(DIR) when every chunk has its shard     # the last rank to end does it

Weights: a first pass over the input (`validate_rows`, no model) reads every record and finds the
kinds of weight the data carries (`preprocess.weights`); the dataset is weighted when it carries
any, or with --prompt-weight, and its shards then have a `weight` column (1 at the targets of a
row without weights) and, with --prompt-weight, `from_prompt`. Prompt tokens made targets are
scored like any target: num_targets and mean_logprob include them.

The shards depend only on the input, model, tokenizer and render settings (the run identity),
never on the number of ranks or on interruptions, so any resumed or multi-rank run yields
exactly the rows of one clean single-process run.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from tokensft import __version__
from tokensft.core.counts import Counts
from tokensft.core.errors import ConfigError, InputError
from tokensft.core.fileio import keeping
from tokensft.core.locks import OutputLock, RankLock, rank_locked, replace_lock
from tokensft.core.progress import Progress
from tokensft.core.schema import SCHEMA_VERSION, STATE_DIR, WEIGHT, scored_schema
from tokensft.core.scorer import Scorer
from tokensft.preprocess import output
from tokensft.preprocess.config import ScoreConfig
from tokensft.preprocess.shards import build_table, scoring_counts, weight_counts, write_shard
from tokensft.records.formats import to_example
from tokensft.records.readers import (SourceRow, count_rows, detect_kind, display_name, input_fingerprint, iter_rows,
                                      pending_chunks)
from tokensft.records.render import Renderer
from tokensft.records.validate import detect_record_format, validate_rows
from tokensft.records.weights import WeightRules


def _fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def weight_settings(config: ScoreConfig, kind: str, fmt: str) -> tuple[WeightRules | None, set[str]]:
    """The weight rules of this run and the sources of weight it has (a subset of
    weights.SOURCES; empty: unweighted), from a pass over every row (which also validates them)."""
    if not config.read_weights:  # rules None: to_example ignores every weight (eval, which validated the rows itself)
        return None, set()
    rules = config.weight_rules(kind)
    sources = validate_rows(config, kind, fmt, rules)  # seconds, before hours of scoring: fail on row 50,000 now
    if config.weight_field is not None and "example" not in sources:  # a typo must not train unweighted
        rows = "valid row" if config.skip_invalid else "row"
        raise ConfigError(f"--weight-field {config.weight_field}: no {rows} of {display_name(config.input)} has a "
                          f"{config.weight_field!r} field; check its spelling, or leave the flag out")
    return rules, sources | ({"prompt"} if config.prompt_weight != 0 else set())


def score(config: ScoreConfig) -> dict:
    """Run (or resume) the scoring of this rank's chunks; finish the dataset if all are done.

    Returns a summary dict: status, output, this rank's counts and, when finished, the metadata.
    """
    from tokensft.core.models import load_model, tokenizer_fingerprint  # deferred: imports torch

    config.validate()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar is the one to watch; theirs interleaves on stderr
    kind = config.input_format or detect_kind(config.input)
    fmt = detect_record_format(config, kind)
    num_rows = count_rows(config.input, kind=kind)
    rules, sources = weight_settings(config, kind, fmt)
    weighted = bool(sources)
    loaded = load_model(config.model, dtype=config.dtype, device=config.device)
    # Without --max-length, cap at the model's context: past it positions are meaningless (and
    # memory explodes); such examples are truncated, flagged and counted like any other.
    max_length = config.max_length or getattr(loaded.model.config, "max_position_embeddings", None)
    renderer = Renderer(loaded.tokenizer, config.template, max_length, weighted=weighted,
                        prompt_weight=config.prompt_weight)
    identity = {
        "schema_version": SCHEMA_VERSION,
        "input_fingerprint": input_fingerprint(config.input),
        "model_hash": loaded.content_hash,
        "tokenizer_fingerprint": tokenizer_fingerprint(loaded.tokenizer),
        "format": fmt,
        "format_spec": asdict(config.format),
        "template": renderer.template,
        "max_length": max_length,
        "top_k": config.top_k,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "shard_size": config.shard_size,
        "skip_invalid": config.skip_invalid,
    }
    if weighted:  # only then: an unweighted run keeps the identity of runs made before weights existed
        identity["weights"] = {"field": rules.field, "prompt_weight": config.prompt_weight,
                               "allow_negative": config.allow_negative_weights}
    metadata = {
        "schema_version": SCHEMA_VERSION,
        "tokensft_version": __version__,
        "model": {"name": loaded.name, "content_hash": loaded.content_hash},
        "tokenizer_fingerprint": identity["tokenizer_fingerprint"],
        "token_fingerprint": tokenizer_fingerprint(loaded.tokenizer, chat_template=False),
        "render": {**asdict(config.format), "format": fmt, "template": renderer.template},
        "max_length": max_length,
        "top_k": config.top_k,
        "dtype": identity["dtype"],
        "device": str(loaded.device),
        "input": {"path": str(config.input), "kind": kind, "fingerprint": identity["input_fingerprint"], "rows": num_rows},
        "command": config.command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if weighted:
        metadata["weights"] = {"column": WEIGHT, "sources": sorted(sources), "example_field": rules.field,
                               "prompt_weight": config.prompt_weight, "allow_negative": config.allow_negative_weights}
    num_chunks = -(-num_rows // config.shard_size)
    run = {"identity": identity, "metadata": metadata, "num_chunks": num_chunks, "fingerprint": _fingerprint(identity)}
    scorer = Scorer(loaded.model, top_k=config.top_k, batch_tokens=config.batch_tokens, chunk_size=config.chunk_size)
    schema = scored_schema(config.top_k, identity, weighted, prompt_targets=config.prompt_weight != 0)
    directory = Path(config.output)
    with ExitStack() as held:
        if config.overwrite or not config.resume:  # may start a finished dataset over: one replacer at a time
            held.enter_context(replace_lock(directory, wait=config.wait))
        held.enter_context(keeping("the shards written so far are kept (a dataset being replaced is unchanged): free "
                                   "some space, then rerun the same command to resume"))
        return _write(config, kind, fmt, renderer, scorer, schema, rules, run, directory, num_rows)


def _write(config, kind, fmt, renderer, scorer, schema, rules, run, directory: Path, num_rows: int) -> dict:
    """Prepare the output, score this rank's chunks into it, finish it when every chunk is there.
    A run starting a finished dataset over writes into its staging sibling and swaps it in at the end."""
    num_chunks = run["num_chunks"]
    with ExitStack() as held:
        with OutputLock(directory, wait=config.wait):  # --no-wait: refused here, before any work
            if output.replacing(directory, config.overwrite, config.resume):
                target, status = output.prepare_staging(directory, run, config.resume, config.overwrite)
            else:
                target, status = directory, output.prepare(directory, run, config.overwrite, config.resume)
            # a rerun over a finished output (no rank writes one) verifies every shard; damaged ones are rescored
            damaged = status == "finished" and output.drop_damaged(target, range(num_chunks), config.world_size)
            if status == "finished" and not damaged and target == directory:
                return {"status": "already-finished", "output": str(directory), "metadata": output.load_finished(directory)}
            held.enter_context(RankLock(target, config.rank))
        if status == "resume":  # verify the shards this rank keeps (other ranks may be writing theirs)
            output.drop_damaged(target, range(config.rank, num_chunks, config.world_size), config.world_size)
        pending = [k for k in output.missing_chunks(target, num_chunks) if k % config.world_size == config.rank]
        totals = _score_chunks(config, kind, fmt, renderer, scorer, schema, target, set(pending), num_rows, rules)
    summary = {"status": status, "output": str(directory), "rank": config.rank, "counts": totals}
    with OutputLock(directory):
        if target == directory and output.is_finished(directory):  # another rank finished it meanwhile
            summary.update(status="finished", metadata=output.load_finished(directory))
        elif not output.missing_chunks(target, num_chunks) and not rank_locked(target / STATE_DIR):
            # (a rank still holding its lock has its shards but maybe not yet their records: it finishes)
            summary.update(status="finished", metadata=output.finish(target))
            if target != directory:  # the old dataset stayed readable until now
                output.swap_in(target, directory)
        else:
            summary["status"] = "rank-done"
    return summary


def _score_chunks(config, kind, fmt, renderer, scorer, schema, directory, pending, num_rows, rules) -> dict:
    """Score every chunk in `pending`, streaming the input once; returns this rank's counts."""
    totals = scoring_counts(renderer.weighted)
    rows_todo = sum(min(config.shard_size, num_rows - k * config.shard_size) for k in pending)
    progress = Progress(total_rows=rows_todo, disable=config.quiet)
    for k, chunk_rows in pending_chunks(iter_rows(config.input, kind=kind), config.shard_size, pending):
        totals.merge(_score_chunk(config, fmt, rules, renderer, scorer, schema, directory, k, chunk_rows, progress))
    for k in sorted(pending - output.finished_chunks(directory)):
        # the row count promised rows this chunk never got (e.g. a line only of odd whitespace):
        # an empty shard keeps the output finishable, and the counts show what was read
        _score_chunk(config, fmt, rules, renderer, scorer, schema, directory, k, [], progress)
    progress.close()
    return totals


def _score_chunk(config, fmt, rules, renderer, scorer, schema, directory, chunk, rows, progress) -> dict:
    stats = scoring_counts(renderer.weighted).add("read", len(rows))
    examples, rendered = [], []
    for row in rows:
        try:
            if row.error is not None:
                raise row.error
            example = to_example(row.record, config.format, row.where, fmt, rules)
            result = renderer(example, row.where)
            stats.add("truncated", int(result.truncated))  # a row truncated, kept or then skipped below
            if not any(label >= 0 for label in result.labels):
                reason = "no_targets_after_truncation" if result.truncated else "no_targets"
                _skip(stats, reason, row, config, always=True)
                continue
        except InputError as exc:
            if not config.skip_invalid:
                raise
            _skip(stats, exc.reason, row, config)
            continue
        examples.append(example)
        rendered.append(result)
    scored = scorer.score(rendered) if rendered else []
    table = build_table(examples, scored, schema)
    stats["written"] = len(scored)
    stats["tokens"] = sum(len(r.input_ids) for r in rendered)
    stats["targets"] = sum(len(s.target_positions) for s in scored)
    if renderer.weighted:
        stats.update(weight_counts(scored))
    write_shard(directory, chunk, table, stats)
    progress.update(rows=len(rows), targets=stats["targets"])
    return stats


def _skip(stats: Counts, reason: str, row: SourceRow, config: ScoreConfig, always: bool = False) -> None:
    """Count a skipped row by reason; rows with no targets are always skipped (and counted)."""
    stats.add("skipped", 1, reason)
    if not config.quiet and always:
        print(f"warning: {row.where}: skipped, {reason.replace('_', ' ')}", file=sys.stderr)
