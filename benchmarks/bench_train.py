"""Training step time of every objective against plain nll, of --weight against none, and peak memory of the loss
against naive cross-entropy.

    python benchmarks/bench_train.py [--quick] [--reps 8] [--parts steps,weight,memory]

1. Step time. A small Llama (transformers LlamaConfig: hidden 256, 4 layers, 4 heads / 2 KV heads,
   MLP 768, vocab 49,152 like SmolLM2 with tied embeddings, so the lm_head/vocabulary cost is
   realistic; random weights, fp32 as the trainer runs on CPU) and one synthetic micro-batch of
   4 sequences x 256 tokens (lengths 192..256, right-padded; the last 60% of each sequence are
   targets, random ids). A step is what `tokensft train` does per optimizer step with one
   micro-batch: count_batch + Denominator, micro_batch_loss (backbone, gathered hidden rows,
   chunked lm_head under checkpointing, the objective, chunk size 256), backward, clip 1.0,
   AdamW step, zero_grad. The extras an objective reads are synthetic and only present when it
   needs them, as TrainData.collate does: a random int8 `mask` (~70% kept) for nll --mask, a
   random float32 `weight` (uniform 0.1..2 at targets, 0 elsewhere) for --weight,
   a random ref_logprob per sequence for poft, random top-20 prior_ids/prior_logprobs (-inf at
   non-targets) for prior=teacher; plus nll at --chunk-size 1024, the cost of a larger chunk.
   Every objective gets one warm-up step, then `--reps` rounds in which each objective takes one
   timed step, round-robin (the order rotated every round) so drift on a shared machine hits all
   alike; the median step time and its ratio to nll's are reported, and the ratio of the fastest
   steps (contention only ever adds time). All share one model and optimizer (lr 1e-5).
   (On random weights p ~ 1/V, so the online thresholds keep no token; the compute is the same.)
1b. --weight (part "weight"): the same step, interleaved the same way, for nll, nll --mask and poft
   each with and without --weight (default normalization), the weighted step's median over its
   unweighted twin's (target <= 1.02x); and TrainData.collate's cost of the weight column itself
   (collate_rows of 4 x 256-token rows with and without it), which the step timings leave out.
2. Peak memory of the loss alone at sequence length 2048 with a 49,152 vocabulary: hidden states
   (1, 2048, 576 like SmolLM2) requiring grad, an lm_head Linear(576, 49152) training its weight,
   60% of positions targets. naive: logits = lm_head(hidden) in float32 over all positions, then
   F.cross_entropy(ignore_index=-100) and backward (what transformers' loss does), in its leanest
   form: the caller does not hold the logits during backward (a held model output adds one more
   [T, V] buffer). tokensft: the trainer's path -- gather the targets' hidden rows, target_terms
   (chunk 1024, 512 and 256, the trainer's default) + the nll token loss, backward. Each runs in a
   fresh process after a small warm-up at length 64; peak memory is torch.cuda.max_memory_allocated
   above what is allocated before the loss when CUDA is available, else the process's peak RSS
   (VmHWM, reset right before the loss) minus its RSS right before the loss, with glibc's mmap
   threshold fixed at 64 KB so that freed tensors leave RSS at once. Both include the lm_head
   weight gradient (V x H fp32 = 113 MB). The loss and the gradients (hidden states, lm_head
   weight) of every method are compared with naive's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

# each as `tokensft train --objective ...` takes it; "--mask" adds a stored mask, "--chunk-size N" overrides the chunk
OBJECTIVES = ["nll", "p", "power:10", "dft", "threshold-p:0.2", "threshold-nll:0.2", "profit:0.1", "nll --mask",
              "poft", "qtarget:gamma=0.9,prior=uniform", "qtarget:gamma=p,prior=self", "qtarget:gamma=0.5,prior=teacher",
              "nll --chunk-size 1024"]
WEIGHTED = ["nll", "nll --weight", "nll --mask", "nll --mask --weight", "poft", "poft --weight"]  # part "weight"
VOCAB, TOP_K, TARGET_FRACTION = 49152, 20, 0.6


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0), when allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec from the parent, so a
    child spawned by a large parent would report the parent's peak."""
    peak = _status_mb("VmHWM")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- 1. step time

