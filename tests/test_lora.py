"""LoRA (`tokensft train --lora-r`): the chunked loss through the PEFT wrapper equals a naive full-logits
loss, in value and in the adapter's gradients, in `tokensft train` and in TokenSFTTrainer on a peft
model; only the adapter trains; resume is exact; two processes train the adapter one does; --merge
writes a model that from_pretrained loads and `tokensft score` rescores; bad flags are one line."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import dies_on_call, run_processes
from safetensors.torch import load_file
from test_enrich import scored
from test_train import enriched, losses, train_cli  # noqa: F401  (enriched: a fixture)
from transformers import AutoModelForCausalLM, TrainingArguments

from tokensft.cli import main
from tokensft.train import loop, lora
from tokensft.train.config import TrainConfig
from tokensft.train.data import TrainData
from tokensft.train.interop import TokenSFTCollator, TokenSFTTrainer, trainer_dataset
from tokensft.train.loss import Denominator, count_batch, micro_batch_loss
from tokensft.train.objectives import parse_objective

pytest.importorskip("peft", reason="LoRA needs peft: pip install tokensft[peft]")

LORA = ["--lora-r", "4", "--lora-alpha", "8"]


def wrapped(model_dir, **settings):
    """The tiny model with a LoRA adapter whose B is random (B = 0 at init would leave A without gradient)."""
    config = TrainConfig(data="-", output="-", lora_r=4, lora_alpha=8.0, **settings)
    model = lora.wrap(AutoModelForCausalLM.from_pretrained(model_dir).float(), config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    return model


def naive_loss(model, batch, objective: str, q: float = 0.001) -> torch.Tensor:
    """The objective from the PEFT model's full (B, T, V) logits, token by token."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    logprobs = F.log_softmax(logits[:, :-1].double(), dim=-1)  # (B, T-1, V)
    labels = batch["labels"][:, 1:]
    total, count, per_seq = 0.0, 0, []
    for b in range(labels.shape[0]):
        seq = []
        for t in range(labels.shape[1]):
            if labels[b, t] == -100:
                continue
            lp = logprobs[b, t, labels[b, t]]
            seq.append(lp)
            if "mask" in batch and not batch["mask"][b, t + 1]:
                continue
            if objective == "nll":
                total, count = total - lp, count + 1
            elif objective == "p":
                total, count = total + 1 - lp.exp(), count + 1
            elif lp.exp().item() >= q:  # threshold-nll:q, normalized by the kept count
                total, count = total - lp, count + 1
        if seq:
            per_seq.append(torch.stack(seq).mean())
    if objective == "poft":  # beta 1, gamma 0: mean over sequences of -log sigmoid(s - s_ref)
        ref = batch["ref_logprob"].double()
        return torch.stack([-F.logsigmoid(s - ref[i]) for i, s in enumerate(per_seq)]).mean()
    if objective == "nll" or objective == "p":
        count = int((batch["labels"] != -100).sum())  # all-targets: the mask drops terms, not the count
    return total / max(count, 1)


@pytest.mark.parametrize("objective, mask", [("nll", None), ("p", None), ("threshold-nll:0.001", None),
                                             ("nll", "top-frac:0.5"), ("poft", None)])
