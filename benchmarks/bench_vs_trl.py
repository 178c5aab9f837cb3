"""`tokensft train` against TRL's SFTTrainer: peak memory and step time per sequence length (issue 13).

Full fine-tuning with and without gradient checkpointing and LoRA + checkpointing, each side run by
its real trainer.

    python benchmarks/bench_vs_trl.py [--lengths 512,1024,2048,4096] [--steps 2] [--out results.jsonl]
    python benchmarks/bench_vs_trl.py --layers 2 --hidden 256 --heads 4 --kv-heads 2 --intermediate 512 \
        --lengths 128,256 --steps 1                                  # a smoke run (~2.5 min on 2 cores)

Model: a LlamaForCausalLM from a LlamaConfig with SmolLM2-360M's shape by default (the values of its
config.json: hidden 960, 32 layers, 15 heads / 5 KV heads, MLP 2560, vocab 49,152, tied embeddings,
rope theta 100,000, RMSNorm eps 1e-5, 8,192 positions or the longest --length), random weights, fp32,
saved once with a tokenizer built in-process (benchmarks/_synthetic.py). Data: one sequence of exactly
`length` random ids, the last 60% targets (labels = ids there, -100 before), the same ids on both
sides, batch size 1, gradient accumulation 1: tokensft reads it as a scored dataset written by
preprocess's own shard writer; TRL gets it pre-tokenized as `input_ids` + `labels`, which SFTTrainer
1.16 uses as is (its `_prepare_dataset` only builds labels when there is no `labels` column, and its
truncation to max_length = length and its filter of fully masked rows change nothing). The targets
each side trains per step are recorded (tokensft: the step's counted targets; TRL: the trainer's
num_items_in_batch, i.e. labels[..., 1:] != -100) and must be equal.

A point = (side, variant, length), each in a fresh process:
    tokensft (tokensft.train.loop.train, TrainConfig as `tokensft train` builds it):
        full        no checkpointing (tokensft's default)
        full+ckpt   --gradient-checkpointing
        lora+ckpt   --lora-r 16 --lora-alpha 32 --gradient-checkpointing (default targets: every
                    attention and MLP projection, q/k/v/o/gate/up/down_proj)
    trl (trl.SFTTrainer, SFTConfig(max_length=length, per_device_train_batch_size=1, packing=False,
         report_to="none", save_strategy="no", use_cpu on CPU), model given by its path as TRL loads it):
        defaults    gradient_checkpointing left at SFTConfig's default, which is True in TRL 1.16
                    (trl/trainer/base_config.py; non-reentrant, transformers 5's default)
        no-ckpt     gradient_checkpointing=False
        lora+ckpt   peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0, the same 7 target
                    modules), gradient_checkpointing=True
Both sides: lr 1e-5, AdamW with betas (0.9, 0.95) and weight decay 0.01 (tokensft's defaults, set on
TRL), a cosine schedule without warm-up (the same rate at every step on both sides: tokensft's warm-up
starts at lr / warm-up steps, transformers' at 0), clip 1.0; fp32 on CPU, bf16 autocast on CUDA
(SFTConfig's bf16 default is True even on CPU: set to False there so both run fp32). Each side keeps
its own AdamW implementation, recorded: tokensft.train.optim's (fused on CPU and CUDA since this
benchmark found the single-tensor loop's temporaries on CPU), transformers' default adamw_torch_fused. Same weights, ids and learning rates: each
point's first-step loss, and its last-step loss against its counterpart's, are printed (they agree to
float rounding when both sides train the same tokens the same way).

Measured, per point: 1 warm-up step (AdamW's state is allocated there), then --steps timed steps.
A hook at each step's end -- tokensft.train.loop._metrics wrapped (the loop calls it after the
optimizer step and zero_grad), a TrainerCallback.on_step_end on TRL (called after the optimizer step
and zero_grad) -- reads the clock and memory. Step time: the median interval between consecutive
step ends, i.e. everything the trainer does per step (drawing and collating the batch, forward,
backward, clip, AdamW, logging). Memory (CPU): `base` = VmRSS at the warm-up's end (weights,
AdamW state, caches); `step peak` = max over the timed steps of VmHWM (reset to the current RSS at
each step end) minus base: activations, gradients, the loss and the optimizer's temporaries;
`abs peak` = the process's VmHWM over the whole run (model load, warm-up with its first allocation
of AdamW state, timed steps), what has to fit in RAM. glibc's mmap threshold is fixed at 64 KB so
freed tensors leave RSS at once (see bench_train). CUDA: the same three from torch.cuda
(memory_allocated at the warm-up's end, max_memory_allocated above it, max_memory_allocated over
the run). LoRA + ckpt / full: abs peak over abs peak (the whole footprint, weights included).

Memory limit: each child runs under RLIMIT_AS (CPU only: CUDA maps far more address space than it
uses) of --memory-limit-gb + 4 GB of address space, and the parent kills a child whose RSS passes
--memory-limit-gb; either is reported "OOM", and the variant is not run at longer lengths.
Interleaving: the points of a length run round-robin over sides and variants, tokensft and TRL
alternating, the order rotated per length and per --rounds round, so drift hits both alike.
Printed: a JSON line per point as it ends (and to --out), then per point step peak, abs peak, s/step
and targets (medians over rounds), and tokensft / TRL ratios: ckpt vs ckpt (full+ckpt / defaults),
no-ckpt vs no-ckpt, lora vs lora, defaults vs defaults (tokensft's full, checkpointing off, against
TRL's defaults, on), best full (each side's lower abs peak and faster step of its full variants);
and LoRA + ckpt / full without ckpt per side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_train import _status_mb, peak_rss_mb, reset_peak_rss

# the order alternates sides, pairing each variant with its TRL counterpart
VARIANTS = ["tokensft:full", "trl:no-ckpt", "tokensft:full+ckpt", "trl:defaults", "tokensft:lora+ckpt", "trl:lora+ckpt"]
LORA = {"r": 16, "alpha": 32}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # tokensft's default
AS_HEADROOM_GB = 4  # address space a torch process maps beyond its RSS (thread stacks, arenas, libraries)
COPIES = 8  # rows in the dataset (identical): more than 1 + --steps, so neither side starts a second epoch


# ---------------------------------------------------------------------------------------------- child

class Probe:
    """Clock and memory at each step's end; the first call closes the warm-up step."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        self.ends, self.peaks, self.cuda_peaks, self.targets, self.losses = [], [], [], [], []
        self.base_mb = self.warmup_hwm_mb = self.cuda_base_mb = self.cuda_warmup_max_mb = None

    def step_end(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        if self.base_mb is None:  # the warm-up step ends
            self.warmup_hwm_mb, self.base_mb = peak_rss_mb(), _status_mb("VmRSS")
            if self.cuda:
                self.cuda_warmup_max_mb = torch.cuda.max_memory_allocated() / 2**20
                self.cuda_base_mb = torch.cuda.memory_allocated() / 2**20
        else:
            self.peaks.append(peak_rss_mb() - self.base_mb)
            if self.cuda:
                self.cuda_peaks.append(torch.cuda.max_memory_allocated() / 2**20 - self.cuda_base_mb)
        reset_peak_rss()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.ends.append(time.perf_counter())

    def result(self) -> dict:
        times = [b - a for a, b in zip(self.ends, self.ends[1:])]
        out = {"step_s": statistics.median(times), "step_times_s": times, "base_mb": self.base_mb,
               "step_peak_mb": max(self.peaks), "abs_peak_mb": max(self.warmup_hwm_mb, self.base_mb + max(self.peaks)),
               "vm_peak_mb": _status_mb("VmPeak"), "targets": self.targets, "losses": self.losses}
        if self.cuda:
            out.update(cuda_base_mb=self.cuda_base_mb, cuda_step_peak_mb=max(self.cuda_peaks),
                       cuda_abs_peak_mb=max(self.cuda_warmup_max_mb, self.cuda_base_mb + max(self.cuda_peaks)))
        return out


def run_tokensft(spec: dict, probe: Probe) -> dict:
    from tokensft.train import loop
    from tokensft.train.config import TrainConfig

    metrics = loop._metrics

    def hook(step, total, totals, lr, grad_norm, seconds, counts, **kwargs):
        row = metrics(step, total, totals, lr, grad_norm, seconds, counts, **kwargs)
        probe.targets.append(int(counts[0]))
        probe.losses.append(float(totals["loss"]))
        probe.step_end()
        return row

    loop._metrics = hook
    variant = spec["variant"]
    config = TrainConfig(data=spec["data"], output=str(Path(spec["workdir"]) / "out"), model=spec["model"],
                         learning_rate=1e-5, warmup=0.0, max_steps=1 + spec["steps"], batch_size=1, grad_accum=1,
                         gradient_checkpointing=variant.endswith("ckpt"), quiet=True,
                         **({"lora_r": LORA["r"], "lora_alpha": LORA["alpha"]} if variant.startswith("lora") else {}))
    summary = loop.train(config)
    return {"optimizer": summary["optimizer"]}


def run_trl(spec: dict, probe: Probe) -> dict:
    import datasets
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    row = datasets.load_from_disk(spec["data"])[0]  # the very ids and labels tokensft trains on
    data = datasets.Dataset.from_dict({"input_ids": [row["input_ids"]] * COPIES, "labels": [row["labels"]] * COPIES})
    variant, cuda = spec["variant"], torch.cuda.is_available()
    ckpt = {"defaults": {}, "no-ckpt": {"gradient_checkpointing": False},
            "lora+ckpt": {"gradient_checkpointing": True}}[variant]
    peft_config = None
    if variant == "lora+ckpt":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules=LORA_TARGETS,
                                 bias="none", task_type="CAUSAL_LM")
    args = SFTConfig(output_dir=str(Path(spec["workdir"]) / "trl"), max_length=spec["length"], packing=False,
                     per_device_train_batch_size=1, gradient_accumulation_steps=1, max_steps=1 + spec["steps"],
                     learning_rate=1e-5, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.01, max_grad_norm=1.0,
                     lr_scheduler_type="cosine", warmup_steps=0, seed=0, report_to="none", save_strategy="no",
                     use_cpu=not cuda, bf16=cuda, disable_tqdm=True, **ckpt)

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            probe.step_end()

    trainer = SFTTrainer(model=spec["model"], args=args, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(spec["model"]), peft_config=peft_config,
                         callbacks=[StepEnd()])
    compute_loss = trainer.compute_loss

    def counting(model, inputs, return_outputs=False, num_items_in_batch=None):
        n = num_items_in_batch if num_items_in_batch is not None else (inputs["labels"][..., 1:] != -100).sum()
        probe.targets.append(n.detach() if torch.is_tensor(n) else n)  # read after the run: no sync in the step
        loss = compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        probe.losses.append((loss[0] if return_outputs else loss).detach())
        return loss

    trainer.compute_loss = counting
    trainer.train()
    probe.targets, probe.losses = [int(n) for n in probe.targets], [float(x) for x in probe.losses]
    return {"optimizer": getattr(args.optim, "value", str(args.optim)),
            "checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False))}


def child(spec: dict) -> None:
    """One point in this fresh process: a JSON line with its status and measures."""
    import torch

    if not torch.cuda.is_available():
        import resource

        limit = int((spec["memory_limit_gb"] + AS_HEADROOM_GB) * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    probe = Probe()
    record = {k: spec[k] for k in ("side", "variant", "length")}
    began = time.perf_counter()
    try:
        extra = (run_tokensft if spec["side"] == "tokensft" else run_trl)(spec, probe)
    except (torch.OutOfMemoryError, MemoryError) as exc:
        record.update(status="OOM", error=str(exc).splitlines()[0][:200])
    except RuntimeError as exc:
        if "alloc" not in str(exc).lower() and "memory" not in str(exc).lower():
            raise
        record.update(status="OOM", error=str(exc).splitlines()[0][:200])
    else:
        record.update(status="ok", **probe.result(), **extra, device="cuda" if probe.cuda else "cpu",
                      threads=torch.get_num_threads())
    record["wall_s"] = time.perf_counter() - began
    print("RESULT " + json.dumps(record), flush=True)


# ---------------------------------------------------------------------------------------------- parent

def run_point(spec: dict, env: dict, limit_mb: float, timeout_s: float) -> dict:
    """The child for one point, killed (status OOM) once its RSS passes limit_mb."""
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    killed, top = [], [0.0]

    def watch() -> None:
        status = f"/proc/{proc.pid}/status"
        while proc.poll() is None:
            try:
                with open(status) as f:
                    rss = next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:")), 0.0)
            except OSError:
                return
            top[0] = max(top[0], rss)
            if rss > limit_mb or time.perf_counter() - began > timeout_s:
                killed.append("OOM" if rss > limit_mb else "timeout")
                proc.kill()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    watcher.join()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    base = {k: spec[k] for k in ("side", "variant", "length")}
    if killed:
        return {**base, "status": killed[0], "error": f"killed by the parent at RSS {top[0]:.0f} MB",
                "wall_s": time.perf_counter() - began}
    if lines:
        return json.loads(lines[-1].removeprefix("RESULT "))
    oom = any(s in err for s in ("out of memory", "can't allocate", "Cannot allocate memory", "MemoryError"))
    return {**base, "status": "OOM" if oom else "error", "error": err.strip().splitlines()[-1][:300] if err.strip() else
            f"exit {proc.returncode}", "stderr_tail": err[-3000:], "wall_s": time.perf_counter() - began}


def prepare(args, root: Path, lengths: list[int]) -> tuple[Path, dict[int, Path]]:
    from _synthetic import save_llama, sequence, tiny_tokenizer, write_scored

    tokenizer = tiny_tokenizer()
    model = save_llama(root / "model", tokenizer, args.layers, args.hidden, args.heads, args.kv_heads,
                       args.intermediate, args.vocab, max(max(lengths), 8192))
    data = {t: write_scored(root / f"data-{t}", tokenizer, *sequence(t, args.vocab), COPIES, args.vocab) for t in lengths}
    return model, data


def summarize(results: list[dict], lengths: list[int], variants: list[str]) -> None:
    ok = [r for r in results if r["status"] == "ok"]
    cuda = bool(ok) and ok[0]["device"] == "cuda"
    step_key, abs_key = ("cuda_step_peak_mb", "cuda_abs_peak_mb") if cuda else ("step_peak_mb", "abs_peak_mb")
    cell = {}
    for t in lengths:
        for v in variants:
            side, variant = v.split(":")
            rows = [r for r in results if (r["side"], r["variant"], r["length"]) == (side, variant, t)]
            good = [r for r in rows if r["status"] == "ok"]
            if good:  # medians over rounds
                cell[v, t] = {"step": statistics.median(r[step_key] for r in good),
                              "abs": statistics.median(r[abs_key] for r in good),
                              "s": statistics.median(r["step_s"] for r in good), "targets": good[0]["targets"][0],
                              "last_loss": good[0]["losses"][-1]}
            elif rows:
                cell[v, t] = rows[0]["status"]
    what = "torch.cuda allocated" if cuda else "RSS"
    print(f"\nper point ({what}; step peak: above the memory after the warm-up step; abs peak: the whole process)")
    print(f"  {'T':>5}  {'side:variant':<20} {'step peak MB':>12} {'abs peak MB':>12} {'s/step':>8} {'targets':>8}")
    for t in lengths:
        for v in variants:
            c = cell.get((v, t))
            if isinstance(c, dict):
                print(f"  {t:>5}  {v:<20} {c['step']:>12.0f} {c['abs']:>12.0f} {c['s']:>8.2f} {c['targets']:>8}")
            elif c:
                print(f"  {t:>5}  {v:<20} {c:>12}")
    pairs = [("ckpt vs ckpt", "tokensft:full+ckpt", "trl:defaults"), ("no-ckpt vs no-ckpt", "tokensft:full", "trl:no-ckpt"),
             ("lora vs lora", "tokensft:lora+ckpt", "trl:lora+ckpt"), ("defaults vs defaults", "tokensft:full", "trl:defaults")]
    print("\ntokensft / TRL (targets <= 1.00x), each cell: step peak, abs peak, step time; best full: tokensft's lower "
          "abs peak and faster step of full / full+ckpt over TRL's defaults")
    print(f"  {'T':>5}  " + "  ".join(f"{name:<22}" for name, _, _ in pairs) + "  best full vs TRL defaults")
    for t in lengths:
        parts = []
        for _, a, b in pairs:
            ca, cb = cell.get((a, t)), cell.get((b, t))
            if isinstance(ca, dict) and isinstance(cb, dict):
                parts.append(f"{ca['step'] / cb['step']:.2f} {ca['abs'] / cb['abs']:.2f} {ca['s'] / cb['s']:.2f}".ljust(22))
            else:
                parts.append(f"{ca if isinstance(ca, str) else '-'} / {cb if isinstance(cb, str) else '-'}".ljust(22))
        full = [cell[v, t] for v in ("tokensft:full", "tokensft:full+ckpt") if isinstance(cell.get((v, t)), dict)]
        trl = cell.get(("trl:defaults", t))
        best = (f"mem {min(c['abs'] for c in full) / trl['abs']:.2f}x, time {min(c['s'] for c in full) / trl['s']:.2f}x"
                if full and isinstance(trl, dict) else "-")
        print(f"  {t:>5}  " + "  ".join(parts) + "  " + best)
    print("\nLoRA + ckpt / full fine-tuning without ckpt, abs peak (target <= 0.5x at 2,048 tokens)")
    for t in lengths:
        parts = []
        for side, full in (("tokensft", "tokensft:full"), ("trl", "trl:no-ckpt")):
            lo, fu = cell.get((f"{side}:lora+ckpt", t)), cell.get((full, t))
            if isinstance(lo, dict) and isinstance(fu, dict):
                parts.append(f"{side} {lo['abs'] / fu['abs']:.2f}x ({lo['abs']:.0f} / {fu['abs']:.0f} MB)")
            elif isinstance(lo, dict) and fu:
                parts.append(f"{side} full {fu}: lora+ckpt {lo['abs']:.0f} MB")
        print(f"  {t:>5}  " + ", ".join(parts or ["-"]))
    mismatch = [t for t in lengths if len({c["targets"] for v in variants if isinstance(c := cell.get((v, t)), dict)}) > 1]
    print("targets per step: " + ("equal on every point that ran" if not mismatch else f"DIFFER at T={mismatch}"))
    # the same weights and ids (and LoRA's B = 0) give every variant the same first loss, up to float rounding
    for t in lengths:
        first = {f"{r['side']}:{r['variant']}": r["losses"][0] for r in ok if r["length"] == t and r.get("losses")}
        last = [f"{name} {cell[a, t]['last_loss'] - cell[b, t]['last_loss']:+.1e}" for name, a, b in pairs[:3]
                if isinstance(cell.get((a, t)), dict) and isinstance(cell.get((b, t)), dict)]
        if first:
            print(f"  T={t}: first-step loss {min(first.values()):.6f} .. {max(first.values()):.6f} over {len(first)} "
                  f"variants (spread {max(first.values()) - min(first.values()):.1e})"
                  + ("; last-step loss tokensft - TRL: " + ", ".join(last) if last else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=960)
    p.add_argument("--heads", type=int, default=15)
    p.add_argument("--kv-heads", type=int, default=5)
    p.add_argument("--intermediate", type=int, default=2560)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--lengths", default="512,1024,2048,4096")
    p.add_argument("--steps", type=int, default=2, help="timed steps per point, after 1 warm-up step")
    p.add_argument("--rounds", type=int, default=1, help="times every point runs (medians over rounds)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma list of side:variant, of " + ", ".join(VARIANTS))
    p.add_argument("--memory-limit-gb", type=float, default=18.0, help="a child past this RSS is killed: OOM")
    p.add_argument("--point-timeout-min", type=float, default=120.0, help="a child running longer is killed: timeout")
    p.add_argument("--out", help="also write the raw results here as JSON lines")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))
    lengths = [int(t) for t in args.lengths.split(",")]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or args.steps < 1:
        p.error(f"--variants: unknown {unknown}; use {', '.join(VARIANTS)}" if unknown else "--steps must be >= 1")
    began = time.perf_counter()
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                                            os.environ.get("PYTHONPATH", "")])}
    results = []
    with (tempfile.TemporaryDirectory(prefix="bench_vs_trl-") as tmp,
          open(args.out, "w", encoding="utf-8") if args.out else contextlib.nullcontext() as out):
        root = Path(tmp)
        env["TOKENSFT_CACHE"] = str(root / "cache")  # the weights' hash cache, shared by the children
        model, data = prepare(args, root, lengths)
        print(f"model: Llama hidden {args.hidden}, {args.layers} layers, {args.heads}/{args.kv_heads} heads, MLP "
              f"{args.intermediate}, vocab {args.vocab:,} (tied), random fp32; lengths {lengths}, 1 warm-up + "
              f"{args.steps} timed steps, {args.rounds} round(s); {os.cpu_count()} CPUs; prepared in "
              f"{time.perf_counter() - began:.0f} s", flush=True)
        failed: dict[str, int] = {}  # variant -> the shortest length at which it ran out of memory
        for r in range(args.rounds):
            for i, t in enumerate(lengths):
                k = (r + i) % len(variants)
                for v in variants[k:] + variants[:k]:
                    side, variant = v.split(":")
                    if t >= failed.get(v, 1 << 62):
                        rec = {"side": side, "variant": variant, "length": t, "status": "OOM",
                               "error": f"skipped: OOM at {failed[v]} tokens"}
                    else:
                        spec = {"side": side, "variant": variant, "length": t, "steps": args.steps, "model": str(model),
                                "data": str(data[t]), "workdir": str(root / f"run-{r}-{t}-{side}-{variant}"),
                                "memory_limit_gb": args.memory_limit_gb}
                        rec = run_point(spec, env, args.memory_limit_gb * 1024, args.point_timeout_min * 60)
                        shutil.rmtree(spec["workdir"], ignore_errors=True)  # a full fine-tuning's output: 1.4 GB
                        if rec["status"] == "OOM":
                            failed[v] = min(t, failed.get(v, t))
                    rec["round"] = r
                    results.append(rec)
                    print(json.dumps(rec), flush=True)
                    if out:
                        out.write(json.dumps(rec) + "\n")
                        out.flush()
    summarize(results, lengths, variants)
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
