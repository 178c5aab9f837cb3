"""Throughput and peak memory of `tokensft score` against a bare forward loop, side by side.

    python benchmarks/bench_score.py [--data FILE] [--n 128] [--batch-tokens 8192]

Methods, each in its own fresh process over the same examples (rendered the same way, batched
the same way) so peak memory is measured per method:
  bare      model(input_ids).logits over length-bucketed batches (full [B, T, V] logits, no scores)
  score     tokensft score (the full command: read, render, score, write shards), no top-k
  score-k20 the same with --top-k 20
  naive     per example: model(ids).logits -> full-vocab log_softmax -> logprob/entropy/rank
Every method's time includes loading the model (from the tokensft cache) and rendering.
Data: ../shared/data/gsm8k/test.jsonl when present (GSM8K test, MIT), else the demo data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
DEMO = ROOT / "examples" / "data" / "arithmetic.jsonl"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def subset(data: Path, n: int, workdir: Path) -> Path:
    lines = [line for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = (lines * (n // len(lines) + 1))[:n]
    path = workdir / "bench.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rendered_examples(path: Path, tokenizer):
    from tokensft.preprocess.formats import FormatSpec, detect_format, to_example
    from tokensft.preprocess.readers import iter_rows
    from tokensft.preprocess.render import Renderer

    renderer, spec, out = Renderer(tokenizer), FormatSpec(), []
    for row in iter_rows(path):
        fmt = detect_format(row.record, spec, row.where)
        out.append(renderer(to_example(row.record, spec, row.where, fmt), row.where))
    return out


def method_bare(path: Path, model_name: str, batch_tokens: int) -> dict:
    import torch

    from tokensft.preprocess.models import load_model
    from tokensft.preprocess.scorer import plan_batches

    loaded = load_model(model_name)
    model_rss = rss_mb()
    examples = rendered_examples(path, loaded.tokenizer)
    with torch.inference_mode():
        for batch in plan_batches([len(e.input_ids) for e in examples], batch_tokens):
            width = max(len(examples[i].input_ids) for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, i in enumerate(batch):
                ids[b, : len(examples[i].input_ids)] = torch.tensor(examples[i].input_ids)
                mask[b, : len(examples[i].input_ids)] = 1
            loaded.model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
    return {"model_rss_mb": model_rss, **_counts(examples)}


def method_naive(path: Path, model_name: str, batch_tokens: int) -> dict:
    import torch

    from tokensft.preprocess.models import load_model

    loaded = load_model(model_name)
    examples = rendered_examples(path, loaded.tokenizer)
    with torch.inference_mode():
        for e in examples:
            logits = loaded.model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0].float()  # (T, V)
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            labels = torch.tensor(e.labels[1:])
            pos = torch.nonzero(labels != -100).squeeze(1)
            rows, targets = logprobs[pos], labels[pos]
            rows.gather(1, targets[:, None])
            -(rows.exp() * rows).sum(-1)
            (rows > rows.gather(1, targets[:, None])).sum(-1)
    return _counts(examples)


def method_score(path: Path, model_name: str, batch_tokens: int, top_k: int) -> dict:
    from tokensft.preprocess.run import ScoreConfig, score

    with tempfile.TemporaryDirectory() as out:
        summary = score(ScoreConfig(input=str(path), output=out, model=model_name, top_k=top_k,
                                    batch_tokens=batch_tokens, quiet=True))
    counts = summary["metadata"]["counts"]
    return {"tokens": counts["tokens"], "targets": counts["targets"]}


def _counts(examples) -> dict:
    return {"tokens": sum(len(e.input_ids) for e in examples),
            "targets": sum(sum(label != -100 for label in e.labels) for e in examples)}


def child(args) -> None:
    """Run one method in this process and print its measurements as JSON."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch  # noqa: F401  (imported before timing: import time is not scoring time)
    import transformers  # noqa: F401

    start = time.perf_counter()
    path = Path(args.data)
    if args.method == "bare":
        result = method_bare(path, args.model, args.batch_tokens)
    elif args.method == "naive":
        result = method_naive(path, args.model, args.batch_tokens)
    else:
        result = method_score(path, args.model, args.batch_tokens, 20 if args.method == "score-k20" else 0)
    result.update(seconds=time.perf_counter() - start, peak_rss_mb=peak_mb())
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(GSM8K if GSM8K.exists() else DEMO))
    parser.add_argument("--n", type=int, default=128, help="examples (the data is cycled if shorter)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--methods", default="bare,score,score-k20,naive")
    parser.add_argument("--method", help=argparse.SUPPRESS)  # internal: run one method in a child
    args = parser.parse_args()
    if args.method:
        return child(args)
    from tokensft.preprocess.models import load_model

    load_model(args.model)  # fetch/convert once, outside any timing
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        data = subset(Path(args.data), args.n, Path(workdir))
        for method in args.methods.split(","):
            cmd = [sys.executable, __file__, "--method", method, "--data", str(data), "--model", args.model,
                   "--batch-tokens", str(args.batch_tokens)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results[method] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[method]
            print(f"{method:<10} {r['seconds']:7.1f} s  {r['tokens'] / r['seconds']:8.0f} tok/s  "
                  f"{r['targets'] / r['seconds']:7.0f} target tok/s  peak RSS {r['peak_rss_mb']:7.0f} MB", flush=True)
    print(f"\n{args.n} examples of {Path(args.data).name}, {results['bare']['tokens']:,} tokens, "
          f"{results['bare']['targets']:,} targets, batches of {args.batch_tokens} tokens, {os.cpu_count()} CPUs")
    bare = results["bare"]
    for method in ("score", "score-k20", "naive"):
        if method in results:
            print(f"throughput {method:<10} / bare forward: {bare['seconds'] / results[method]['seconds']:.2f}x")
    if "score" in results:
        print(f"naive / score speed-up: {results['naive']['seconds'] / results['score']['seconds']:.2f}x" if "naive" in results else "")
        model = bare["model_rss_mb"]
        for method in ("bare", "score", "score-k20"):
            if method in results:
                print(f"peak memory {method:<10} model {model:.0f} MB + {results[method]['peak_rss_mb'] - model:.0f} MB")


if __name__ == "__main__":
    main()
