"""Writing the shards of a scored dataset: Arrow tables built from scored examples, written atomically.
(Reading them is `tokensft.core.dataset`.)

Chunk k of the input (rows [k*S, (k+1)*S)) becomes `data-{k:05d}.arrow`, an Arrow IPC stream as
`datasets` writes it. A shard is written under a temporary name, fsynced and renamed, so a shard
that exists is complete: that is what resume and merge rely on; its record (size, rows, checksum,
`core.integrity`) tells later whether it still is. Each shard carries its own
counts (rows read, written, skipped by reason, tokens, targets; and of a weighted dataset, its
weights: `weight_counts`) in its schema metadata, so the finished dataset's counts are the sum over
shards with no other bookkeeping to keep in step.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from tokensft.core.counts import Counts
from tokensft.core.dataset import shard_name
from tokensft.core.fileio import atomic_write
from tokensft.core.integrity import write_record
from tokensft.core.schema import CHUNK_KEY, FROM_PROMPT, MESSAGE_TYPE, TOPK_IDS, TOPK_LOGPROBS, WEIGHT
from tokensft.records.formats import Example

if TYPE_CHECKING:  # scorer imports torch: seconds that enriching masks never needs
    from tokensft.core.scorer import ScoredExample


def _offsets(lengths: Sequence[int]) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.array(offsets)


def list_array(lengths: Sequence[int], values: np.ndarray | pa.Array, value_type: pa.DataType) -> pa.Array:
    if not isinstance(values, pa.Array):
        values = pa.array(values, type=value_type)
    return pa.ListArray.from_arrays(_offsets(lengths), values)


def _cat(arrays: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype=dtype)


def messages_array(examples: Sequence[Example]) -> pa.Array:
    """list<struct<role, content, target>>: each example's normalized conversation."""
    lengths = [len(e.messages) for e in examples]
    flat = [{"role": m.role, "content": m.content, "target": m.is_target} for e in examples for m in e.messages]
    return list_array(lengths, pa.array(flat, type=MESSAGE_TYPE), None)


def build_table(examples: Sequence[Example], scored: Sequence[ScoredExample], schema: pa.Schema) -> pa.Table:
    """One Arrow table from examples and their scores, column by column (no Python loop per token)."""
    lengths = [len(s.rendered.input_ids) for s in scored]
    num_targets = np.array([len(s.target_positions) for s in scored], dtype=np.int32)
    mean_logprob = np.array(
        [float(np.mean(s.logprob[s.target_positions])) if len(s.target_positions) else np.nan for s in scored],
        dtype=np.float32,
    )
    columns = {
        "id": pa.array([e.id for e in examples], type=pa.string()),
        "input_ids": list_array(lengths, _cat([np.asarray(s.rendered.input_ids) for s in scored], np.int32), pa.int32()),
        "labels": list_array(lengths, _cat([np.asarray(s.rendered.labels) for s in scored], np.int32), pa.int32()),
        "logprob": list_array(lengths, _cat([s.logprob for s in scored], np.float32), pa.float32()),
        "entropy": list_array(lengths, _cat([s.entropy for s in scored], np.float32), pa.float32()),
        "rank": list_array(lengths, _cat([s.rank for s in scored], np.int32), pa.int32()),
    }
    if WEIGHT in schema.names:  # a weighted render has them: NaN / 0 off the targets
        columns[WEIGHT] = list_array(lengths, _cat([np.asarray(s.rendered.weight, np.float32) for s in scored],
                                                   np.float32), pa.float32())
    if FROM_PROMPT in schema.names:
        columns[FROM_PROMPT] = list_array(lengths, _cat([np.asarray(s.rendered.from_prompt, np.int8) for s in scored],
                                                        np.int8), pa.int8())
    if TOPK_IDS in schema.names:
        columns[TOPK_IDS], columns[TOPK_LOGPROBS] = topk_arrays(scored)
    columns["num_tokens"] = pa.array(np.array(lengths, dtype=np.int32))
    columns["num_targets"] = pa.array(num_targets)
    columns["mean_logprob"] = pa.array(mean_logprob)
    columns["truncated"] = pa.array([s.rendered.truncated for s in scored], type=pa.bool_())
    columns["kind"] = pa.array([e.kind for e in examples], type=pa.string())
    columns["messages"] = messages_array(examples)
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


def topk_arrays(scored: Sequence[ScoredExample]) -> tuple[pa.Array, pa.Array]:
    """list<list<int32>> ids and list<list<float16>> log-probs: K per target token, [] elsewhere."""
    lengths = [len(s.rendered.input_ids) for s in scored]
    inner_counts = []
    for s in scored:
        counts = np.zeros(len(s.rendered.input_ids), dtype=np.int32)  # [] at non-targets
        counts[s.target_positions] = s.topk_ids.shape[1] if s.topk_ids is not None else 0
        inner_counts.append(counts)
    flat_counts = _cat(inner_counts, np.int32)
    ids_values = _cat([s.topk_ids.reshape(-1) for s in scored], np.int32)
    lp_values = _cat([s.topk_logprobs.reshape(-1) for s in scored], np.float16)
    # outer offsets by example, inner offsets by token (K at targets, 0 elsewhere)
    return (list_array(lengths, list_array(flat_counts, ids_values, pa.int32()), None),
            list_array(lengths, list_array(flat_counts, lp_values, pa.float16()), None))


def write_shard(directory: Path, chunk: int, table: pa.Table, stats: Mapping) -> Path:
    """Write chunk `chunk` atomically (temp file, fsync, rename), then its record (size, rows,
    checksum) under DIR/.tokensft/shards/, which finishing and resuming verify it against.
    Returns the final path."""
    schema = table.schema.with_metadata({**(table.schema.metadata or {}), CHUNK_KEY: json.dumps(stats).encode()})
    final = directory / shard_name(chunk)
    with atomic_write(final, "wb") as sink:
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(table.replace_schema_metadata(schema.metadata), max_chunksize=1000)
    write_record(final, table.num_rows)
    return final


def scoring_counts(weighted: bool = False) -> Counts:
    """A chunk's counts, every key present even when 0 (summed over shards by `output.finish`);
    those of `weight_counts` too for a weighted dataset."""
    counts = Counts(read=0, written=0, skipped={}, truncated=0, tokens=0, targets=0)
    return counts.merge(WEIGHT_ZEROS) if weighted else counts


WEIGHT_ZEROS = {"weighted_targets": 0, "weight_sum": 0.0, "negative_weights": 0, "prompt_targets": 0}


def weight_counts(scored: Sequence[ScoredExample]) -> dict:
    """The weights of the targets of a weighted render: weighted_targets (those whose weight is not 1),
    weight_sum (of every target's stored float32 weight), negative_weights, prompt_targets (made
    targets by --prompt-weight)."""
    w = _cat([np.asarray(s.rendered.weight, np.float32)[s.target_positions] for s in scored], np.float32)
    prompt = _cat([np.asarray(s.rendered.from_prompt, np.int64)[s.target_positions] for s in scored
                   if s.rendered.from_prompt is not None], np.int64)
    return {"weighted_targets": int((w != 1).sum()), "weight_sum": float(w.sum(dtype=np.float64)),
            "negative_weights": int((w < 0).sum()), "prompt_targets": int(prompt.sum())}