def small_llama(seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, use_cache=False)
    return LlamaForCausalLM(config).float()


def synthetic_batch(batch_size: int, seq_len: int, seed: int = 0) -> dict:
    """Every key TrainData.collate may produce; `batch_for` keeps the ones an objective reads."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lengths = [seq_len] + torch.randint(3 * seq_len // 4, seq_len + 1, (batch_size - 1,), generator=g).tolist()
    input_ids = torch.zeros((batch_size, seq_len), dtype=torch.long)
    labels = torch.full((batch_size, seq_len), -100, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, seq_len), dtype=torch.long)
    for b, n in enumerate(lengths):
        input_ids[b, :n] = torch.randint(0, VOCAB, (n,), generator=g)
        first = max(1, n - round(TARGET_FRACTION * n))  # the response: the last 60%, never position 0
        labels[b, first:n] = input_ids[b, first:n]
        attention_mask[b, :n] = 1
    target = labels != -100
    mask = ((torch.rand(labels.shape, generator=g) < 0.7) & target).to(torch.int8)
    prior_ids = torch.randint(0, VOCAB, (batch_size, seq_len, TOP_K), generator=g)
    prior_ids[..., 0] = torch.where(target, labels, 0)  # the teacher's top-1 is often the label
    prior_ids[~target] = 0
    prior_lp = torch.log_softmax(2.0 * torch.randn((batch_size, seq_len, TOP_K), generator=g), -1).sort(-1, descending=True).values
    prior_lp[~target] = float("-inf")
    ref_logprob = -torch.empty(batch_size).uniform_(0.5, 3.0, generator=g)
    weight = torch.where(target, torch.empty(labels.shape).uniform_(0.1, 2.0, generator=g), 0.0)  # as collate: 0 off targets
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "mask": mask,
            "prior_ids": prior_ids, "prior_logprobs": prior_lp, "ref_logprob": ref_logprob, "weight": weight}


def batch_for(spec: str, objective, full: dict) -> dict:
    batch = {k: full[k] for k in ("input_ids", "labels", "attention_mask")}
    if "--mask" in spec.split():
        batch["mask"] = full["mask"]
    if "--weight" in spec.split():
        batch["weight"] = full["weight"]
    if objective.prior in ("teacher", "scorer"):
        batch["prior_ids"], batch["prior_logprobs"] = full["prior_ids"], full["prior_logprobs"]
    if objective.name == "poft":
        batch["ref_logprob"] = full["ref_logprob"]
    return batch


def bench_steps(reps: int, batch_size: int, seq_len: int, chunk_size: int, objectives: list[str]) -> dict:
    import torch

    from tokensft.train.loss import Denominator, count_batch, micro_batch_loss
    from tokensft.train.objectives import parse_objective

    model = small_llama()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.01)
    full = synthetic_batch(batch_size, seq_len)
    runs = {}
    for spec in objectives:
        words = spec.split()
        objective = parse_objective(words[0])
        chunk = int(words[words.index("--chunk-size") + 1]) if "--chunk-size" in words else chunk_size
        runs[spec] = (objective, objective.default_normalize, batch_for(spec, objective, full), chunk)
    online = {"threshold", "profit"}  # kept depends on the current p: no static kept count (as in loop.py)

    def step(spec: str) -> float:
        objective, normalize, batch, chunk = runs[spec]
        start = time.perf_counter()
        c = count_batch(batch, objective.sequence_level)
        rescale = objective.name in online and normalize == "kept-targets"  # as loop.py: divide gradients afterwards
        denominator = Denominator(c["targets"], c["sequences"], None if objective.name in online else c["kept"], 1, 1,
                                  rescale, weight_sum=c["weight_sum"])
        loss, stats = micro_batch_loss(model, batch, objective, normalize, denominator, chunk)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{spec}: non-finite loss {loss.item()}")
        loss.backward()
        if rescale:
            kept = torch.as_tensor(stats["kept"], dtype=torch.float32).clamp(min=1.0)
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(kept)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    n_params = sum(p.numel() for p in model.parameters())
    targets = int((full["labels"] != -100).sum())
    print(f"model: Llama hidden 256, 4 layers, vocab {VOCAB:,} (tied), {n_params / 1e6:.1f}M parameters, fp32; "
          f"batch {batch_size} x {seq_len} tokens ({int(full['attention_mask'].sum()):,} real, {targets:,} targets); "
          f"chunk {chunk_size}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for spec in objectives:  # warm-up: allocator, kernels, AdamW state
        step(spec)
    times = {spec: [] for spec in objectives}
    for r in range(reps):
        order = objectives[r % len(objectives):] + objectives[:r % len(objectives)]
        for spec in order:
            times[spec].append(step(spec))
    base, base_min = statistics.median(times[objectives[0]]), min(times[objectives[0]])
    result = {}
    for spec in objectives:
        med, low = statistics.median(times[spec]), min(times[spec])
        result[spec] = {"median_s": med, "ratio": med / base, "min_s": low, "min_ratio": low / base_min}
        print(f"  {spec:<32} median {med:6.3f} s/step  {med / base:5.2f}x nll   (min {low:.3f} s {low / base_min:5.2f}x, "
              f"max {max(times[spec]):.3f} s, n={len(times[spec])})", flush=True)
    return result


def bench_weight(reps: int, batch_size: int, seq_len: int, chunk_size: int) -> dict:
    """Part 1b: each WEIGHTED spec's median step over its unweighted twin's, and collate's cost of the weight."""
    import pyarrow as pa

    from tokensft.train.data import Columns, collate_rows

    steps = bench_steps(reps, batch_size, seq_len, chunk_size, WEIGHTED)
    out = {}
    for spec in WEIGHTED:
        if spec.endswith(" --weight"):
            base = spec.removesuffix(" --weight")
            out[spec] = {"ratio": steps[spec]["median_s"] / steps[base]["median_s"],
                         "min_ratio": steps[spec]["min_s"] / steps[base]["min_s"]}
            print(f"  {spec:<32} / {base:<12} median {out[spec]['ratio']:.3f}x  (mins {out[spec]['min_ratio']:.3f}x)",
                  flush=True)
    full = synthetic_batch(batch_size, seq_len)
    target = full["labels"] != -100
    rows = pa.table({
        "id": [str(b) for b in range(batch_size)],
        "input_ids": pa.array([r[m.bool()].tolist() for r, m in zip(full["input_ids"], full["attention_mask"])],
                              pa.list_(pa.int32())),
        "labels": pa.array([r[m.bool()].tolist() for r, m in zip(full["labels"], full["attention_mask"])], pa.list_(pa.int32())),
        "weight": pa.array([torch_where_nan(w[m.bool()], t[m.bool()]) for w, t, m in
                            zip(full["weight"], target, full["attention_mask"])], pa.list_(pa.float32())),
    })
    times = {"plain": [], "weight": []}
    for r in range(50 * reps):
        for name in (("plain", "weight") if r % 2 else ("weight", "plain")):
            start = time.perf_counter()
            collate_rows(rows, Columns(weight="weight" if name == "weight" else None), 0)
            times[name].append(time.perf_counter() - start)
    extra = statistics.median(times["weight"]) - statistics.median(times["plain"])
    share = extra / steps["nll --weight"]["median_s"]
    print(f"  collate of {batch_size} x {seq_len}: {statistics.median(times['plain']) * 1e3:.2f} ms, with the weight column "
          f"{statistics.median(times['weight']) * 1e3:.2f} ms (+{extra * 1e3:.2f} ms, {share:.2%} of a weighted step)",
          flush=True)
    out["collate_extra_s"] = extra
    return out


