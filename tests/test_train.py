"""`tokensft train` on tiny models: the loss equals transformers' own, chunking changes nothing,
every objective lowers its loss, resume is exact, two processes equal one, errors are one line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_bpe_tokenizer, make_model, run_processes
from safetensors.torch import load_file
from test_enrich import CHATS, enrich_cli, scored
from transformers import AutoModelForCausalLM

from tokensft.cli import main
from tokensft.train import loop
from tokensft.train.data import TrainData
from tokensft.train.loss import Denominator, count_batch, micro_batch_loss
from tokensft.train.objectives import parse_objective

OBJECTIVES = ["nll", "p", "power:0.5", "dft", "threshold-p:0.001", "threshold-nll:0.001", "threshold-nll<=:0.5",
              "profit:0.001", "qtarget:gamma=0.5,prior=teacher", "qtarget:gamma=p,prior=self",
              "qtarget:gamma=0.9,prior=uniform", "qtarget:gamma=threshold:0.002,prior=scorer", "poft"]

SURROGATES = {"dft", "qtarget:gamma=p,prior=self"}  # stop-gradient weights: the gradient is the objective


@pytest.fixture(scope="module")
def enriched(tmp_path_factory, tiny_dirs) -> Path:
    """CHATS scored with top-k, plus a mask, a reference and a teacher (the tiny bpe model, seed 1)."""
    tmp = tmp_path_factory.mktemp("train-data")
    teacher = tmp / "teacher"
    tokenizer = make_bpe_tokenizer()
    make_model(tokenizer, "bpe", seed=1).save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    out = scored(tmp, tiny_dirs["bpe"], "--top-k", "4")
    assert enrich_cli(out, "--mask", "top-frac:0.5", "--ref", str(tiny_dirs["sp"]), "--teacher", str(teacher), "--top-k", "4") == 0
    return out


def batch_of(data: TrainData, n: int | None = None) -> dict:
    return data.collate(data.train_indices[:n], pad_id=0)


def test_nll_equals_transformers_loss_and_chunking_changes_nothing(enriched, tiny_dirs):
    data = TrainData(str(enriched), parse_objective("nll"))
    batch = batch_of(data)
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"]).float()
    c = count_batch(batch)
    denominator = Denominator(c["targets"], c["sequences"], c["kept"], 1)
    grads = []
    for chunk in (1, 7, 100_000):
        model.zero_grad()
        loss, _ = micro_batch_loss(model, batch, parse_objective("nll"), "all-targets", denominator, chunk)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def train_cli(data: Path, out: Path, model: Path, *extra: str) -> int:
    return main(["train", str(data), "--output", str(out), "--model", str(model), "-q", "--seed", "3", *extra])


def losses(out: Path) -> list[float]:
    return [row["loss"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in row]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_lowers_its_loss(enriched, tiny_dirs, tmp_path, objective):
    """One full batch, the same every step (8 examples, batch 8), so the losses are comparable. (power:10
    is left out: on a random tiny model p ~ 0.003, its gradient p^10 vanishes -- the collapse BLL reports
    for model-weak settings; its math is checked in test_objectives.)"""
    extra = ["--mask", "top-frac:0.5"] if objective == "nll" else []
    assert train_cli(enriched, tmp_path / "ckpt", tiny_dirs["bpe"], "--objective", objective, "--max-steps", "6",
                     "--batch-size", str(len(CHATS)), "--lr", "3e-3", "--warmup", "0", *extra) == 0
    seen = losses(tmp_path / "ckpt")
    assert len(seen) == 6
    if objective in SURROGATES:  # -sg(p) log p grows as p rises from 0.003: its value is no progress measure
        mean_p = [row["mean_p"] for row in map(json.loads, (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines())]
        assert mean_p[-1] > 2 * mean_p[0], (objective, mean_p)
    else:
        assert seen[-1] < seen[0], (objective, seen)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")  # a plain Hugging Face checkpoint
    assert model.config.vocab_size == AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"]).config.vocab_size


def test_resume_continues_identically(enriched, tiny_dirs, tmp_path, monkeypatch):
    args = ["--objective", "dft", "--max-steps", "5", "--batch-size", "2", "--grad-accum", "2", "--save-every", "2",
            "--lr", "1e-3"]
    assert train_cli(enriched, tmp_path / "clean", tiny_dirs["bpe"], *args) == 0
    original, calls = loop._metrics, []

    def dies_at_step_4(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(loop, "_metrics", dies_at_step_4)
    assert train_cli(enriched, tmp_path / "killed", tiny_dirs["bpe"], *args) == 130
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == ["step-2"]
    with open(tmp_path / "killed" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a line torn by a kill mid-append
    assert train_cli(enriched, tmp_path / "killed", tiny_dirs["bpe"], *args) == 0
    assert not (tmp_path / "killed" / ".final.tmp").exists()
    a, b = load_file(tmp_path / "clean" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)
    assert losses(tmp_path / "killed") == losses(tmp_path / "clean")


def test_two_processes_equal_one(enriched, tiny_dirs, tmp_path):
    """accelerate launch with 2 CPU processes, batch 2 each, vs 1 process with 2 micro-batches of 2; the objective
    normalizes by a kept count known only after the forward, summed over both processes. 9/8 epochs of the 8
    examples: steps of 4, 4 and 1, so in the last one the second process has no example (it runs a filler)."""
    assert len(CHATS) == 8
    common = ["--objective", "threshold-nll:0.0006", "--epochs", "1.125", "--lr", "1e-3", "--batch-size", "2", "--seed", "3",
              "-q", "--model", str(tiny_dirs["bpe"])]
    assert main(["train", str(enriched), "--output", str(tmp_path / "one"), "--grad-accum", "2", *common]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --multi_gpu selects accelerate's torchrun launcher; without GPUs each process runs on CPU (gloo)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--mixed_precision", "no",
           "--num_machines", "1", "--dynamo_backend", "no", "-m", "tokensft", "train", str(enriched),
           "--output", str(tmp_path / "two"), *common]
    done = run_processes(cmd, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "one")), torch.tensor(losses(tmp_path / "two")), atol=1e-5, rtol=1e-5)
    assert len(losses(tmp_path / "two")) == 3


def test_non_finite_loss_stops_with_step_and_ids(enriched, tiny_dirs, tmp_path, monkeypatch, capsys):
    from tokensft.train import loss as loss_module

    def nan_loss(objective, terms):
        return terms.logprob * float("nan"), torch.ones_like(terms.logprob, dtype=torch.bool)

    monkeypatch.setattr(loss_module, "token_loss", nan_loss)
    assert train_cli(enriched, tmp_path / "ckpt", tiny_dirs["bpe"], "--max-steps", "2") == 2
    err = capsys.readouterr().err
    assert "step 1: non-finite loss" in err and "on examples" in err and err.count("\n") == 1


def test_bad_requests_name_the_fix(enriched, tiny_dirs, tmp_path, capsys):
    cases = [
        (["--model", str(tiny_dirs["sp"])], "tokenizer differs"),
        (["--mask", "prob>=0.5"], "tokensft enrich"),
        (["--objective", "poft", "--ref", "nobody"], "ref_nobody_mean_logprob"),
        (["--objective", "qtarget:prior=nothing"], "prior 'nothing'"),
        (["--objective", "poft", "--normalize", "all-targets"], "per sequence"),
    ]
    for args, message in cases:
        model = [] if "--model" in args else ["--model", str(tiny_dirs["bpe"])]
        assert main(["train", str(enriched), "-o", str(tmp_path / "x"), "-q", *model, *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)


def test_eval_metrics_equal_the_saved_model_on_the_held_out_split(enriched, tiny_dirs, tmp_path):
    out = tmp_path / "ckpt"
    assert train_cli(enriched, out, tiny_dirs["bpe"], "--max-steps", "2", "--eval-fraction", "0.5", "--batch-size", "2",
                     "--lr", "1e-3", "--seed", "0") == 0  # (seed 3 happens to put all 8 examples in eval)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = next(r for r in reversed(rows) if "eval_nll" in r)
    data = TrainData(str(enriched), parse_objective("nll"), eval_fraction=0.5)
    assert len(data.eval_indices) > 0 and len(data.train_indices) > 0
    batch = data.collate(data.eval_indices, pad_id=0)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
    labels = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits, -1).gather(2, labels.clamp(min=0)[..., None])[..., 0][labels != -100]
    assert final["eval_nll"] == pytest.approx(-logp.mean().item(), abs=1e-4)
    assert final["eval_mean_p"] == pytest.approx(logp.exp().mean().item(), abs=1e-5)
