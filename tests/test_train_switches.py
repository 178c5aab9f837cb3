"""`tokensft train`'s memory and speed switches against the unswitched run: --gradient-checkpointing
(the same loss and gradients, the layers really recomputed, exact resume), the AdamW implementation
(CPU: bit-identical to torch's default), the start-up memory budget (a hand computation),
--batching grouped (the same step, less padding) and --report-to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import enriched, losses, train_cli  # noqa: F401  (scored with top-k, a mask, a reference and a teacher)
from test_train_settings import metrics
from transformers import AutoModelForCausalLM

from tokensft.cli import main
from tokensft.train import loop
from tokensft.train.data import TrainData
from tokensft.train.loss import micro_batch_loss
from tokensft.train.memory import ACTIVATION_FACTOR, enable_checkpointing, memory_budget, model_budget
from tokensft.train.objectives import parse_objective
from tokensft.train.optim import adamw, implementation
from tokensft.train.step import denominator, micro_batches, step_counts


def loss_and_grads(model_dir: Path, data_dir: Path, checkpointing: bool) -> tuple[torch.Tensor, list, int]:
    """micro_batch_loss (nll) over the whole train split, backward; the loss, the gradients, and how many
    times the first decoder layer ran forward (2 when it is recomputed in backward)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).float()
    model.config.use_cache = False
    if checkpointing:
        enable_checkpointing(model)
    model.train()
    calls, mlp = [], model.get_decoder().layers[0].mlp  # (module hooks do not run in the recompute: count calls)
    forward = mlp.forward
    mlp.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    data = TrainData(str(data_dir), parse_objective("nll"))
    batches = micro_batches(data, data.train_indices, 0, 1, len(data.train_indices), 0)
    d = denominator(step_counts(batches).tolist(), False, 1, 1, False)
    loss, _ = micro_batch_loss(model, batches[0], parse_objective("nll"), "all-targets", d)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()], len(calls)


def test_gradient_checkpointing_recomputes_the_layers_and_changes_no_number(enriched, tiny_dirs):  # noqa: F811
    plain_loss, plain_grads, plain_calls = loss_and_grads(tiny_dirs["bpe"], enriched, False)
    loss, grads, calls = loss_and_grads(tiny_dirs["bpe"], enriched, True)
    assert (plain_calls, calls) == (1, 2)  # our decoder call path does checkpoint
    torch.testing.assert_close(loss, plain_loss, atol=0, rtol=0)
    for a, b in zip(grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_trains_like_without_and_resumes_exactly(enriched, tiny_dirs, tmp_path, monkeypatch):  # noqa: F811
    args = ["--objective", "dft", "--max-steps", "4", "--batch-size", "2", "--grad-accum", "2", "--save-every", "2",
            "--lr", "1e-3"]
    assert train_cli(enriched, tmp_path / "plain", tiny_dirs["bpe"], *args) == 0
    assert train_cli(enriched, tmp_path / "clean", tiny_dirs["bpe"], *args, "--gradient-checkpointing") == 0
    original, calls = loop._metrics, []

    def dies_at_step_3(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(loop, "_metrics", dies_at_step_3)
    assert train_cli(enriched, tmp_path / "killed", tiny_dirs["bpe"], *args, "--gradient-checkpointing") == 130
    monkeypatch.undo()
    assert train_cli(enriched, tmp_path / "killed", tiny_dirs["bpe"], *args, "--gradient-checkpointing") == 0
    clean, killed, plain = (load_file(tmp_path / n / "model.safetensors") for n in ("clean", "killed", "plain"))
    for name in clean:
        torch.testing.assert_close(killed[name], clean[name], atol=0, rtol=0)
        torch.testing.assert_close(clean[name], plain[name], atol=1e-5, rtol=1e-4)
    assert losses(tmp_path / "killed") == losses(tmp_path / "clean")
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "clean")), torch.tensor(losses(tmp_path / "plain")))


def test_adamw_is_fused_where_torch_has_the_kernels_and_equals_the_plain_loop():
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    assert implementation(params, "cuda") == "fused"  # the choice only: no GPU needed
    assert implementation(params, "cuda:1") == "fused"
    assert implementation([torch.zeros(2, dtype=torch.long)], "cuda") == "foreach"
    assert implementation(params, "cpu") == "fused"  # torch >= 2.4 has fused AdamW on CPU
    assert implementation([torch.zeros(2, dtype=torch.long)], "cpu") == "single-tensor"  # no foreach kernels on CPU
    runs = []
    for build in ("tokensft", "torch's single-tensor loop"):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(64, 16)), torch.nn.Parameter(torch.randn(16))]
        kwargs = {"lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": 0.01}
        opt = adamw(ps, "cpu", **kwargs)[0] if build == "tokensft" else torch.optim.AdamW(ps, foreach=False, **kwargs)
        assert bool(opt.defaults.get("fused")) == (build == "tokensft")
        for _ in range(5):
            loss = sum((p ** 3).sum() for p in ps)
            loss.backward()
            opt.step()
            opt.zero_grad()
        runs.append([p.detach().clone() for p in ps])
    torch.manual_seed(0)
    start = [torch.randn(64, 16), torch.randn(16)]  # what both began from
    assert all(float((a - b).abs().max()) > 1e-3 for a, b in zip(runs[0], start))  # five steps moved them
    for a, b in zip(*runs):  # float rounding apart
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_run_records_its_optimizer_and_prints_its_memory_budget(enriched, tiny_dirs, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "ckpt"
    assert main(["train", str(enriched), "-o", str(out), "--model", str(tiny_dirs["bpe"]), "--max-steps", "1"]) == 0
    assert json.loads((out / "tokensft_train.json").read_text())["optimizer"] == "adamw (fused)"
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("memory per process"))
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"])
    longest = TrainData(str(enriched), parse_objective("nll")).longest()
    assert line == model_budget(model, 4, longest, 4, False)[1]
    assert f"4 x {longest:,} tokens" in line and "gradient checkpointing off" in line


