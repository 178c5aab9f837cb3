"""Throughput and peak memory of `tokensft score` against a bare forward loop, side by side.

    python benchmarks/bench_score.py [--data FILE] [--n 128] [--batch-tokens N]

Methods, each in its own fresh process over the same examples (rendered the same way, batched
the same way) so peak memory is measured per method:
  bare      model(input_ids).logits over length-bucketed batches (full [B, T, V] logits, no scores)
  score     tokensft score (the full command: read, render, score, write shards), no top-k
  score-k20 the same with --top-k 20
  naive     per example: model(ids).logits -> full-vocab log_softmax -> logprob/entropy/rank
  score-8k  tokensft score with batches of 8192 tokens: the peak-memory target
Every method's time includes loading the model (from the tokensft cache) and rendering; batches
default to what `tokensft score` uses on the device (1024 tokens on CPU). Peak memory is the
process's peak RSS minus its RSS right after the model was loaded.
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
    from tokensft.records.formats import FormatSpec, detect_format, to_example
    from tokensft.records.readers import iter_rows
    from tokensft.records.render import Renderer

    renderer, spec, out = Renderer(tokenizer), FormatSpec(), []
    for row in iter_rows(path):
        fmt = detect_format(row.record, spec, row.where)
        out.append(renderer(to_example(row.record, spec, row.where, fmt), row.where))
    return out


MODEL_RSS: list[float] = []


def record_model_rss() -> None:
    """Wrap load_model so every method records its RSS right after the model is loaded."""
    from tokensft.core import models

    original = models.load_model

    def load_and_measure(*args, **kwargs):
        loaded = original(*args, **kwargs)
        MODEL_RSS.append(rss_mb())
        return loaded

    models.load_model = load_and_measure


def method_bare(path: Path, model_name: str, batch_tokens: int | None) -> dict:
    import torch

    from tokensft.core import models
    from tokensft.core.scorer import default_batch_tokens, plan_batches

    loaded = models.load_model(model_name)
    examples = rendered_examples(path, loaded.tokenizer)
    batch_tokens = batch_tokens or default_batch_tokens(loaded.device)
    with torch.inference_mode():
        for batch in plan_batches([len(e.input_ids) for e in examples], batch_tokens):
            width = max(len(examples[i].input_ids) for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, i in enumerate(batch):
                ids[b, : len(examples[i].input_ids)] = torch.tensor(examples[i].input_ids)
                mask[b, : len(examples[i].input_ids)] = 1
            loaded.model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
    return _counts(examples)


def method_naive(path: Path, model_name: str, batch_tokens: int | None) -> dict:
    import torch

    from tokensft.core import models

    loaded = models.load_model(model_name)
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


def method_score(path: Path, model_name: str, batch_tokens: int | None, top_k: int) -> dict:
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

    record_model_rss()
    start = time.perf_counter()
    path = Path(args.data)
    if args.method == "bare":
        result = method_bare(path, args.model, args.batch_tokens)
    elif args.method == "naive":
        result = method_naive(path, args.model, args.batch_tokens)
    elif args.method == "score-8k":
        result = method_score(path, args.model, 8192, 0)
    else:
        result = method_score(path, args.model, args.batch_tokens, 20 if args.method == "score-k20" else 0)
    result.update(seconds=time.perf_counter() - start, peak_rss_mb=peak_mb(), model_rss_mb=MODEL_RSS[0])
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(GSM8K if GSM8K.exists() else DEMO))
    parser.add_argument("--n", type=int, default=128, help="examples (the data is cycled if shorter)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-tokens", type=int, help="default: what tokensft score uses on this device")
    parser.add_argument("--methods", default="bare,score,score-k20,naive,score-8k")
    parser.add_argument("--method", help=argparse.SUPPRESS)  # internal: run one method in a child
    args = parser.parse_args()
    if args.method:
        return child(args)
    from tokensft.core.models import load_model

    load_model(args.model)  # fetch/convert once, outside any timing
    probe = [sys.executable, "-c", "import time, torch, transformers; from tokensft.core.models import load_model; "
             "t = time.perf_counter(); load_model(%r); print(time.perf_counter() - t)" % args.model]
    load_s = float(subprocess.run(probe, check=True, capture_output=True, text=True).stdout.split()[-1])
    print(f"model load from the tokensft cache (fresh process, imports excluded): {load_s:.2f} s", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        data = subset(Path(args.data), args.n, Path(workdir))
        for method in args.methods.split(","):
            cmd = [sys.executable, __file__, "--method", method, "--data", str(data), "--model", args.model]
            cmd += ["--batch-tokens", str(args.batch_tokens)] if args.batch_tokens else []
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results[method] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[method]
            print(f"{method:<10} {r['seconds']:7.1f} s  {r['tokens'] / r['seconds']:8.0f} tok/s  "
                  f"{r['targets'] / r['seconds']:7.0f} target tok/s  peak RSS {r['peak_rss_mb']:6.0f} MB "
                  f"= model {r['model_rss_mb']:.0f} MB + {r['peak_rss_mb'] - r['model_rss_mb']:.0f} MB", flush=True)
    first = next(iter(results.values()))
    print(f"\n{args.n} examples of {Path(args.data).name}: {first['tokens']:,} tokens, {first['targets']:,} targets; "
          f"batch tokens {args.batch_tokens or 'default'}; {os.cpu_count()} CPUs")
    if "bare" in results:
        for method in ("score", "score-k20", "naive", "score-8k"):
            if method in results:
                print(f"throughput {method:<9} / bare forward: {results['bare']['seconds'] / results[method]['seconds']:.2f}x")
    if "score" in results and "naive" in results:
        print(f"throughput score     / naive loop:   {results['naive']['seconds'] / results['score']['seconds']:.2f}x")


if __name__ == "__main__":
    main()
