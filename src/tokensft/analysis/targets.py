"""Every target token of a finished scored dataset as flat numpy arrays, plus one row per example.

    t = load_targets("scored/")          # Targets: N target tokens (labels != -100), E examples
    t.prob[t.example == 3]               # the target probabilities of example row 3
    t.examples.loc[3, "mean_p"]          # their mean

Reading is one pass over the shards with pyarrow (the input_ids and messages columns are never
read) and no Python loop per token. Target i of the whole dataset is the i-th supervised token in
dataset order, so the targets of example e are the contiguous slice
`starts[e]:starts[e + 1]`, in position order.

Sparse top-k distributions are (N, K) arrays: the schema stores exactly K entries at every
target and [] elsewhere, so the inner list values of a shard are already a row-major (N, K)
block. Log-probs stay float16 as stored (1M targets x K = 20 is 40 MB) and are upcast by the
functions that use them.

Loss weights (the data's `weight`, enrich's weight_<name>) are read at the targets, where every
one must be finite (NaN only at non-targets); `from_prompt` marks the prompt tokens that
`score --prompt-weight` made targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from tokensft.core.errors import ConfigError
from tokensft.core.dataset import flat_list, load_metadata, read_schema, read_table, shard_paths
from tokensft.core.generations import read_whole
from tokensft.core.schema import (FROM_PROMPT, IGNORE_INDEX, MASK_PREFIX, REF_MEAN_LOGPROB, REF_PREFIX, TEACHER_LOGPROB,
                                  TOPK_COLUMNS, WEIGHT, is_mask_column, is_weight_column, ref_columns)


@dataclass
class Targets:
    """N target tokens of E examples. Per-target arrays are (N,) unless noted; `example` indexes `examples`."""

    path: str
    meta: dict  # tokensft.json
    examples: pd.DataFrame  # (E rows) id, kind, num_tokens, num_targets, mean_logprob, mean_p, min_p, truncated, ref_*
    example: np.ndarray  # int64, row of `examples` (non-decreasing)
    position: np.ndarray  # int32, index of the token in input_ids
    rel_position: np.ndarray  # float64, k / (n - 1) for the k-th of its response's n targets (0 when n == 1)
    token_id: np.ndarray  # int32, the target token (labels)
    logprob: np.ndarray  # float64, natural log p under the scorer
    entropy: np.ndarray  # float32, entropy of the scorer's predictive distribution
    rank: np.ndarray  # int32, rank of the target (0 = argmax)
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # mask_<name> -> bool (N,), True = kept
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # weight / weight_<name> -> float64 (N,), finite
    from_prompt: np.ndarray | None = None  # bool (N,): a prompt token made a target by --prompt-weight
    teacher_logprob: np.ndarray | None = None  # float64
    topk_ids: np.ndarray | None = None  # (N, K) int32, the scorer's K most likely ids, most likely first
    topk_logprobs: np.ndarray | None = None  # (N, K) float16
    teacher_topk_ids: np.ndarray | None = None  # (N, Kt) int32
    teacher_topk_logprobs: np.ndarray | None = None  # (N, Kt) float16

    def __post_init__(self):
        self.prob = np.exp(self.logprob)  # (N,) float64
        counts = self.examples["num_targets"].to_numpy(np.int64)
        self.starts = np.zeros(len(counts) + 1, dtype=np.int64)  # (E + 1,) targets of e: starts[e]:starts[e + 1]
        np.cumsum(counts, out=self.starts[1:])

    @property
    def num_targets(self) -> int:
        return len(self.logprob)

    @property
    def num_examples(self) -> int:
        return len(self.examples)

    @property
    def ref_columns(self) -> list[str]:
        """ref_<name>_mean_logprob of each reference, then ref_mean_logprob (their mean), when present."""
        named = ref_columns(self.examples.columns)
        return named + ([REF_MEAN_LOGPROB] if REF_MEAN_LOGPROB in self.examples.columns else [])

    @property
    def weight_columns(self) -> list[str]:
        """The weight columns present: the data's `weight` first, then each weight_<name>, sorted."""
        return sorted(self.weights, key=lambda c: (c != WEIGHT, c))