def test_memory_budget_is_the_hand_computation():
    # Qwen2.5-1.5B's shape: 1.54e9 parameters, 28 layers, hidden 1536; 4 x 4096 tokens in bf16
    b = memory_budget(1_543_714_304, 1_543_714_304, 28, 1536, 4 * 4096, 2, checkpointing=False)
    assert b.parameters == 1_543_714_304 * 4 and b.gradients == 1_543_714_304 * 4
    assert b.optimizer == 1_543_714_304 * 8  # exp_avg + exp_avg_sq, fp32
    assert b.activations == 28 * 4 * 4096 * 1536 * 2 * 17  # 23.96 GB
    assert ACTIVATION_FACTOR == 17
    ckpt = memory_budget(1_543_714_304, 1_543_714_304, 28, 1536, 4 * 4096, 2, checkpointing=True)
    assert ckpt.activations == 28 * 4 * 4096 * 1536 * 2 + 17 * 4 * 4096 * 1536 * 2  # layer inputs + one layer: 2.26 GB
    lora = memory_budget(1_000, 10, 2, 8, 16, 4, checkpointing=False)
    assert (lora.parameters, lora.gradients, lora.optimizer) == (4_000, 40, 80)  # only the trainable ones train
    assert lora.total == 4_000 + 40 + 80 + 2 * 16 * 8 * 4 * 17
    bf16_base = memory_budget(1_000, 10, 2, 8, 16, 4, checkpointing=False, parameter_bytes=990 * 2 + 10 * 4)
    assert bf16_base.parameters == 2_020 and bf16_base.optimizer == 80


def padding_fraction(batches: list[dict]) -> float:
    """Padded positions over all positions of these micro-batches."""
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return 1 - real / sum(b["attention_mask"].numel() for b in batches)


def test_grouped_batching_pads_less_with_the_same_examples(enriched):  # noqa: F811
    data = TrainData(str(enriched), parse_objective("nll"))
    assert len(set(data.lengths(data.train_indices).tolist())) > 2  # lengths vary
    drawn = data.step_indices(0, 8, seed=3)
    for world in (1, 2):
        padded = [b for r in range(world) for b in micro_batches(data, drawn, r, world, 2, 0)]
        grouped = [b for r in range(world) for b in micro_batches(data, drawn, r, world, 2, 0, "grouped")]
        assert sorted(i for b in grouped for i in b["ids"]) == sorted(i for b in padded for i in b["ids"])
        assert step_counts(grouped).tolist() == step_counts(padded).tolist()  # the same global denominator
        assert padding_fraction(grouped) < padding_fraction(padded), world
    lengths = [len(b["ids"]) and int(b["attention_mask"].sum(1).max()) for b in
               micro_batches(data, drawn, 0, 1, 2, 0, "grouped")]
    assert lengths == sorted(lengths)


def test_grouped_batching_trains_the_same_step(enriched, tiny_dirs, tmp_path):  # noqa: F811
    args = ["--objective", "nll", "--max-steps", "2", "--batch-size", "2", "--grad-accum", "2", "--lr", "1e-3"]
    assert train_cli(enriched, tmp_path / "padded", tiny_dirs["bpe"], *args) == 0
    assert train_cli(enriched, tmp_path / "grouped", tiny_dirs["bpe"], *args, "--batching", "grouped") == 0
    for a, b in zip(metrics(tmp_path / "padded"), metrics(tmp_path / "grouped")):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    a, b = load_file(tmp_path / "padded" / "model.safetensors"), load_file(tmp_path / "grouped" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-5)


def test_bad_switch_values_in_a_config_file_name_the_flag(enriched, tiny_dirs, tmp_path, capsys):  # noqa: F811
    for key, value, message in (("batching", "sorted", "--batching 'sorted'"), ("report_to", "comet", "--report-to 'comet'")):
        config = tmp_path / f"{key}.json"
        config.write_text(json.dumps({key: value}))
        assert train_cli(enriched, tmp_path / "x", tiny_dirs["bpe"], "--config", str(config)) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
