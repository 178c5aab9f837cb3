"""`tokensft train` settings: an online kept count normalizes exactly however the step is split, the
epoch budget, the logged lr, --clip 0, resume refusing other settings, a diverged run keeping its
last checkpoint, the model's context, and flags that would fail or be ignored refused up front."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_bpe_tokenizer, make_model, run_processes
from test_train import enriched, losses, train_cli  # noqa: F401  (scored with top-k, a mask, a reference and a teacher)
from transformers import AutoModelForCausalLM

from tokensft.cli import main
from tokensft.train.data import TrainData
from tokensft.train.objectives import parse_objective

THRESHOLD = 0.0006  # about the median target p of the tiny model: roughly half the targets kept


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def naive_threshold_loss(data_dir: Path, model_dir: Path, q: float) -> float:
    """-log p over every target of the whole train split with p >= q, divided by how many: from full logits."""
    data = TrainData(str(data_dir), parse_objective("nll"))
    batch = data.collate(data.train_indices, pad_id=0)
    model = AutoModelForCausalLM.from_pretrained(model_dir).double()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits, -1).gather(2, labels.clamp(min=0)[..., None])[..., 0][labels != -100]
    kept = logp.exp() >= q
    return float(-logp[kept].sum() / kept.sum())


def test_online_kept_count_is_exact_however_the_step_is_split(enriched, tiny_dirs, tmp_path):  # noqa: F811
    """threshold-nll (kept-targets, a count known only after the forward): one step over all 8 examples
    as 1 x 8, 4 x 2 and 2 x 4 micro-batches gives the same loss and gradient norm, and the loss is the
    naive one over the whole batch."""
    n = len(TrainData(str(enriched), parse_objective("nll")).train_indices)
    runs = {}
    for batch, accum in ((n, 1), (n // 2, 2), (n // 4, 4)):
        out = tmp_path / f"b{batch}"
        assert train_cli(enriched, out, tiny_dirs["bpe"], "--objective", f"threshold-nll:{THRESHOLD}", "--max-steps", "1",
                         "--batch-size", str(batch), "--grad-accum", str(accum), "--lr", "1e-3") == 0
        runs[batch] = metrics(out)[0]
    first = runs[n]
    assert 0.2 < first["kept_fraction"] < 0.8  # the threshold splits the targets
    assert first["loss"] == pytest.approx(naive_threshold_loss(enriched, tiny_dirs["bpe"], THRESHOLD), rel=1e-5)
    for row in runs.values():
        assert row["loss"] == pytest.approx(first["loss"], rel=1e-5)
        assert row["grad_norm"] == pytest.approx(first["grad_norm"], rel=1e-4)


def test_one_epoch_takes_each_example_once(enriched):  # noqa: F811
    data = TrainData(str(enriched), parse_objective("nll"))
    n = len(data.train_indices)
    budget, batch = n, 3
    steps = [data.step_indices(s, batch, seed=0, budget=budget) for s in range(math.ceil(budget / batch))]
    assert [len(s) for s in steps] == [3] * (n // 3) + ([n % 3] if n % 3 else [])
    assert sorted(np.concatenate(steps).tolist()) == sorted(data.train_indices.tolist())
    two = np.concatenate([data.step_indices(s, batch, 0, 2 * n) for s in range(math.ceil(2 * n / batch))])
    assert np.bincount(two, minlength=n).tolist() == [2] * n  # two epochs: each twice


def test_logged_lr_is_the_rate_used_and_clip_zero_still_trains(enriched, tiny_dirs, tmp_path):  # noqa: F811
    out = tmp_path / "ckpt"
    assert train_cli(enriched, out, tiny_dirs["bpe"], "--max-steps", "4", "--warmup", "0", "--lr", "1e-2", "--clip", "0",
                     "--batch-size", "8") == 0
    rows = metrics(out)
    lrs = [r["lr"] for r in rows]
    assert lrs == pytest.approx([1e-2 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)])  # cosine, from 1e-2
    assert rows[-1]["loss"] < rows[0]["loss"] and all(r["grad_norm"] > 0 for r in rows)


def test_resume_refuses_other_settings_and_overwrite_starts_over(enriched, tiny_dirs, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "ckpt"
    args = ["--max-steps", "4", "--save-every", "2", "--batch-size", "2", "--lr", "1e-3"]
    assert train_cli(enriched, out, tiny_dirs["bpe"], *args) == 0
    capsys.readouterr()
    assert train_cli(enriched, out, tiny_dirs["bpe"], *args, "--objective", "p") == 2
    err = capsys.readouterr().err
    assert "other settings (objective: 'nll' there, 'p' now)" in err and "--overwrite" in err and err.count("\n") == 1
    assert train_cli(enriched, out, tiny_dirs["bpe"], *args[:-2], "--lr", "1e-2") == 2  # the schedule, too
    assert train_cli(enriched, out, tiny_dirs["bpe"], *args, "--objective", "p", "--overwrite") == 0
    assert len(metrics(out)) == 4 and json.loads((out / "train_config.json").read_text())["objective"] == "p"
    assert train_cli(enriched, out, tiny_dirs["bpe"], *args, "--objective", "p") == 0  # same flags: resumes


def test_a_diverged_run_keeps_its_last_checkpoint(enriched, tiny_dirs, tmp_path, monkeypatch, capsys):  # noqa: F811
    from tokensft.train import loss as loss_module

    original, calls = loss_module.token_loss, []

    def nan_from_step_3(objective, terms):  # batch 8 over 8 examples: one micro-batch per step
        calls.append(1)
        loss, kept = original(objective, terms)
        return (loss * float("nan") if len(calls) >= 3 else loss), kept

    monkeypatch.setattr(loss_module, "token_loss", nan_from_step_3)
    out = tmp_path / "ckpt"
    assert train_cli(enriched, out, tiny_dirs["bpe"], "--max-steps", "4", "--save-every", "1", "--batch-size", "8") == 2
    assert "step 3: non-finite loss" in capsys.readouterr().err
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved == ["step-1", "step-2"]
    weights = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-2").state_dict()
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_examples_longer_than_the_context_are_refused(enriched, tmp_path, capsys):  # noqa: F811
    tokenizer = make_bpe_tokenizer()
    model = make_model(tokenizer, "bpe")
    model.config.max_position_embeddings = 8
    short = tmp_path / "short-context"
    model.save_pretrained(short)
    tokenizer.save_pretrained(short)
    assert main(["train", str(enriched), "-o", str(tmp_path / "x"), "-q", "--model", str(short)]) == 2
    err = capsys.readouterr().err
    assert "more than --model" in err and "context of 8" in err and "--max-length 8" in err and err.count("\n") == 1


@pytest.mark.parametrize("args,message", [
    (["--clip", "-1"], "--clip"), (["--keep-checkpoints", "0"], "--keep-checkpoints"), (["--epochs", "inf"], "--epochs"),
    (["--lr", "nan"], "--learning-rate"), (["--eval-every", "2"], "--eval-fraction"), (["--save-every", "-1"], "--save-every"),
    (["--ref", "x"], "poft only"), (["--skip-invalid"], "poft only"), (["--objective", "poft", "--mask", "top-frac:0.5"], "--mask"),
    (["--dtype", "float16"], "needs CUDA"), (["--objective", "power:abc"], "power:abc"),
])
def test_flags_that_would_fail_or_be_ignored_are_refused(enriched, tiny_dirs, tmp_path, capsys, args, message):  # noqa: F811
    if args == ["--dtype", "float16"] and torch.cuda.is_available():
        pytest.skip("float16 is allowed on CUDA")
    assert train_cli(enriched, tmp_path / "x", tiny_dirs["bpe"], *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()  # refused before anything is written


def naive_sequence_means(batch: dict, model) -> torch.Tensor:
    """(S,) mean target log-prob of each sequence, from full float64 logits."""
    with torch.no_grad():
        logits = model.double()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    model.float()
    labels = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits, -1).gather(2, labels.clamp(min=0)[..., None])[..., 0]
    target = labels != -100
    return (logp * target).sum(1) / target.sum(1)


@pytest.mark.parametrize("objective,normalize", [("nll", "sequences"), ("poft:beta=2,gamma=0.3", "sequences")])
def test_sequence_normalizations_equal_their_definitions_across_micro_batches(enriched, tiny_dirs, objective, normalize):  # noqa: F811
    """Split 3 + 5, with the step's counts: the summed micro-batch losses equal the naive per-sequence formula."""
    from tokensft.train.loss import Denominator, count_batch, micro_batch_loss

    obj = parse_objective(objective)
    data = TrainData(str(enriched), obj)
    rows = data.train_indices
    parts = [data.collate(rows[:3], 0), data.collate(rows[3:], 0)]
    counts = [count_batch(b) for b in parts]
    denominator = Denominator(sum(c["targets"] for c in counts), sum(c["sequences"] for c in counts), None, 2)
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"]).float()
    with torch.no_grad():
        got = sum(micro_batch_loss(model, b, obj, normalize, denominator)[0] for b in parts)
    s = naive_sequence_means(data.collate(rows, 0), model)
    if obj.name == "poft":
        ref = data.collate(rows, 0)["ref_logprob"].double()
        expected = -torch.nn.functional.logsigmoid(2.0 * (s - ref) + 0.3).mean()
    else:
        expected = -s.mean()
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_config_file_then_flags_and_train_config_json_reads_back(enriched, tiny_dirs, tmp_path, capsys):  # noqa: F811
    """Defaults < --config (JSON or YAML) < flags; OUTPUT/train_config.json passed back as --config is the same run."""
    settings = tmp_path / "run.yaml"
    settings.write_text("objective: p\nmax_steps: 2\nlearning_rate: 0.001\nbatch_size: 8\nbeta2: 0.99\n")
    out = tmp_path / "ckpt"
    assert train_cli(enriched, out, tiny_dirs["bpe"], "--config", str(settings), "--max-steps", "3") == 0
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["objective"], saved["max_steps"], saved["learning_rate"], saved["batch_size"], saved["beta2"]) == \
        ("p", 3, 0.001, 8, 0.99)  # the flag beat the file's max_steps; beta2 has no flag
    assert len(metrics(out)) == 3
    again = tmp_path / "again.json"
    again.write_text((out / "train_config.json").read_text())
    assert train_cli(enriched, out, tiny_dirs["bpe"], "--config", str(again)) == 0  # same identity: nothing to redo
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    for text, message in [('{"lr": 1}', "unknown setting 'lr'"), ('{"batch_size": "8"}', "'batch_size' is '8'; it takes an integer"),
                          ('{"epochs": true}', "'epochs' is True"), ("[1, 2]", "expected a mapping"), ("{", "not valid JSON")]:
        bad.write_text(text)
        assert train_cli(enriched, tmp_path / "x", tiny_dirs["bpe"], "--config", str(bad)) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_two_processes_evaluate_as_one(enriched, tiny_dirs, tmp_path):  # noqa: F811
    """The held-out metrics of an online-threshold objective under 2 processes equal 1 process's (the eval split
    is uneven across processes, so one of them runs a filler micro-batch)."""
    import os
    import sys

    common = ["--objective", f"threshold-nll:{THRESHOLD}", "--max-steps", "1", "--eval-fraction", "0.5", "--batch-size", "1",
              "--lr", "1e-3", "-q", "--model", str(tiny_dirs["bpe"])]
    assert main(["train", str(enriched), "--output", str(tmp_path / "one"), "--grad-accum", "2", *common]) == 0
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--mixed_precision", "no",
           "--num_machines", "1", "--dynamo_backend", "no", "-m", "tokensft", "train", str(enriched),
           "--output", str(tmp_path / "two"), *common]
    done = run_processes(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = metrics(tmp_path / "one")[-1], metrics(tmp_path / "two")[-1]
    assert len(TrainData(str(enriched), parse_objective("nll"), eval_fraction=0.5).eval_indices) % 2 == 1
    for key in ("eval_loss", "eval_nll", "eval_mean_p"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