def _topk_block(column: pa.ChunkedArray, targets: np.ndarray, where: str) -> np.ndarray:
    """(n_targets, K) values of a list<list<...>> column whose inner lists are K long at targets, [] elsewhere."""
    outer = column.combine_chunks()
    o = outer.offsets.to_numpy()
    values, inner_offsets = flat_list(outer.values.slice(o[0], o[-1] - o[0]))
    counts = np.diff(inner_offsets)
    k = int(counts[targets][0]) if targets.any() else 0
    if (counts[targets] != k).any() or counts[~targets].any():
        raise ConfigError(f"{where}: top-k lists are not K long at every target and empty elsewhere; re-score this dataset")
    return values.reshape(-1, k) if k else values.reshape(0, 0)


def _read_shard(path: Path, columns: list[str]) -> dict:
    table = read_table(path, columns)
    labels, offsets = flat_list(table["labels"])
    is_target = labels != IGNORE_INDEX
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # (T,) the row of each token
    idx = np.flatnonzero(is_target)
    out = {
        "row": row[idx], "position": (idx - offsets[row[idx]]).astype(np.int32), "token_id": labels[idx].astype(np.int32),
        "num_tokens": lengths.astype(np.int32), "table": table,
    }
    for name in columns:
        kind = table.schema.field(name).type
        if name in TOPK_COLUMNS:
            out[name] = _topk_block(table[name], is_target, f"{path} column {name}")
        elif pa.types.is_list(kind) and name != "labels":
            values, value_offsets = flat_list(table[name])
            if not np.array_equal(value_offsets, offsets):
                raise ConfigError(f"{path}: column {name} is not aligned with labels; re-score this dataset")
            out[name] = values[idx]
    _check_logprobs(path, table, out["row"], out["logprob"])
    for name in columns:
        if is_weight_column(name):
            _check_weights(path, table, out["row"], name, out[name])
    return out


MAX_LOGPROB = 1e-4  # log_softmax in float32 can round the argmax to a hair above 0; more is not a log-prob


def _check_logprobs(path: Path, table: pa.Table, rows: np.ndarray, logprob: np.ndarray) -> None:
    """Every target has a finite log-prob <= 0: a NaN or positive one would skew every number silently."""
    bad = np.flatnonzero(~(logprob <= MAX_LOGPROB) | np.isinf(logprob))  # NaN fails <=
    if len(bad):
        row = int(rows[bad[0]])
        raise ConfigError(f"{path} row {row} (id {table['id'][row].as_py()!r}), field logprob: {logprob[bad[0]]} at a "
                          f"target ({len(bad):,} such targets in this shard); a scored log-prob is finite and <= 0: "
                          "re-score this dataset")


def _check_weights(path: Path, table: pa.Table, rows: np.ndarray, name: str, weight: np.ndarray) -> None:
    """Every target has a finite weight: a NaN one is a weight lost at a target (the schema puts NaN only elsewhere)."""
    bad = np.flatnonzero(~np.isfinite(weight))
    if len(bad):
        row = int(rows[bad[0]])
        raise ConfigError(f"{path} row {row} (id {table['id'][row].as_py()!r}), field {name}: {weight[bad[0]]} at a "
                          f"target ({len(bad):,} such targets in this shard); a stored weight is finite at every "
                          "target: rewrite the column (`tokensft score` for `weight`, `tokensft enrich --weight` otherwise)")


def load_targets(path: str | Path, topk: bool = True) -> Targets:
    """Every target token of the finished scored dataset at `path` (see `Targets`).

    topk=False skips the sparse top-k columns (the bulk of the bytes) when they are not needed.
    Every file is read from one generation of the dataset (an in-place enrich finishing meanwhile:
    read again, see `core.generations`).
    """
    return read_whole(path, lambda: _load_targets(Path(path), topk))


def _load_targets(path: Path, topk: bool) -> Targets:
    meta = load_metadata(path)
    parts, base = [], 0
    for shard in shard_paths(path, meta):
        names = read_schema(shard).names
        wanted = ["id", "labels", "logprob", "entropy", "rank", "truncated", "kind"]
        wanted += [n for n in names if n.startswith((MASK_PREFIX, REF_PREFIX)) or n == TEACHER_LOGPROB]
        wanted += [n for n in names if is_weight_column(n) or n == FROM_PROMPT]
        wanted += [n for n in TOPK_COLUMNS if topk and n in names]
        missing = [n for n in wanted if n not in names]
        if missing:
            raise ConfigError(f"{shard}: no column {missing[0]}; this is not a tokensft scored dataset")
        part = _read_shard(shard, wanted)
        part["row"] += base
        base += part["table"].num_rows
        parts.append(part)
    return _assemble(str(path), meta, parts, base)


