"""`tokensft inspect DIR`: what a scored dataset holds, as plain text.

Metadata (model, tokenizer, render settings, provenance), the Arrow schema, the counts, each
stored loss weight with where it came from and its distribution (computed from the column), and
a few examples shown token by token: the prompt as text, then each target token with its
probability, log-prob, rank and entropy (and its top alternatives when stored).
`tokensft inspect DIR --verify` instead reads every shard and checks it against its record and
the metadata's counts: one line per problem, then a verdict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tokensft.analysis import summarize, weight_provenance
from tokensft.core.dataset import (flat_list, load, load_metadata, load_with_metadata, read_table, shard_names,
                                   shard_paths, tokenizer_for)
from tokensft.core.errors import ConfigError
from tokensft.core.generations import read_whole
from tokensft.core.integrity import UNVERIFIED, check_shard, repair
from tokensft.core.schema import CHUNK_KEY, FROM_PROMPT, IGNORE_INDEX, WEIGHT, is_weight_column
from tokensft.core.schema import REF_MEAN_LOGPROB, TOPK_IDS, TOPK_LOGPROBS, is_mask_column, ref_columns, ref_name

MAX_TOKENS_SHOWN = 60


def _piece(tokenizer, token_id: int) -> str:
    if tokenizer is None:
        return f"#{token_id}"
    return repr(tokenizer.decode([token_id]))[1:-1]


def format_example(row: dict, tokenizer, max_tokens: int = MAX_TOKENS_SHOWN) -> str:
    """One example: prompt text, then a line per target token (with its mask bits and weights, when stored)."""
    masks = sorted(name for name in row if is_mask_column(name))
    weights = sorted((name for name in row if is_weight_column(name)), key=lambda c: (c != WEIGHT, c))
    named = ref_columns(row)
    refs = (f", {REF_MEAN_LOGPROB} {row[REF_MEAN_LOGPROB]:.3f} (" +
            ", ".join(f"{ref_name(n)} {row[n]:.3f}" for n in named) + ")") if named else ""
    lines = [f"id {row['id']}: {row['num_tokens']} tokens, {row['num_targets']} targets, "
             f"mean logprob {row['mean_logprob']:.3f} (mean p {math.exp(row['mean_logprob']):.3f})"
             + refs + (", TRUNCATED" if row["truncated"] else "")]
    first_target = next(t for t, label in enumerate(row["labels"]) if label >= 0)
    prompt_ids = row["input_ids"][:first_target]
    prompt = tokenizer.decode(prompt_ids) if tokenizer is not None else " ".join(map(str, prompt_ids))
    lines.append("  context: " + repr(prompt[-300:]) + (" (last 300 chars)" if len(prompt) > 300 else ""))
    if masks:
        lines.append("  masks (1 = kept): " + ", ".join(f"{chr(97 + i)} = {m}" for i, m in enumerate(masks)))
    if weights:
        lines.append("  weights: " + ", ".join(f"w{i + 1} = {w}" for i, w in enumerate(weights)))
    lines.append(f"  {'pos':>5} {'token':<18} {'p':>7} {'logprob':>8} {'rank':>5} {'entropy':>7}" +
                 (f" {'masks':>{max(len(masks), 5)}}" if masks else "") +
                 "".join(f" {f'w{i + 1}':>8}" for i in range(len(weights))) +
                 ("  top alternatives" if TOPK_IDS in row else ""))
    shown = 0
    for t, label in enumerate(row["labels"]):
        if label < 0:
            continue
        if shown == max_tokens:
            lines.append(f"  ... {row['num_targets'] - shown} more targets")
            break
        lp = row["logprob"][t]
        line = (f"  {t:>5} {_piece(tokenizer, label)[:18]:<18} {math.exp(lp):>7.4f} {lp:>8.3f} "
                f"{row['rank'][t]:>5} {row['entropy'][t]:>7.3f}")
        if masks:
            line += f" {''.join(str(row[m][t]) for m in masks):>{max(len(masks), 5)}}"
        line += "".join(f" {row[w][t]:>8.3g}" for w in weights)
        if TOPK_IDS in row:
            alts = [f"{_piece(tokenizer, i)[:10]} {math.exp(v):.2f}" for i, v in zip(row[TOPK_IDS][t][:3], row[TOPK_LOGPROBS][t][:3])]
            line += "  " + " | ".join(alts)
        lines.append(line + ("  (prompt, --prompt-weight)" if row.get(FROM_PROMPT) and row[FROM_PROMPT][t] else ""))
        shown += 1
    return "\n".join(lines)


def describe_enrichment(enrichment: dict) -> list[str]:
    """Lines listing the masks, references, teacher and computed weights a dataset holds, with their provenance."""
    if not any(enrichment.get(k) for k in ("masks", "refs", "teacher", "weights")):
        return ["enrichment: none (add with `tokensft enrich DIR --mask/--ref/--teacher/--weight`)"]
    out = ["enrichment"]
    for column, m in enrichment.get("masks", {}).items():
        kept = "n/a" if m["kept_fraction"] is None else f"{m['kept_fraction']:.1%}"
        threshold = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m["threshold"].items())
        scorer = m.get("scorer") or {}
        out.append(f"  {column}: {m['spec']} on {m['source_column']} of {scorer.get('name')} "
                   f"(sha256 {str(scorer.get('content_hash'))[:12]}); {threshold}; keeps {kept} of {m['targets']:,} targets")
    for name, r in enrichment.get("refs", {}).items():
        counts = r.get("counts", {})
        failed = ", ".join(f"{k} {v:,}" for k, v in counts.get("failed", {}).items()) or "none"
        out.append(f"  ref_{name}: {r['model']['name']} (sha256 {r['model']['content_hash'][:12]}), {r['template']} "
                   f"template, max length {r['max_length']}, {r['dtype']}; scored {counts.get('scored', 0):,}, "
                   f"truncated {counts.get('truncated', 0):,}, failed: {failed}")
    if enrichment.get("refs"):
        out.append(f"  ref_mean_logprob: mean over {len(enrichment['refs'])} reference(s)")
    if enrichment.get("teacher"):
        t = enrichment["teacher"]
        out.append(f"  teacher: {t['model']['name']} (sha256 {t['model']['content_hash'][:12]}), top-{t['top_k']}, {t['dtype']}")
    for column, w in enrichment.get("weights", {}).items():
        out.append(f"  {column}: --weight {w.get('spec')} (see weights)")
    return out


def weight_sentence(p: dict) -> str:
    """Where a weight column came from, in words (p: tokensft.analysis.weight_provenance)."""
    if p["kind"] == "data":
        words = {"example": f"each example's {p['example_field']!r} field" if p["example_field"] else "per-example weights",
                 "turn": "per-turn weights", "span": "weighted spans",
                 "prompt": f"prompt tokens at {p['prompt_weight']:g} (--prompt-weight)" if p["prompt_weight"] else
                 "prompt tokens (--prompt-weight)"}
        sources = [words.get(s, str(s)) for s in p["sources"] or []]
        text = "the data's weights, " + (f"from {', '.join(sources)}" if sources else "sources not recorded")
        if p["prompt_weight"] and "prompt" not in (p["sources"] or []):
            text += f"; prompt tokens at {p['prompt_weight']:g} (--prompt-weight)"
        return text + ("; negative weights allowed" if p["allow_negative"] else "")
    text = f"computed by enrich --weight {p['spec'] or '(spec not recorded)'}"
    if p["reads"]:
        text += f" from {', '.join(p['reads'])}"
    models = []
    if p["scorer"]:
        models.append(f"scorer {p['scorer']}" + (f" (sha256 {p['scorer_hash'][:12]})" if p["scorer_hash"] else ""))
    if p["teacher"]:
        models.append(f"teacher {p['teacher']}")
    return text + (f" of {' and '.join(models)}" if models else "")


def weight_numbers(s: dict) -> str:
    """mean, min, max, targets and effective tokens (s: tokensft.analysis.weights.summarize)."""
    if not s["targets"]:
        return "no targets"
    return (f"mean {s['mean']:.4g}, min {s['min']:.4g}, max {s['max']:.4g} over {s['targets']:,} targets; "
            f"{s['negative']:,} negative; effective tokens {s['effective_tokens']:,.1f} ({s['effective_fraction']:.1%})")


def weight_values(directory: Path, meta: dict, columns: list[str]) -> dict[str, np.ndarray]:
    """{column: (N,) its values at the N targets} of weight columns, read from the shards."""
    out: dict[str, list] = {c: [] for c in columns}
    for shard in shard_paths(directory, meta):
        table = read_table(shard, ["labels", *columns])
        labels, offsets = flat_list(table["labels"])
        for c in columns:
            values, value_offsets = flat_list(table[c])
            if not np.array_equal(value_offsets, offsets):
                raise ConfigError(f"{shard}: column {c} is not aligned with labels; rewrite it")
            out[c].append(values[labels != IGNORE_INDEX])
    return {c: np.concatenate(v) if v else np.zeros(0, np.float32) for c, v in out.items()}


def describe_weights(directory: Path, meta: dict, names: list[str]) -> list[str]:
    """Lines listing each weight column (`names`: the schema's columns) with its provenance and distribution."""
    columns = sorted((n for n in names if is_weight_column(n)), key=lambda c: (c != WEIGHT, c))
    if not columns:
        return ["weights: none (data weights come with the input, see `tokensft score --help`; computed ones "
                "from `tokensft enrich DIR --weight SPEC`)"]
    values = weight_values(directory, meta, columns)
    return ["weights", *(f"  {c}: {weight_sentence(weight_provenance(meta, c))}; {weight_numbers(summarize(values[c]))}"
                         for c in columns)]


def inspect_dataset(directory: str | Path, num_examples: int = 2, model: str | None = None) -> str:
    """The listing `tokensft inspect` prints: every line from one generation of the dataset."""
    return read_whole(directory, lambda: _inspect(directory, num_examples, model))


def _inspect(directory: str | Path, num_examples: int, model: str | None) -> str:
    dataset, meta = load_with_metadata(directory)
    counts = meta["counts"]
    out = [
        f"tokensft dataset {directory}",
        f"  schema version {meta['schema_version']}, written by tokensft {meta['tokensft_version']} at {meta.get('finished', meta['created'])}",
        f"  model {meta['model']['name']} (sha256 {meta['model']['content_hash'][:12]}), dtype {meta['dtype']}, device {meta['device']}",
        f"  tokenizer fingerprint {meta['tokenizer_fingerprint'][:12]}",
        f"  input {meta['input']['path']} ({meta['input']['kind']}, sha256 {meta['input']['fingerprint'][:12]})",
        f"  render: format {meta['render']['format']}, template {meta['render']['template']}, targets {meta['render']['targets']}, "
        f"max length {meta['max_length']}, top-k {meta['top_k']}",
        f"  command: {meta['command']}",
        "counts",
        f"  rows read {counts['read']:,}, written {counts['written']:,}, truncated {counts['truncated']:,}",
        f"  skipped: {', '.join(f'{k} {v:,}' for k, v in counts['skipped'].items()) or 'none'}",
        f"  tokens {counts['tokens']:,}, targets {counts['targets']:,}",
        *describe_enrichment(meta.get("enrichment", {})),
        *describe_weights(Path(directory), meta, dataset.data.schema.names),
        "schema",
        *(f"  {field.name}: {field.type}" for field in dataset.data.schema),
    ]
    if len(dataset) and num_examples > 0:
        tokenizer = tokenizer_for(meta, model)
        out.append("examples" + ("" if tokenizer else " (tokenizer unavailable: showing ids; pass --model)"))
        for i in range(min(num_examples, len(dataset))):
            out.append(format_example(dataset[i], tokenizer))
    return "\n".join(out)


def verify_dataset(directory: str | Path) -> tuple[list[str], bool]:
    """Read every shard, check it against its record (size, rows, checksum) and the metadata's
    counts, and check that `datasets` opens the directory. Returns (lines, ok): one line per
    problem, then a verdict. A replacement finishing meanwhile is no damage: verified again."""
    return read_whole(directory, lambda: _verify(Path(directory)))


def _verify(directory: Path) -> tuple[list[str], bool]:
    meta = load_metadata(directory)
    names = shard_names(directory, meta)
    problems, rows = [], 0
    for name in names:
        shard = directory / name
        try:
            table = read_table(shard) if shard.is_file() else None
        except ConfigError:
            table = None
        problem = check_shard(shard, rows=None if table is None else table.num_rows)
        if table is None and problem != "missing":
            problem = "not a readable Arrow shard" + (f"; {problem}" if problem else "")
        elif table is not None:
            rows += table.num_rows
            written = json.loads((table.schema.metadata or {}).get(CHUNK_KEY, b"{}")).get("written")
            if not problem and written != table.num_rows:
                problem = f"{table.num_rows:,} rows where its counts say {written} were written"
        if problem:
            problems.append(f"{shard}: {problem}")
    counted = meta.get("counts", {}).get("written")
    if len(names) != meta.get("num_shards"):
        problems.append(f"{directory}: {len(names)} shards where tokensft.json says {meta.get('num_shards')}")
    elif not problems and rows != counted:
        problems.append(f"{directory}: the shards hold {rows:,} rows where tokensft.json counts {counted} written")
    shards_ok = not problems
    if shards_ok:
        try:
            load(directory)  # state.json and dataset_info.json, as `datasets` reads them
        except ConfigError as exc:
            problems.append(str(exc))  # names its own fix
    if not problems:
        return [f"verified: {len(names)} shards, {rows:,} rows, each as written (size, rows, checksum) "
                "and as the metadata counts"], True
    if shards_ok:
        return [*problems, f"damaged: {directory} cannot be opened"], False
    unverified = all(p.endswith(UNVERIFIED) for p in problems)
    verdict = f"unverified: {len(problems)} shard(s) without a record" if unverified else f"damaged: {len(problems)} problem(s)"
    return [*problems, f"{verdict} in {directory}; {repair(directory, meta)}"], False
