"""Generation speed of `tokensft eval` against a plain batched `model.generate`, side by side.

    python benchmarks/bench_eval.py [--n 32] [--max-new-tokens 64] [--reps 2]

Greedy decoding of the same GSM8K prompts (rendered as `tokensft eval` renders them, the embedded
SmolLM2-135M-Instruct, fp32, CPU), three ways, interleaved in one process, each rep timed alone:
  tokensft   tokensft.evaluate.generate.generate: eval's own decoder (length-bucketed, left-padded
             batches of at most --batch-tokens prompt + completion tokens, KV cache)
  generate   transformers' model.generate over exactly the same batches (left-padded, attention mask)
  one-by-one model.generate, one prompt at a time (what an eval script without batching does)
Printed: new tokens/s of each, the ratios tokensft/generate (target >= 0.9) and tokensft/one-by-one
(target >= 3), and how many completions of each agree with tokensft's token for token. Then the
whole `tokensft eval` command (reading, rendering, generating, checking, writing; model load
included) for context. Data: ../shared/data/gsm8k/test.jsonl when present, else the demo data.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
DEMO = ROOT / "examples" / "data" / "arithmetic-heldout.jsonl"


def prompts(data: Path, n: int, tokenizer) -> list[list[int]]:
    from tokensft.evaluate.run import eval_prompt
    from tokensft.records.formats import FormatSpec, detect_format, to_example
    from tokensft.records.readers import iter_rows
    from tokensft.records.render import Renderer

    renderer, spec, out = Renderer(tokenizer), FormatSpec(), []
    for row in iter_rows(data):
        fmt = detect_format(row.record, spec, row.where)
        out.append(eval_prompt(to_example(row.record, spec, row.where, fmt), renderer, row.where)[0])
        if len(out) == n:
            break
    return out


def hf_batches(model, batches: list[list[list[int]]], max_new_tokens: int, stops: list[int], pad: int) -> list[list[int]]:
    import torch

    out = []
    for batch in batches:
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            generated = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                       eos_token_id=stops, pad_token_id=pad)
        for row in generated[:, width:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            out.append(row[:cut])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=GSM8K if GSM8K.is_file() else DEMO)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: eval's (4096 on CPU)")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from tokensft.core.models import load_model
    from tokensft.core.scorer import plan_batches
    from tokensft.evaluate.generate import default_batch_tokens, generate
    from tokensft.evaluate.run import stop_ids
    from tokensft.records.render import Renderer

    hf_logging.set_verbosity_error()
    loaded = load_model("smollm2-135m-instruct", dtype="float32", device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    stops = sorted(stop_ids(tokenizer, Renderer(tokenizer), getattr(model.generation_config, "eos_token_id", None)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ps = prompts(args.data, args.n, tokenizer)
    batch_tokens = args.batch_tokens or default_batch_tokens(loaded.device)
    order = plan_batches([len(p) + args.max_new_tokens for p in ps], batch_tokens)  # eval's own batches
    batches = [[ps[i] for i in b] for b in order]
    flat = [i for b in order for i in b]

    def ours():
        return generate(model, ps, args.max_new_tokens, set(stops), pad, batch_tokens=batch_tokens)

    def theirs():
        out = hf_batches(model, batches, args.max_new_tokens, stops, pad)
        by_index = dict(zip(flat, out))
        return [by_index[i] for i in range(len(ps))]

    def one_by_one():
        return hf_batches(model, [[p] for p in ps], args.max_new_tokens, stops, pad)

    methods = {"tokensft": ours, "generate": theirs, "one-by-one": one_by_one}
    seconds = {name: [] for name in methods}
    completions = {}
    torch.manual_seed(0)
    for _ in range(args.reps):
        for name, run in methods.items():  # interleaved: drift of the machine hits every method alike
            began = time.perf_counter()
            completions[name] = run()
            seconds[name].append(time.perf_counter() - began)
    rates = {name: sum(map(len, completions[name])) / min(seconds[name]) for name in methods}
    same = {name: sum(a == b for a, b in zip(completions["tokensft"], completions[name])) for name in methods}
    print(f"{len(ps)} prompts of {args.data.name}, greedy, up to {args.max_new_tokens} new tokens, {len(order)} batches "
          f"of <= {batch_tokens} tokens, best of {args.reps} reps, SmolLM2-135M-Instruct fp32, {torch.get_num_threads()} "
          "threads")
    for name in methods:
        print(f"  {name:<11} {rates[name]:7.1f} new tok/s  ({min(seconds[name]):.1f} s; {same[name]}/{len(ps)} "
              "completions equal to tokensft's)")
    print(f"  tokensft / generate   {rates['tokensft'] / rates['generate']:.2f}x  (target >= 0.9)")
    print(f"  tokensft / one-by-one {rates['tokensft'] / rates['one-by-one']:.2f}x  (target >= 3)")

    from tokensft.evaluate.config import EvalConfig
    from tokensft.evaluate.run import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "heldout.jsonl"
        lines = [line for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()][:args.n]
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
        began = time.perf_counter()
        summary = evaluate(EvalConfig(model="smollm2-135m-instruct", input=str(data), output=str(Path(tmp) / "eval"),
                                      metric="numeric", max_new_tokens=args.max_new_tokens, teacher_forced=False,
                                      quiet=True, dtype="float32", device="cpu"))
        whole = time.perf_counter() - began
        rows = json.loads((Path(tmp) / "eval" / "results.json").read_text())["completions"]
    print(f"  whole `tokensft eval --no-teacher-forced` ({rows} completions, model load included): {whole:.1f} s; "
          f"accuracy {summary['results']['accuracy']:.3f}")


if __name__ == "__main__":
    main()