def _cat(parts: list[dict], name: str, dtype, optional: bool = False) -> np.ndarray | None:
    """The per-shard arrays `name` concatenated; an optional column absent from the shards is None."""
    if not parts or name not in parts[0]:
        return None if optional else np.zeros(0, dtype)
    return np.concatenate([p[name] for p in parts]).astype(dtype, copy=False)


def _assemble(path: str, meta: dict, parts: list[dict], num_examples: int) -> Targets:
    example = _cat(parts, "row", np.int64)
    counts = np.bincount(example, minlength=num_examples)
    starts = np.concatenate([[0], np.cumsum(counts)])
    position = _cat(parts, "position", np.int32)
    rel = _relative_position(example, position)
    logprob = _cat(parts, "logprob", np.float64)
    topk = {}
    for name in TOPK_COLUMNS:  # a shard with no targets holds a (0, 0) block: leave it out
        if parts and name in parts[0]:
            blocks = [p[name] for p in parts if len(p[name])]
            dtype = np.int32 if name.endswith("ids") else np.float16
            topk[name] = np.concatenate(blocks).astype(dtype, copy=False) if blocks else np.zeros((0, 0), dtype)
    mask_names = [m for m in (parts[0] if parts else {}) if is_mask_column(m)]
    weight_names = [w for w in (parts[0] if parts else {}) if is_weight_column(w)]
    return Targets(
        path=path, meta=meta, examples=_examples_frame(parts, example, counts, starts, logprob), example=example,
        position=position, rel_position=rel, token_id=_cat(parts, "token_id", np.int32),
        logprob=logprob, entropy=_cat(parts, "entropy", np.float32), rank=_cat(parts, "rank", np.int32),
        masks={m: _cat(parts, m, bool) for m in mask_names}, weights={w: _cat(parts, w, np.float64) for w in weight_names},
        from_prompt=_cat(parts, FROM_PROMPT, bool, optional=True),
        teacher_logprob=_cat(parts, TEACHER_LOGPROB, np.float64, optional=True), **topk,
    )


def _relative_position(example: np.ndarray, position: np.ndarray) -> np.ndarray:
    """(N,) k / (n - 1) for the k-th of the n targets of its response, 0 when n == 1.

    A response is a maximal run of consecutive target positions in one example: one assistant turn
    (its end-of-turn token last), so every turn of a multi-turn example spans [0, 1] on its own.
    """
    n_targets = len(example)
    new_run = np.ones(n_targets, dtype=bool)
    new_run[1:] = (example[1:] != example[:-1]) | (position[1:] != position[:-1] + 1)
    run_start = np.flatnonzero(new_run)  # (R,)
    run = np.cumsum(new_run) - 1  # (N,) run of each target
    run_length = np.diff(np.append(run_start, n_targets))[run]  # (N,)
    k = np.arange(n_targets) - run_start[run]
    return np.where(run_length > 1, k / np.maximum(run_length - 1, 1), 0.0)


def _examples_frame(parts: list[dict], example: np.ndarray, counts: np.ndarray, starts: np.ndarray,
                    logprob: np.ndarray) -> pd.DataFrame:
    """One row per example; mean_logprob/mean_p/min_p recomputed in float64 from the targets (NaN when none)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_logprob = np.bincount(example, weights=logprob, minlength=len(counts)) / counts
        mean_p = np.bincount(example, weights=np.exp(logprob), minlength=len(counts)) / counts
    min_p = np.full(len(counts), np.nan)
    has = counts > 0
    if has.any():
        min_p[has] = np.exp(np.minimum.reduceat(logprob, starts[:-1][has]))
    def column(name: str, dtype=None) -> np.ndarray:
        values = [p["table"][name].to_numpy(zero_copy_only=False) for p in parts]
        return np.concatenate(values).astype(dtype, copy=False) if values else np.zeros(0, dtype or object)

    frame = {"id": column("id", object), "kind": column("kind", object), "num_tokens": _cat(parts, "num_tokens", np.int32),
             "num_targets": counts.astype(np.int64), "mean_logprob": mean_logprob, "mean_p": mean_p, "min_p": min_p,
             "truncated": column("truncated", bool)}
    for name in (parts[0]["table"].column_names if parts else []):
        if name.startswith(REF_PREFIX):
            frame[name] = column(name)
    return pd.DataFrame(frame)