def test_adapter_loss_and_gradients_equal_a_full_logits_computation(enriched, tiny_dirs, objective, mask):  # noqa: F811
    parsed = parse_objective(objective)
    data = TrainData(str(enriched), parsed, mask=mask)
    batch = data.collate(data.train_indices, pad_id=0)
    model = wrapped(tiny_dirs["bpe"])
    c = count_batch(batch, parsed.sequence_level)
    denominator = Denominator(c["targets"], c["sequences"], None if parsed.online_kept else c["kept"], 1)
    loss, _ = micro_batch_loss(model, batch, parsed, parsed.default_normalize, denominator, chunk_size=7)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert ours and all("lora_" in n for n in ours)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    model.zero_grad()
    reference = naive_loss(model, batch, objective.split(":")[0] if objective != "threshold-nll:0.001" else "threshold")
    reference.backward()
    torch.testing.assert_close(loss.double(), reference, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert ours[name].abs().sum() > 0, name
            torch.testing.assert_close(ours[name], p.grad, atol=1e-5, rtol=1e-4)


def test_default_targets_are_the_attention_and_mlp_projections(tiny_dirs):
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"])
    assert lora.default_targets(model) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = wrapped(tiny_dirs["bpe"], lora_targets="q_proj, v_proj")
    adapted = {n.split(".")[-4] for n, p in peft_model.named_parameters() if p.requires_grad}
    assert adapted == {"q_proj", "v_proj"}


def test_only_the_adapter_trains_and_merge_loads_and_rescores(enriched, tiny_dirs, tmp_path):  # noqa: F811
    out = tmp_path / "merged"
    assert train_cli(enriched, out, tiny_dirs["bpe"], *LORA, "--max-steps", "3", "--lr", "1e-2", "--merge") == 0
    base = load_file(tiny_dirs["bpe"] / "model.safetensors")
    merged = load_file(out / "model.safetensors")
    assert set(merged) == set(base)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for name, weight in base.items():
        if any(f".{t}." in name for t in targets):
            assert not torch.equal(weight, merged[name]), name  # trained through its adapter
        else:
            assert torch.equal(weight, merged[name]), name  # embeddings, norms, lm_head: frozen
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "adapter_config.json").exists()
    card = json.loads((out / "tokensft_train.json").read_text())
    assert 0 < card["trainable_params"] < card["total_params"]
    # the merged model equals base + adapter
    from peft import PeftModel

    batch = TrainData(str(enriched), parse_objective("nll")).collate([0, 1], pad_id=0)
    full = AutoModelForCausalLM.from_pretrained(out).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"]), out / "adapter").eval()
    with torch.no_grad():
        a = full(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = adapted(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    rescored = scored(tmp_path, out, name="rescored")  # `tokensft score --model OUTPUT` accepts the merged model
    assert (rescored / "tokensft_meta.json").is_file() or any(rescored.iterdir())


def test_unmerged_output_is_an_adapter_that_score_refuses(enriched, tiny_dirs, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "adapter"
    assert train_cli(enriched, out, tiny_dirs["bpe"], *LORA, "--max-steps", "1") == 0
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "config.json").exists()
    capsys.readouterr()
    data = tmp_path / "data.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n')
    assert main(["score", str(data), "--model", str(out), "--output", str(tmp_path / "s"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a LoRA adapter" in err and "--merge" in err, err


def test_resume_continues_identically(enriched, tiny_dirs, tmp_path, monkeypatch):  # noqa: F811
    args = [*LORA, "--lora-dropout", "0.1", "--objective", "dft", "--max-steps", "5", "--batch-size", "2",
            "--grad-accum", "2", "--save-every", "2", "--lr", "1e-2"]
    assert train_cli(enriched, tmp_path / "clean", tiny_dirs["bpe"], *args) == 0
    monkeypatch.setattr(loop, "_metrics", dies_on_call(loop._metrics, 4))
    assert train_cli(enriched, tmp_path / "killed", tiny_dirs["bpe"], *args) == 130
    monkeypatch.undo()
    checkpoint = tmp_path / "killed" / "checkpoints" / "step-2"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    state = load_file(checkpoint / "state" / "model.safetensors")
    assert state and all("lora_" in k for k in state)  # the frozen base is not copied into every checkpoint
    assert train_cli(enriched, tmp_path / "killed", tiny_dirs["bpe"], *args) == 0
    a = load_file(tmp_path / "clean" / "adapter_model.safetensors")
    b = load_file(tmp_path / "killed" / "adapter_model.safetensors")
    assert set(a) == set(b) and a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert losses(tmp_path / "killed") == losses(tmp_path / "clean")


def test_base_bf16_trains_an_fp32_adapter(enriched, tiny_dirs, tmp_path):  # noqa: F811
    out = tmp_path / "bf16"
    assert train_cli(enriched, out, tiny_dirs["bpe"], *LORA, "--lora-base-bf16", "--max-steps", "2", "--merge") == 0
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert adapter and all(t.dtype == torch.float32 for t in adapter.values())
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size > 0


@pytest.mark.parametrize("args, message", [
    (["--lora-alpha", "4"], "--lora-alpha applies with LoRA only"),
    (["--merge"], "--merge applies with LoRA only"),
    (["--lora-r", "-1"], "--lora-r -1"),
    (["--lora-r", "4", "--lora-dropout", "1.5"], "--lora-dropout 1.5"),
    (["--lora-r", "4", "--lora-alpha", "0"], "--lora-alpha 0"),
    (["--lora-r", "4", "--lora-targets", ","], "give module names"),
    (["--lora-r", "4", "--lora-targets", "q_proj,qkv"], "no Linear named 'qkv'"),
])
def test_bad_lora_flags_are_one_line(enriched, tiny_dirs, tmp_path, capsys, args, message):  # noqa: F811
    assert train_cli(enriched, tmp_path / "x", tiny_dirs["bpe"], *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_gradient_checkpointing_trains_the_adapter_the_same(enriched, tiny_dirs, tmp_path):  # noqa: F811
    args = [*LORA, "--max-steps", "2", "--lr", "1e-2", "--batch-size", "4"]
    assert train_cli(enriched, tmp_path / "plain", tiny_dirs["bpe"], *args) == 0
    assert train_cli(enriched, tmp_path / "ckpt", tiny_dirs["bpe"], *args, "--gradient-checkpointing") == 0
    a = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    b = load_file(tmp_path / "ckpt" / "adapter_model.safetensors")
    assert any(".lora_B." in name and t.abs().sum() > 0 for name, t in a.items())  # it moved
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


def test_overwrite_never_leaves_an_adapter_beside_a_full_model(enriched, tiny_dirs, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    assert train_cli(enriched, out, tiny_dirs["bpe"], "--max-steps", "1") == 0
    assert train_cli(enriched, out, tiny_dirs["bpe"], *LORA, "--max-steps", "1", "--overwrite") == 0
    assert (out / "adapter_config.json").is_file() and not list(out.glob("model*.safetensors"))
    assert not (out / "config.json").exists()
    assert train_cli(enriched, out, tiny_dirs["bpe"], *LORA, "--max-steps", "1", "--overwrite", "--merge") == 0
    assert (out / "config.json").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    assert train_cli(enriched, out, tiny_dirs["bpe"], "--max-steps", "1", "--overwrite") == 0
    assert not (out / "adapter").exists() and (out / "model.safetensors").is_file()


def test_merge_added_to_a_finished_adapter_run_merges_without_training(enriched, tiny_dirs, tmp_path, monkeypatch):  # noqa: F811
    args = [*LORA, "--max-steps", "2", "--lr", "1e-2"]
    assert train_cli(enriched, tmp_path / "direct", tiny_dirs["bpe"], *args, "--merge") == 0
    out = tmp_path / "later"
    assert train_cli(enriched, out, tiny_dirs["bpe"], *args) == 0
    metrics_before = (out / "metrics.jsonl").read_text()
    monkeypatch.setattr(loop, "micro_batches", lambda *a, **k: pytest.fail("a merge must not train"))
    assert train_cli(enriched, out, tiny_dirs["bpe"], *args, "--merge") == 0
    assert (out / "metrics.jsonl").read_text() == metrics_before
    assert not (out / "adapter_config.json").exists() and (out / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "tokensft_train.json").read_text())["merged"] is True
    a, b = load_file(tmp_path / "direct" / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(a) == set(b)
    for name in a:  # what --merge at the first run would have written
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0)
    assert train_cli(enriched, out, tiny_dirs["bpe"], *args, "--merge") == 0  # merged already: complete, unchanged
    assert torch.equal(load_file(out / "model.safetensors")[next(iter(a))], b[next(iter(a))])


def test_two_processes_train_the_adapter_one_does(enriched, tiny_dirs, tmp_path):  # noqa: F811
    """accelerate launch with 2 CPU processes (gloo), batch 2 each, vs 1 process with 2 micro-batches of 2: the
    same adapter and merged model. An online kept count (summed over processes) and 9/8 epochs: steps of 4, 4
    and 1, so in the last one the second process runs a filler micro-batch through the adapter."""
    common = [*LORA, "--merge", "--objective", "threshold-nll:0.0006", "--epochs", "1.125", "--lr", "1e-2",
              "--batch-size", "2", "--seed", "3", "-q", "--model", str(tiny_dirs["bpe"])]
    assert main(["train", str(enriched), "--output", str(tmp_path / "one"), "--grad-accum", "2", *common]) == 0
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--mixed_precision",
           "no", "--num_machines", "1", "--dynamo_backend", "no", "-m", "tokensft", "train", str(enriched),
           "--output", str(tmp_path / "two"), *common]
    done = run_processes(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for file in ("adapter/adapter_model.safetensors", "model.safetensors"):
        a, b = load_file(tmp_path / "one" / file), load_file(tmp_path / "two" / file)
        assert set(a) == set(b) and a, file
        for name in a:
            torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=f"{file}: {name}")
    adapter = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    assert all(t.abs().sum() > 0 for n, t in adapter.items() if "lora_B" in n)  # every B moved off its zero init
    assert len(losses(tmp_path / "two")) == 3
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "two")), torch.tensor(losses(tmp_path / "one")),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("objective, mask", [("nll", "top-frac:0.5"), ("poft", None)])
def test_trainer_on_a_peft_model_takes_the_full_logits_step(enriched, tiny_dirs, tmp_path, objective, mask):  # noqa: F811
    """TokenSFTTrainer on peft.get_peft_model: 8 examples, 2 per micro-batch, 4 accumulation steps, SGD lr 1,
    no clipping: the logged first loss is the naive full-logits loss of all 8, and each adapter weight moves
    by exactly its gradient (old - new = grad); the frozen base does not move."""
    from peft import LoraConfig, get_peft_model

    def peft_model():
        base = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"]).float()
        torch.manual_seed(0)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
        torch.manual_seed(1)
        with torch.no_grad():  # B random: with B = 0 the adapter's A would get no gradient
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.2)
        return model

    reference_model = peft_model()
    data = TrainData(str(enriched), parse_objective(objective), mask=mask)
    reference = naive_loss(reference_model, data.collate(data.train_indices, pad_id=0), objective)
    reference.backward()
    grads = {n: p.grad for n, p in reference_model.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n and g.abs().sum() > 0 for n, g in grads.items())

    model = peft_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=4,
                             max_steps=1, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", warmup_steps=0,
                             weight_decay=0.0, max_grad_norm=0.0, use_cpu=True, report_to=[], save_strategy="no",
                             logging_steps=1, disable_tqdm=True, seed=3, remove_unused_columns=False)
    trainer = TokenSFTTrainer(model=model, args=args, train_dataset=trainer_dataset(str(enriched), objective, mask),
                              data_collator=TokenSFTCollator(0), objective=objective)
    trainer.train()
    logged = next(row["loss"] for row in trainer.state.log_history if "loss" in row)
    assert logged == pytest.approx(reference.detach().item(), rel=1e-5)
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(before[name] - p.detach(), grads[name].float(), atol=2e-6, rtol=1e-4, msg=name)
        else:
            assert torch.equal(before[name], p.detach()), name
