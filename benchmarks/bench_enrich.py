"""Speed of `tokensft enrich`: masks and weights over ~1M target tokens, and reference scoring
against a bare forward.

    python benchmarks/bench_enrich.py [--targets 1000000] [--n 64] [--skip-ref] [--repeats 3]

1. Masks: a synthetic scored dataset (random log-probs, 300 tokens per row, 250 targets) is
   enriched in place with all six mask kinds at once, then with one more (prob>=0.2) alone. The time
   covers the whole command: reading every shard, the quantile pass, writing every shard, the swap.
2. Weights: the same synthetic set with a synthetic `teacher_logprob` column; fresh copies are
   enriched in place with one `--mask prob>=0.1`, one `--weight prob^1` and one
   `--mask excess-top-frac:0.6` (Rho-1), interleaved, the best of --repeats each. Printed as ratios
   to the prob>= mask (target: <= 2x).
3. References: GSM8K examples (../shared/data/gsm8k/test.jsonl, else the demo data) are scored,
   then `enrich --ref` re-renders and scores them under the default model as a PoFT reference,
   against a bare forward loop (model(input_ids).logits over the same batches) of the same model
   on the same renders. Each runs in a fresh process and includes loading the model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_score import DEMO, GSM8K, subset  # noqa: E402

TOKENS_PER_ROW, TARGETS_PER_ROW, ROWS_PER_SHARD = 300, 250, 1000
ALL_MASKS = ["prob>=0.1", "prob<=0.5", "prob-between:0.1:0.9", "top-frac:0.6", "quantile>=0.2", "random:0.3:0"]


def synthetic_dataset(directory: Path, targets: int, teacher: bool = False) -> int:
    """A finished scored dataset of ceil(targets / 250) rows with random log-probs (and with `teacher`,
    random teacher log-probs as `enrich --teacher` stores them); returns its targets."""
    from tokensft.core.locks import OutputLock
    from tokensft.preprocess import output
    from tokensft.preprocess.shards import list_array, write_shard
    from tokensft.core.schema import MESSAGE_TYPE, SCHEMA_VERSION, TEACHER_LOGPROB, enrichment_field, scored_schema

    rng = np.random.default_rng(0)
    rows = -(-targets // TARGETS_PER_ROW)
    chunks = -(-rows // ROWS_PER_SHARD)
    identity = {"synthetic": True, "rows": rows}
    meta = {"schema_version": SCHEMA_VERSION, "tokensft_version": "bench", "model": {"name": "synthetic", "content_hash": "0"},
            "tokenizer_fingerprint": "0", "token_fingerprint": "0", "created": "", "command": "bench", "top_k": 0}
    run = {"identity": identity, "metadata": meta, "num_chunks": chunks, "fingerprint": "synthetic"}
    with OutputLock(directory):
        output.prepare(directory, run, overwrite=True)
    schema = scored_schema(0, identity)
    if teacher:
        schema = schema.append(enrichment_field(TEACHER_LOGPROB))
    for k in range(chunks):
        n = min(ROWS_PER_SHARD, rows - k * ROWS_PER_SHARD)
        lengths = [TOKENS_PER_ROW] * n
        labels = np.tile(np.r_[np.full(TOKENS_PER_ROW - TARGETS_PER_ROW, -100), np.arange(TARGETS_PER_ROW)], n).astype(np.int32)
        logprob = np.log(rng.beta(0.8, 0.25, size=labels.size)).astype(np.float32)  # mean p ~ 0.76: a "strong model"
        logprob[labels == -100] = np.nan
        columns = {
            "id": pa.array([f"row-{k}-{i}" for i in range(n)]),
            "input_ids": list_array(lengths, np.abs(labels), pa.int32()),
            "labels": list_array(lengths, labels, pa.int32()),
            "logprob": list_array(lengths, logprob, pa.float32()),
            "entropy": list_array(lengths, np.abs(logprob), pa.float32()),
            "rank": list_array(lengths, np.zeros(labels.size, np.int32), pa.int32()),
            "num_tokens": pa.array(np.full(n, TOKENS_PER_ROW, np.int32)),
            "num_targets": pa.array(np.full(n, TARGETS_PER_ROW, np.int32)),
            "mean_logprob": pa.array(np.nanmean(logprob.reshape(n, -1), axis=1).astype(np.float32)),
            "truncated": pa.array(np.zeros(n, bool)),
            "kind": pa.array(["chat"] * n),
            "messages": list_array([1] * n, pa.array([{"role": "user", "content": "x", "target": False}] * n, MESSAGE_TYPE), None),
        }
        if teacher:  # a reference a little better than the scorer on average: excess of both signs
            teacher_logprob = np.log(rng.beta(0.9, 0.2, size=labels.size)).astype(np.float32)
            teacher_logprob[labels == -100] = np.nan
            columns[TEACHER_LOGPROB] = list_array(lengths, teacher_logprob, pa.float32())
        table = pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
        write_shard(directory, k, table, {"read": n, "written": n, "skipped": {}, "truncated": 0,
                                          "tokens": n * TOKENS_PER_ROW, "targets": n * TARGETS_PER_ROW})
    output.finish(directory)
    return rows * TARGETS_PER_ROW


def bench_masks(target_count: int) -> None:
    from tokensft.preprocess.enrich import EnrichConfig, enrich

    with tempfile.TemporaryDirectory() as workdir:
        directory = Path(workdir) / "synthetic"
        targets = synthetic_dataset(directory, target_count)
        for masks in (ALL_MASKS, ["prob>=0.2"]):  # a mask not yet present: the single-mask cost
            start = time.perf_counter()
            summary = enrich(EnrichConfig(input=str(directory), masks=masks, quiet=True))
            seconds = time.perf_counter() - start
            kept = [f"{m['spec']} {m['kept_fraction']:.2f}" for m in summary["metadata"]["enrichment"]["masks"].values()
                    if m["spec"] in masks]
            print(f"masks x{len(masks)}: {seconds:5.2f} s for {targets:,} targets = {targets / seconds / 1e6:5.2f}M targets/s "
                  f"(kept: {', '.join(kept)})", flush=True)


def bench_weights(target_count: int, repeats: int) -> None:
    """--weight prob^1 and --mask excess-top-frac:0.6 against one prob>= mask, on fresh copies."""
    import shutil

    from tokensft.preprocess.enrich import EnrichConfig, enrich

    requests = {"mask prob>=0.1": {"masks": ["prob>=0.1"]}, "weight prob^1": {"weights": ["prob^1"]},
                "mask excess-top-frac:0.6": {"masks": ["excess-top-frac:0.6"]}}
    with tempfile.TemporaryDirectory() as workdir:
        source = Path(workdir) / "source"
        targets = synthetic_dataset(source, target_count, teacher=True)
        best = {name: float("inf") for name in requests}
        for i in range(repeats):
            for name, request in requests.items():  # interleaved: a busy machine slows each alike
                directory = Path(workdir) / f"copy-{i}-{len(best)}-{name.split()[1]}"
                shutil.copytree(source, directory)
                start = time.perf_counter()
                summary = enrich(EnrichConfig(input=str(directory), quiet=True, **request))
                best[name] = min(best[name], time.perf_counter() - start)
                assert summary["status"] == "finished", summary["status"]
                shutil.rmtree(directory)
        base = best["mask prob>=0.1"]
        for name, seconds in best.items():
            print(f"{name:<26} {seconds:5.2f} s for {targets:,} targets = {targets / seconds / 1e6:5.2f}M targets/s "
                  f"({seconds / base:.2f}x the prob>= mask; best of {repeats})", flush=True)


def child(method: str, scored_dir: str, data: str, model: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch  # noqa: F401  (imports are not scoring time)
    import transformers  # noqa: F401

    start = time.perf_counter()
    if method == "ref":
        from tokensft.preprocess.enrich import EnrichConfig, enrich

        with tempfile.TemporaryDirectory() as out:
            meta = enrich(EnrichConfig(input=scored_dir, output=str(Path(out) / "e"), refs=[model], quiet=True))["metadata"]
        rows = sum(1 for _ in open(data, encoding="utf-8"))
        result = {"rows": rows, "scored": meta["enrichment"]["refs"][next(iter(meta["enrichment"]["refs"]))]["counts"]["scored"]}
    else:
        from bench_score import method_bare

        result = method_bare(Path(data), model, None)
    result["seconds"] = time.perf_counter() - start
    print(json.dumps(result))


def bench_ref(data: Path, n: int, model: str) -> None:
    from tokensft.preprocess.run import ScoreConfig, score

    with tempfile.TemporaryDirectory() as workdir:
        subset_path = subset(data, n, Path(workdir))
        scored_dir = str(Path(workdir) / "scored")
        score(ScoreConfig(input=str(subset_path), output=scored_dir, model=model, quiet=True))
        seconds = {}
        for method in ("bare", "ref"):
            cmd = [sys.executable, __file__, "--child", method, "--scored", scored_dir, "--data", str(subset_path), "--model", model]
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            seconds[method] = result["seconds"]
            print(f"{method:<5} {result['seconds']:6.1f} s  {json.dumps({k: v for k, v in result.items() if k != 'seconds'})}", flush=True)
        print(f"reference scoring / bare forward throughput, {n} examples of {data.name}: "
              f"{seconds['bare'] / seconds['ref']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, default=1_000_000)
    parser.add_argument("--n", type=int, default=64, help="examples for the reference benchmark")
    parser.add_argument("--data", default=str(GSM8K if GSM8K.exists() else DEMO))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--skip-ref", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each weight/mask timing (the best counts)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--scored", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.scored, args.data, args.model)
    print(f"{os.cpu_count()} CPUs")
    bench_masks(args.targets)
    bench_weights(args.targets, args.repeats)
    if not args.skip_ref:
        bench_ref(Path(args.data), args.n, args.model)


if __name__ == "__main__":
    main()