def torch_where_nan(weight, target) -> list[float]:
    """A row's stored weight column: the weight at targets, NaN elsewhere."""
    return [w if t else float("nan") for w, t in zip(weight.tolist(), target.tolist())]


# ---------------------------------------------------------------------------------------------- 2. loss memory

class _HeadOnly:
    """What LogitHead reads from a model: the output embeddings and a config (no softcap, no scale)."""

    def __init__(self, lm_head):
        self.lm_head, self.config = lm_head, argparse.Namespace()

    def get_output_embeddings(self):
        return self.lm_head


def memory_child(method: str, seq_len: int, hidden_size: int, grads_out: str) -> None:
    """One method in this fresh process: loss and peak memory as JSON; the gradients (of the hidden
    states, and every 64th row of the lm_head weight's) saved to grads_out for the comparison."""
    import torch
    import torch.nn.functional as F

    from tokensft.core.head import LogitHead
    from tokensft.train.chunked import target_terms
    from tokensft.train.losses import token_loss
    from tokensft.train.objectives import parse_objective

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    nll = parse_objective("nll")

    def inputs(t: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        hidden = torch.randn((1, t, hidden_size), generator=g).to(device).requires_grad_(True)  # (1, T, H)
        labels = torch.full((1, t), -100, dtype=torch.long)
        targets = torch.rand(t, generator=g) < TARGET_FRACTION
        targets[0] = False  # position 0 is never a target
        labels[0, targets] = torch.randint(0, VOCAB, (int(targets.sum()),), generator=g)
        return hidden, labels.to(device)

    def run(hidden, labels, head) -> torch.Tensor:
        if method == "naive":
            # (1, T, V) logits over every position, not kept by Python during backward (a caller that
            # held them, as a model output does, would add one more [T, V] buffer to naive's peak)
            loss = F.cross_entropy(head.proj(hidden).float()[0, :-1], labels[0, 1:], ignore_index=-100)
        else:
            chunk = int(method.split("-")[1])
            rows, cols = torch.nonzero(labels != -100, as_tuple=True)  # (N,), (N,)
            terms = target_terms(hidden[rows, cols - 1], labels[rows, cols], head, chunk)
            loss_t, _ = token_loss(nll, terms)
            loss = loss_t.sum() / len(rows)
        loss.backward()
        return loss.detach()

    torch.manual_seed(0)
    lm_head = torch.nn.Linear(hidden_size, VOCAB, bias=False).to(device)
    head = LogitHead(_HeadOnly(lm_head))
    run(*inputs(64, 1), head)  # warm-up: kernels and thread pools allocate once, outside the measure
    lm_head.weight.grad = None
    hidden, labels = inputs(seq_len, 0)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        loss = run(hidden, labels, head)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        reset_peak_rss()
        before = _status_mb("VmRSS")
        loss = run(hidden, labels, head)
        peak = peak_rss_mb() - before
    torch.save({"hidden": hidden.grad.cpu(), "weight": lm_head.weight.grad[::64].cpu()}, grads_out)
    print(json.dumps({"method": method, "peak_mb": peak, "loss": loss.item(), "device": device.type,
                      "targets": int((labels != -100).sum())}))


def bench_memory(seq_len: int, hidden_size: int, chunks: list[int]) -> dict:
    import torch

    # glibc returns an allocation to the OS at free() only when it was mmap'ed, and its threshold
    # grows up to 32 MB as large blocks are freed: fix it at 64 KB so RSS follows live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    results, grads = {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        for method in ["naive"] + [f"tokensft-{c}" for c in chunks]:
            out = os.path.join(workdir, f"{method}.pt")
            cmd = [sys.executable, __file__, "--memory-child", method, "--mem-seq", str(seq_len),
                   "--mem-hidden", str(hidden_size), "--grads-out", out]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            r = results[method] = json.loads(done.stdout.strip().splitlines()[-1])
            grads[method] = torch.load(out)
            line = f"  {method:<14} peak {r['peak_mb']:7.0f} MB  loss {r['loss']:.7f}"
            if method != "naive":
                n, gn, g = results["naive"], grads["naive"], grads[method]
                r["loss_diff"] = abs(r["loss"] - n["loss"])
                r["grad_diff"] = max(float((g[k] - gn[k]).abs().max() / gn[k].abs().max()) for k in gn)
                line += (f"  |loss - naive| {r['loss_diff']:.1e}, max |grad - naive| / max |naive grad| "
                         f"{r['grad_diff']:.1e}   {r['peak_mb'] / n['peak_mb']:.2f}x naive")
            print(line, flush=True)
    first = results["naive"]
    what = "torch.cuda.max_memory_allocated" if first["device"] == "cuda" else "peak RSS"
    print(f"  ({first['device']}: {what} above the inputs; 1 x {seq_len} tokens, {first['targets']:,} targets, "
          f"hidden {hidden_size}, vocab {VOCAB:,}, fp32)", flush=True)
    return results


# ---------------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="steps: 3 timed rounds on a 2 x 128 batch (a smoke run); memory unchanged")
    parser.add_argument("--reps", type=int, help="timed steps per objective (default 8; --quick: 3)")
    parser.add_argument("--batch-size", type=int, help="sequences per micro-batch (default 4; --quick: 2)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default 256; --quick: 128)")
    parser.add_argument("--chunk-size", type=int, default=256, help="the trainer's --chunk-size for the step timings")
    parser.add_argument("--mem-seq", type=int, default=2048, help="sequence length for the loss memory")
    parser.add_argument("--mem-hidden", type=int, default=576, help="hidden size for the loss memory (SmolLM2: 576)")
    parser.add_argument("--mem-chunks", default="1024,512,256", help="chunk sizes for the tokensft loss memory")
    parser.add_argument("--parts", default="steps,weight,memory", help="comma-separated: steps, weight, memory")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--grads-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child, args.mem_seq, args.mem_hidden, args.grads_out)
    reps = args.reps or (3 if args.quick else 8)
    batch_size = args.batch_size or (2 if args.quick else 4)
    seq_len = args.seq_len or (128 if args.quick else 256)
    parts = set(args.parts.split(","))
    began = time.perf_counter()
    print(f"{os.cpu_count()} CPUs", flush=True)
    steps = weight = memory = None
    if "steps" in parts:
        print(f"\n1. step time per objective vs nll ({reps} timed steps each, round-robin, after 1 warm-up step)", flush=True)
        steps = bench_steps(reps, batch_size, seq_len, args.chunk_size, OBJECTIVES)
    if "weight" in parts:
        print(f"\n1b. step time with --weight vs without ({reps} timed steps each, round-robin, after 1 warm-up step)",
              flush=True)
        weight = bench_weight(reps, batch_size, seq_len, args.chunk_size)
    if "memory" in parts:
        print(f"\n2. peak memory of the loss, 1 x {args.mem_seq} tokens, vocab {VOCAB:,}: naive full-logits "
              "cross-entropy vs tokensft chunked target_terms (each in a fresh process)", flush=True)
        memory = bench_memory(args.mem_seq, args.mem_hidden, [int(c) for c in args.mem_chunks.split(",")])
    print("\nsummary")
    if steps:
        worst = max((s for s in steps if s != "nll"), key=lambda s: steps[s]["ratio"])
        print("  step time / nll, medians (target <= 1.05x):")
        for spec, r in steps.items():
            if spec != "nll":
                print(f"    {spec:<32} {r['ratio']:.2f}x  (mins: {r['min_ratio']:.2f}x)")
        print(f"  slowest: {worst} {steps[worst]['ratio']:.2f}x")
    if weight:
        print("  step time with --weight / without, medians (target <= 1.02x): " + ", ".join(
            f"{spec} {r['ratio']:.3f}x (mins {r['min_ratio']:.3f}x)" for spec, r in weight.items() if spec != "collate_extra_s"))
    if memory:
        naive = memory["naive"]["peak_mb"]
        print(f"  loss peak memory / naive (target <= 0.5x), naive {naive:.0f} MB: " + ", ".join(
            f"{m} {r['peak_mb']:.0f} MB {r['peak_mb'] / naive:.2f}x" for m, r in memory.items() if m != "naive"))
        print("  same loss and gradients as naive: " + ", ".join(
            f"{m} |loss diff| {r['loss_diff']:.1e}, rel. grad diff {r['grad_diff']:.1e}" for m, r in memory.items() if m != "naive"))
    print(f"  total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
