"""Speed of `tokensft report` over ~1M target tokens: the analysis layer (load_targets, summary,
compare) and the whole report (figures, page, files), against the 60 s target.

    python benchmarks/bench_report.py [--targets 1000000] [--top-k 20] [--repeat 2]

A synthetic finished scored dataset with the real schema (as bench_enrich.py builds it: 300 tokens
per row, 250 targets, random log-probs with mean p ~0.76) plus what a full report reads: the
scorer's top-k, two masks, a reference and a teacher with its top-k. A second copy with other
log-probs (same ids and tokens) is the other side of `compare`. Token classes come from the
default model's tokenizer (49,152 ids) when it is in the tokensft cache, else from random classes.
Each step is timed alone, best of --repeat; run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

TOKENS_PER_ROW, TARGETS_PER_ROW, ROWS_PER_SHARD, VOCAB = 300, 250, 1000, 49_152


def _topk(rng, n_targets: int, k: int, lengths: list[int], target: np.ndarray) -> tuple[pa.Array, pa.Array]:
    from tokensft.preprocess.shards import list_array

    ids = rng.integers(0, VOCAB, size=(n_targets, k), dtype=np.int32)
    logprobs = np.sort(np.log(rng.dirichlet(np.ones(k) * 0.3, size=n_targets) * 0.95 + 1e-9), axis=1)[:, ::-1]
    inner = np.where(target, k, 0).astype(np.int32)
    return (list_array(lengths, list_array(inner, ids.reshape(-1), pa.int32()), None),
            list_array(lengths, list_array(inner, logprobs.astype(np.float16).reshape(-1), pa.float16()), None))


def synthetic_dataset(directory: Path, targets: int, top_k: int, seed: int, token_fingerprint: str = "0") -> int:
    """A finished, enriched scored dataset; ids and labels do not depend on `seed`, log-probs do.
    token_fingerprint: the tokenizer the report decodes with must match it."""
    from tokensft.core.locks import OutputLock
    from tokensft.preprocess import output
    from tokensft.preprocess.shards import list_array, write_shard
    from tokensft.core.schema import MESSAGE_TYPE, SCHEMA_VERSION, enrichment_field, scored_schema

    rng, tokens_rng = np.random.default_rng(seed), np.random.default_rng(12345)
    rows = -(-targets // TARGETS_PER_ROW)
    chunks = -(-rows // ROWS_PER_SHARD)
    identity = {"synthetic": True, "rows": rows, "seed": seed}
    masks = ["mask_prob_ge_0.1", "mask_top_frac_0.5"]
    enrichment = {"masks": {m: {"spec": m[5:], "kept_fraction": None} for m in masks},
                  "refs": {"x": {"model": {"name": "synthetic-ref", "content_hash": "0"}}},
                  "teacher": {"model": {"name": "synthetic-teacher", "content_hash": "0"}, "top_k": top_k}}
    meta = {"schema_version": SCHEMA_VERSION, "tokensft_version": "bench", "model": {"name": f"synthetic-{seed}", "content_hash": "0"},
            "tokenizer_fingerprint": "0", "token_fingerprint": token_fingerprint, "created": "", "command": "bench",
            "top_k": top_k}
    run = {"identity": identity, "metadata": meta, "num_chunks": chunks, "fingerprint": f"synthetic-{seed}"}
    with OutputLock(directory):
        output.prepare(directory, run, overwrite=True)
    extra = ["mask_prob_ge_0.1", "mask_top_frac_0.5", "ref_x_mean_logprob", "ref_x_num_targets", "ref_mean_logprob",
             "teacher_logprob", "teacher_topk_ids", "teacher_topk_logprobs"]
    base = scored_schema(top_k, identity)
    schema = pa.schema(list(base) + [enrichment_field(c) for c in extra], metadata=base.metadata)
    kept = {m: 0 for m in masks}
    for k in range(chunks):
        n = min(ROWS_PER_SHARD, rows - k * ROWS_PER_SHARD)
        lengths = [TOKENS_PER_ROW] * n
        prompt = np.full(TOKENS_PER_ROW - TARGETS_PER_ROW, -100)
        labels = np.concatenate([np.r_[prompt, tokens_rng.integers(0, VOCAB, TARGETS_PER_ROW)] for _ in range(n)]).astype(np.int32)
        target = labels != -100
        logprob = np.log(rng.beta(0.8, 0.25, size=labels.size)).astype(np.float32)  # mean p ~0.76: a "strong model"
        logprob[~target] = np.nan
        mean_lp = np.nanmean(logprob.reshape(n, -1), axis=1).astype(np.float32)
        keep_p = (target & (logprob >= np.log(np.float32(0.1)))).astype(np.int8)
        keep_half = (target & (rng.random(labels.size) < 0.5)).astype(np.int8)
        kept["mask_prob_ge_0.1"] += int(keep_p.sum())
        kept["mask_top_frac_0.5"] += int(keep_half.sum())
        teacher = np.where(target, logprob + rng.normal(0, 0.3, labels.size), np.nan).astype(np.float32)
        columns = {
            "id": pa.array([f"row-{k}-{i}" for i in range(n)]),
            "input_ids": list_array(lengths, np.abs(labels), pa.int32()),
            "labels": list_array(lengths, labels, pa.int32()),
            "logprob": list_array(lengths, logprob, pa.float32()),
            "entropy": list_array(lengths, np.abs(logprob), pa.float32()),
            "rank": list_array(lengths, np.where(target, rng.integers(0, 3, labels.size), -1).astype(np.int32), pa.int32()),
            "num_tokens": pa.array(np.full(n, TOKENS_PER_ROW, np.int32)),
            "num_targets": pa.array(np.full(n, TARGETS_PER_ROW, np.int32)),
            "mean_logprob": pa.array(mean_lp),
            "truncated": pa.array(np.zeros(n, bool)),
            "kind": pa.array(["chat"] * n),
            "messages": list_array([1] * n, pa.array([{"role": "user", "content": "x", "target": False}] * n, MESSAGE_TYPE), None),
            "mask_prob_ge_0.1": list_array(lengths, keep_p, pa.int8()),
            "mask_top_frac_0.5": list_array(lengths, keep_half, pa.int8()),
            "ref_x_mean_logprob": pa.array((mean_lp + rng.normal(0, 0.2, n)).astype(np.float32)),
            "ref_x_num_targets": pa.array(np.full(n, TARGETS_PER_ROW, np.int32)),
            "teacher_logprob": list_array(lengths, teacher, pa.float32()),
        }
        columns["ref_mean_logprob"] = columns["ref_x_mean_logprob"]
        if top_k:
            columns["topk_ids"], columns["topk_logprobs"] = _topk(rng, int(target.sum()), top_k, lengths, target)
        columns["teacher_topk_ids"], columns["teacher_topk_logprobs"] = _topk(rng, int(target.sum()), top_k or 20, lengths, target)
        table = pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
        write_shard(directory, k, table, {"read": n, "written": n, "skipped": {}, "truncated": 0,
                                          "tokens": n * TOKENS_PER_ROW, "targets": n * TARGETS_PER_ROW})
    total = rows * TARGETS_PER_ROW
    for m in masks:
        enrichment["masks"][m]["kept_fraction"] = kept[m] / total
    output.finish(directory, {"enrichment": enrichment})
    return total


def vocab_classes() -> tuple[np.ndarray, str, str | None]:
    """(token classes, how they were made, the token fingerprint of the default tokenizer or None)."""
    from tokensft.analysis import classify_vocab

    try:
        from tokensft.core.models import load_tokenizer, resolve_model_dir, tokenizer_fingerprint

        tokenizer = load_tokenizer(resolve_model_dir("smollm2-135m-instruct")[0])
    except Exception as exc:  # noqa: BLE001 -- a benchmark may run without the cached model
        print(f"(default tokenizer unavailable: {exc}; random classes)")
        return np.random.default_rng(0).integers(0, 6, VOCAB).astype(np.int8), "random", None
    start = time.perf_counter()
    classes = classify_vocab(tokenizer)
    how = f"classify_vocab({len(tokenizer):,} ids) {time.perf_counter() - start:.2f} s"
    return classes, how, tokenizer_fingerprint(tokenizer, chat_template=False)


def best(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, default=1_000_000)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    from tokensft.analysis import compare, load_targets, summary

    print(f"{os.cpu_count()} CPUs")
    classes, how, fingerprint = vocab_classes()
    print(how)
    with tempfile.TemporaryDirectory() as workdir:
        a, b = Path(workdir) / "a", Path(workdir) / "b"
        start = time.perf_counter()
        n = synthetic_dataset(a, args.targets, args.top_k, seed=0, token_fingerprint=fingerprint or "0")
        synthetic_dataset(b, args.targets, args.top_k, seed=1, token_fingerprint=fingerprint or "0")
        print(f"synthesized 2 x {n:,} targets (top-k {args.top_k}, 2 masks, a reference, a teacher top-{args.top_k or 20}) "
              f"in {time.perf_counter() - start:.1f} s")
        seconds, t = best(lambda: load_targets(a), args.repeat)
        print(f"load_targets        {seconds:6.2f} s  {n / seconds / 1e6:5.2f}M targets/s")
        seconds, s = best(lambda: summary(t, classes), args.repeat)
        print(f"summary             {seconds:6.2f} s  {n / seconds / 1e6:5.2f}M targets/s  "
              f"(mean p {s['continuum']['mean_p']:.3f}, {s['recommendation']['regime']}, KL {s['teacher']['kl_mean']:.3f})")
        seconds, _ = best(lambda: summary(load_targets(a), classes), args.repeat)
        print(f"load + summary      {seconds:6.2f} s  {n / seconds / 1e6:5.2f}M targets/s")
        seconds, c = best(lambda: compare(load_targets(a, topk=False), load_targets(b, topk=False)), args.repeat)
        print(f"load 2 + compare    {seconds:6.2f} s  {n / seconds / 1e6:5.2f}M targets/s  (shift {c['summary']['shift']:+.4f})")
        from tokensft.reports import write_report

        model = "smollm2-135m-instruct" if fingerprint else None
        out = Path(workdir) / "report"
        seconds, done = best(lambda: write_report(str(a), str(out), model=model, quiet=True), args.repeat)
        size = (out / "index.html").stat().st_size / 1e6
        print(f"whole report        {seconds:6.2f} s  {n / seconds / 1e6:5.2f}M targets/s  = {seconds / 60:.2f}x the 60 s "
              f"target (index.html {size:.1f} MB, token classes {done['summary']['report']['token_classes']})")
        seconds, _ = best(lambda: write_report(str(a), str(out), compare_with=str(b), model=model, quiet=True), args.repeat)
        print(f"report --compare    {seconds:6.2f} s  = {seconds / 60:.2f}x the 60 s target")


if __name__ == "__main__":
    main()
