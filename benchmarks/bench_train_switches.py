"""`tokensft train`'s memory switches: peak memory and step time of one training step with
--gradient-checkpointing on and off (and, on CUDA, fused vs foreach AdamW), and the padding that
--batching grouped removes.

    python benchmarks/bench_train_switches.py [--seq-lens 512,1024] [--batch-size 4] [--layers 4 --hidden 256]
    python benchmarks/bench_train_switches.py --hidden 1536 --layers 28 --heads 12 --kv-heads 2 \
        --intermediate 8960 --vocab 151936 --seq-lens 2048,8192 --batch-size 1     # Qwen2.5-1.5B's shape (GPU)

1. Step memory. A Llama from a config (default: bench_train's small one, hidden 256, 4 layers,
   vocab 49,152, tied embeddings; random weights, fp32 weights, bf16 autocast on CUDA) and a
   synthetic micro-batch of B x T tokens, the last 60% of each sequence targets. A step is the
   trainer's: micro_batch_loss (the decoder, chunked lm_head at chunk 256, nll), backward, clip
   1.0, AdamW (tokensft.train.optim.adamw, or the implementation forced), zero_grad. Each variant
   runs in a fresh process: one warm-up step (AdamW's state is allocated there, as in any run
   after its first step), then the measured step; peak is torch.cuda.max_memory_allocated above
   what is allocated before the step on CUDA, else the process's peak RSS (VmHWM, reset before the
   step) above its RSS before it, with glibc's mmap threshold at 64 KB (see bench_train). Both
   count activations, gradients and the optimizer's temporaries; the weights and AdamW's state are
   allocated before the step, hence not counted.
2. Padding. GSM8K's records (--gsm8k, default ../shared/data/gsm8k/test.jsonl) rendered as score
   renders them, one epoch drawn as train draws it, micro-batches of 4, global batches of 8 to 64:
   padding tokens per real token under --batching padded (the drawn order) and grouped (sorted
   within the step); packed has none.
3. Step time by batching (--batching-steps N, default 8; 0 skips). The same rendered GSM8K records
   (real token ids and labels), the model of part 1, global batch 16 in micro-batches of 4, the
   trainer's own batches (TrainData.collate's collate_rows, train.packing.pack, the step's sort)
   and step (micro_batch_loss nll per micro-batch, backward, clip, AdamW). The first N steps of the
   epoch; in each, padded, grouped, packed and packed-mask each take the step, in an order rotated
   every step (drift hits all alike), after one warm-up step each. packed is what `tokensft train
   --batching packed` runs on such a model (SDPA on each packed sequence alone, train.packing.VARLEN);
   packed-mask is transformers' own way, SDPA over the whole row under a dense block-diagonal mask.
   Reported: targets per second over the N steps and its ratio to padded's. Example: the
   SmolLM2-135M shape, `--hidden 576 --layers 30 --heads 9 --kv-heads 3 --intermediate 1536`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench_train import _status_mb, peak_rss_mb, reset_peak_rss


def model_from(args, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         max_position_embeddings=max(int(t) for t in args.seq_lens.split(",")), tie_word_embeddings=True,
                         use_cache=False)
    with torch.device(device):  # initialized where it runs: a 1.5B model in seconds on a GPU, not a minute on CPU
        return LlamaForCausalLM(config).float()


def child(args) -> None:
    """One variant (checkpointing, optimizer implementation, sequence length) in this fresh process; JSON out."""
    import torch

    from tokensft.train.loss import Denominator, count_batch, micro_batch_loss
    from tokensft.train.memory import enable_checkpointing
    from tokensft.train.objectives import parse_objective
    from tokensft.train.optim import adamw

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = model_from(args, device)
    if args.checkpointing:
        enable_checkpointing(model)
    model.train()
    kwargs = {"lr": 1e-5, "betas": (0.9, 0.95), "weight_decay": 0.01}
    if args.optimizer == "auto":
        optimizer, impl = adamw(model.parameters(), device, **kwargs)
    else:
        impl = args.optimizer
        optimizer = torch.optim.AdamW(model.parameters(), **{"fused": {"fused": True}, "foreach": {"foreach": True},
                                                              "single-tensor": {"foreach": False}}[impl], **kwargs)
    nll = parse_objective("nll")

    def batch(t: int) -> dict:
        g = torch.Generator().manual_seed(t)
        ids = torch.randint(0, args.vocab, (args.batch_size, t), generator=g)
        labels = torch.full_like(ids, -100)
        labels[:, int(0.4 * t):] = ids[:, int(0.4 * t):]
        return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": torch.ones_like(ids).to(device)}

    def step(b: dict) -> float:
        c = count_batch(b)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss, _ = micro_batch_loss(model, b, nll, "all-targets", Denominator(c["targets"], c["sequences"], c["kept"], 1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    step(batch(64))  # warm-up: AdamW's state, kernels, thread pools
    measured = batch(args.seq_len)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        before = _status_mb("VmRSS")
    began = time.perf_counter()
    loss = step(measured)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else peak_rss_mb() - before
    print(json.dumps({"peak_mb": peak, "seconds": seconds, "loss": loss, "optimizer": impl, "device": device.type,
                      "params": sum(p.numel() for p in model.parameters())}))


def gsm8k_lengths(path: Path, model: str) -> np.ndarray:
    """Token counts of GSM8K records rendered exactly as `tokensft score` renders them (chat template)."""
    from tokensft.core.models import load_tokenizer, resolve_model_dir
    from tokensft.records.formats import FormatSpec, to_example
    from tokensft.records.render import Renderer

    render = Renderer(load_tokenizer(resolve_model_dir(model)[0]))
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return np.array([len(render(to_example(r, FormatSpec(), "gsm8k", "prompt-response"), "gsm8k").input_ids)
                     for r in records])


def gsm8k_rows(path: Path, model: str):
    """GSM8K rendered as `tokensft score` renders it: a pyarrow table of id, input_ids, labels."""
    import pyarrow as pa

    from tokensft.core.models import load_tokenizer, resolve_model_dir
    from tokensft.records.formats import FormatSpec, to_example
    from tokensft.records.render import Renderer

    render = Renderer(load_tokenizer(resolve_model_dir(model)[0]))
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rendered = [render(to_example(r, FormatSpec(), "gsm8k", "prompt-response"), "gsm8k") for r in records]
    return pa.table({"id": [str(i) for i in range(len(rendered))], "input_ids": [list(r.input_ids) for r in rendered],
                     "labels": [list(r.labels) for r in rendered]})


def batching_speed(args, table, steps: int, global_batch: int = 16, micro: int = 4) -> dict:
    """Targets per second of `steps` optimizer steps under each --batching (see the module doc, part 3)."""
    import pyarrow as pa
    import torch

    from tokensft.train.data import Columns, collate_rows
    from tokensft.train.loss import Denominator, count_batch, micro_batch_loss
    from tokensft.train.objectives import parse_objective
    from tokensft.train.optim import adamw
    from tokensft.train.packing import VARLEN, pack, use_varlen

    args.seq_lens = str(max(len(x) for x in table.column("input_ids").to_pylist()))  # max positions
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model_from(args, device)
    model.train()
    assert use_varlen(model)  # registers VARLEN; each mode sets the attention it trains with below
    attention = {"padded": "sdpa", "grouped": "sdpa", "packed": VARLEN, "packed-mask": "sdpa"}
    optimizer, _ = adamw(model.parameters(), device, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.01)
    lengths = np.array([len(x) for x in table.column("input_ids").to_pylist()])
    order = np.random.default_rng([0, 0]).permutation(len(lengths))
    nll = parse_objective("nll")

    def batches(drawn: np.ndarray, mode: str) -> list[dict]:
        if mode == "grouped":
            drawn = drawn[lengths[drawn].argsort(kind="stable")]
        out = [collate_rows(table.take(pa.array(drawn[i:i + micro])), Columns(), 0) for i in range(0, len(drawn), micro)]
        return [pack(b) for b in out] if mode.startswith("packed") else out

    def step(bs: list[dict]) -> int:
        counts = [count_batch(b) for b in bs]
        d = Denominator(sum(c["targets"] for c in counts), sum(c["sequences"] for c in counts), None, len(bs))
        for b in bs:
            b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, _ = micro_batch_loss(model, b, nll, "all-targets", d)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return int(sum(c["targets"] for c in counts))

    modes = ("padded", "grouped", "packed", "packed-mask")
    seconds, targets, positions = dict.fromkeys(modes, 0.0), dict.fromkeys(modes, 0), dict.fromkeys(modes, 0)
    for mode in modes:
        model.set_attn_implementation(attention[mode])
        step(batches(order[:global_batch], mode))  # warm-up
    for n in range(steps):
        drawn = order[(n + 1) * global_batch:(n + 2) * global_batch]
        for mode in modes[n % len(modes):] + modes[:n % len(modes)]:
            model.set_attn_implementation(attention[mode])
            bs = batches(drawn, mode)
            began = time.perf_counter()
            targets[mode] += step(bs)
            seconds[mode] += time.perf_counter() - began
            positions[mode] += sum(int(b["input_ids"].numel()) for b in bs)
    assert len(set(targets.values())) == 1  # each trained the same targets
    return {m: {"targets_per_s": targets[m] / seconds[m], "positions": positions[m], "targets": targets[m]} for m in modes}


def padding(lengths: np.ndarray, global_batch: int, micro: int = 4, seed: int = 0) -> dict:
    """Padding of one epoch drawn as `tokensft train` draws it (TrainData.step_indices: a permutation
    from (seed, epoch)), split as `train.step.micro_batches` splits a step: padded in the drawn order,
    grouped after a stable sort by length (one process)."""
    order = np.random.default_rng([seed, 0]).permutation(len(lengths))
    out = {}
    for mode in ("padded", "grouped"):
        real = padded = 0
        for start in range(0, len(order), global_batch):
            step = lengths[order[start:start + global_batch]]
            if mode == "grouped":
                step = step[step.argsort(kind="stable")]
            for i in range(0, len(step), micro):
                chunk = step[i:i + micro]
                real, padded = real + chunk.sum(), padded + chunk.max() * len(chunk)
        out[mode] = (padded - real) / real  # padding tokens per real token
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq-lens", default="512,1024")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--optimizers", default="auto", help="comma-separated: auto, fused, foreach, single-tensor")
    p.add_argument("--gsm8k", default=str(Path(__file__).resolve().parents[2] / "shared/data/gsm8k/test.jsonl"),
                   help="GSM8K JSONL whose lengths the padding part uses")
    p.add_argument("--model", default="smollm2-135m-instruct", help="whose tokenizer and template render it")
    p.add_argument("--skip-memory", action="store_true", help="skip part 1 (memory)")
    p.add_argument("--batching-steps", type=int, default=8, help="part 3's timed steps per batching (0: skip part 3)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--optimizer", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    shape = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
             ("seq_lens", "batch_size", "layers", "hidden", "heads", "kv_heads", "intermediate", "vocab")]
    if not args.skip_memory:
        print(f"1. one training step's peak memory, batch {args.batch_size}, hidden {args.hidden}, {args.layers} layers, "
              f"vocab {args.vocab:,} (each in a fresh process)", flush=True)
        results = {}
        for t in [int(x) for x in args.seq_lens.split(",")]:
            for opt in args.optimizers.split(","):
                for ckpt in (False, True):
                    cmd = [sys.executable, __file__, "--child", *shape, f"--seq-len={t}", f"--optimizer={opt}",
                           *(["--checkpointing"] if ckpt else [])]
                    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                    if done.returncode:
                        print(f"  T={t} {opt} ckpt={ckpt}: failed\n{done.stderr[-2000:]}", flush=True)
                        continue
                    r = results[(t, opt, ckpt)] = json.loads(done.stdout.strip().splitlines()[-1])
                    base = results.get((t, opt, False))
                    ratio = f"  {r['peak_mb'] / base['peak_mb']:.2f}x / {r['seconds'] / base['seconds']:.2f}x of off" if ckpt and base else ""
                    print(f"  T={t:<5} adamw {r['optimizer']:<13} checkpointing {'on ' if ckpt else 'off'} peak "
                          f"{r['peak_mb']:8.0f} MB  step {r['seconds']:6.2f} s  loss {r['loss']:.5f}{ratio}", flush=True)
        device = next(iter(results.values()))["device"] if results else "?"
        print(f"  ({device}: {'torch.cuda.max_memory_allocated' if device == 'cuda' else 'peak RSS'} above the weights "
              f"and AdamW state; {next(iter(results.values()))['params'] / 1e6 if results else 0:.0f}M parameters)")
    data = Path(args.gsm8k)
    if not data.is_file():
        print(f"2. padding: no GSM8K file at {data} (--gsm8k PATH); skipped")
        return
    lengths = gsm8k_lengths(data, args.model)
    print(f"2. padding on {data.name} ({len(lengths):,} records, median {int(np.median(lengths))} tokens, rendered for "
          f"{args.model}), micro-batches of 4, padding tokens per real token:")
    for global_batch in (8, 16, 32, 64):
        pad = padding(lengths, global_batch)
        print(f"  global batch {global_batch:>2}: padded {pad['padded']:.3f}x, grouped {pad['grouped']:.3f}x "
              f"({1 - pad['grouped'] / pad['padded']:.0%} removed), packed 0")
    if args.batching_steps:
        speed = batching_speed(args, gsm8k_rows(data, args.model), args.batching_steps)
        base = speed["padded"]
        print(f"3. step time by --batching: {args.batching_steps} steps of global batch 16 (micro-batches of 4) on "
              f"{data.name}, hidden {args.hidden}, {args.layers} layers, {speed['padded']['targets']:,} targets each:")
        for mode, r in speed.items():
            print(f"  {mode:<11} {r['targets_per_s']:8.0f} targets/s  {r['targets_per_s'] / base['targets_per_s']:.2f}x "
                  f"padded's; {r['positions']:,} positions computed ({r['positions'] / base['positions']:.2f}x)")


if __name__ == "__main__":
    main()
