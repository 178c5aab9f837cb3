"""Score a shard's rows under another model: PoFT references and Q-target teachers.

    reference (own tokenizer and template):   messages -> Renderer(ref) -> Scorer -> mean target logprob
    teacher (same tokenizer as the scorer):   stored input_ids, labels   -> Scorer(top_k) -> per-token columns

A reference re-renders the stored conversation (the `kind` and `messages` columns) in its own chat
template, so its targets are the same response text in its own tokens: PoFT's s_ref needs no token
alignment. A teacher scores the very same ids, which is why its tokenizer must match.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from tokensft.core.counts import Counts
from tokensft.core.dataset import flat_list
from tokensft.core.errors import ConfigError, InputError
from tokensft.core.schema import TEACHER_LOGPROB, TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS
from tokensft.records.formats import Example, Message
from tokensft.records.render import Rendered, Renderer
from tokensft.core.scorer import Scorer
from tokensft.preprocess.shards import list_array, topk_arrays


def default_ref_name(spec: str) -> str:
    """A column-safe name from a model spec: "HuggingFaceTB/SmolLM2-360M" -> "smollm2_360m"."""
    base = Path(spec.rstrip("/")).name.removesuffix(".gguf")
    return re.sub(r"[^a-z0-9]+", "_", base.lower()).strip("_") or "ref"


def check_ref_name(name: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", name):
        raise ConfigError(f"--ref-name {name!r}: use lowercase letters, digits and _ (it becomes a column name)")
    return name


def examples_from_table(table: pa.Table) -> list[Example]:
    """The normalized conversations stored in a shard (columns id, kind, messages)."""
    ids = table.column("id").to_pylist()
    kinds = table.column("kind").to_pylist()
    messages = table.column("messages").to_pylist()
    return [
        Example(i, kind, tuple(Message(m["role"], m["content"], m["target"]) for m in turns))
        for i, kind, turns in zip(ids, kinds, messages)
    ]


def reference_columns(
    table: pa.Table, renderer: Renderer, scorer: Scorer, where: str, skip_invalid: bool,
) -> tuple[dict[str, pa.Array], Counts]:
    """Mean target log-prob and target count of each row under a reference model.

    Returns ({"mean_logprob": float32 (R,), "num_targets": int32 (R,)}, counts), counts being
    Counts(scored, truncated, failed={reason: n}) (summed over shards into the metadata). A row the
    reference cannot render raises InputError unless `skip_invalid`, when it gets NaN / 0 and is
    counted by reason; so does a row left with no targets after the reference's truncation.
    """
    examples = examples_from_table(table)
    mean = np.full(len(examples), np.nan, dtype=np.float32)
    count = np.zeros(len(examples), dtype=np.int32)
    counts = Counts(scored=0, truncated=0, failed={})
    todo: list[tuple[int, Rendered]] = []
    for r, example in enumerate(examples):
        try:
            rendered = renderer(example, f"{where}: example {example.id!r}")
            if not any(label >= 0 for label in rendered.labels):
                raise InputError(f"{where}: example {example.id!r}", "messages",
                                 "no target tokens left in the reference's render" +
                                 (" after truncation" if rendered.truncated else ""),
                                 fix="raise --ref-max-length", reason="no_targets")
        except InputError as exc:
            if not skip_invalid:
                raise
            counts.add("failed", 1, exc.reason)
            continue
        todo.append((r, rendered))
    for (r, rendered), scored in zip(todo, scorer.score([t[1] for t in todo])):
        mean[r] = np.mean(scored.logprob[scored.target_positions], dtype=np.float64)
        count[r] = len(scored.target_positions)
        counts.add("scored")
        counts.add("truncated", int(rendered.truncated))
    return {"mean_logprob": pa.array(mean), "num_targets": pa.array(count)}, counts


def teacher_columns(table: pa.Table, scorer: Scorer) -> dict[str, pa.Array]:
    """teacher_logprob, teacher_topk_ids, teacher_topk_logprobs for the stored input_ids."""
    ids, offsets = flat_list(table.column("input_ids"))
    labels, _ = flat_list(table.column("labels"))
    rendered = [
        Rendered(ids[offsets[r]:offsets[r + 1]].tolist(), labels[offsets[r]:offsets[r + 1]].tolist(), False)
        for r in range(len(offsets) - 1)
    ]
    scored = scorer.score(rendered)
    logprob = np.concatenate([s.logprob for s in scored]) if scored else np.zeros(0, np.float32)
    topk_ids, topk_logprobs = topk_arrays(scored)
    return {
        TEACHER_LOGPROB: list_array(np.diff(offsets), logprob.astype(np.float32), pa.float32()),
        TEACHER_TOPK_IDS: topk_ids,
        TEACHER_TOPK_LOGPROBS: topk_logprobs,
    }
