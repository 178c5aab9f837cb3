"""tokensft objectives inside transformers.Trainer and TRL's SFTTrainer: one optimizer step of the
Trainer (several micro-batches) moves the weights by exactly the gradient of tokensft's own loss
over the whole batch; training runs, logs and saves; misuse gets one-line errors."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from conftest import run_processes
import torch
from safetensors.torch import load_file
from test_enrich import CHATS
from test_train import enriched  # noqa: F401  (the scored + enriched tiny dataset fixture)
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from tokensft.core.errors import ConfigError
from tokensft.train.data import TrainData
from tokensft.train.interop import TokenSFTCollator, TokenSFTLoss, TokenSFTMixin, TokenSFTTrainer, trainer_dataset
from tokensft.train.loss import Denominator, count_batch, micro_batch_loss
from tokensft.train.objectives import parse_objective

trl = pytest.importorskip("trl")  # installed by the test extras; skipped only outside `make test`
EXAMPLE = Path(__file__).parent.parent / "examples" / "trainer_interop.py"
STEP_SCRIPT = Path(__file__).parent / "interop_step.py"


class SFTWithTokenSFT(TokenSFTMixin, trl.SFTTrainer):
    pass


def _args(out: Path, cls, **extra):
    common = dict(output_dir=str(out), per_device_train_batch_size=2, gradient_accumulation_steps=len(CHATS) // 2,
                  max_steps=1, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", warmup_steps=0,
                  weight_decay=0.0, max_grad_norm=0.0, use_cpu=True, report_to=[], save_strategy="no",
                  logging_steps=1, disable_tqdm=True, seed=3, remove_unused_columns=False)
    common.update(extra)
    if cls is trl.SFTConfig:
        common.update(dataset_kwargs={"skip_prepare_dataset": True}, max_length=None, bf16=False)  # SFTConfig: bf16 on
    return cls(**common)


def full_batch_gradient(data_dir: Path, model_dir: Path, objective: str, mask: str | None, normalize: str) -> dict:
    """tokensft's own loss over all examples as one batch (already checked against naive references)."""
    obj = parse_objective(objective)
    data = TrainData(str(data_dir), obj, mask)
    batch = data.collate(data.train_indices, pad_id=0)
    c = count_batch(batch)
    model = AutoModelForCausalLM.from_pretrained(model_dir).float()
    loss, _ = micro_batch_loss(model, batch, obj, normalize, Denominator(c["targets"], c["sequences"], c["kept"], 1))
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


CASES = [  # (trainer, objective, mask, normalize the objective defaults to)
    ("mixin", "nll", "top-frac:0.5", "all-targets"),
    ("mixin", "nll", "top-frac:0.5", "kept-targets"),
    ("mixin", "qtarget:gamma=0.5,prior=teacher", None, "all-targets"),
    ("mixin", "poft", None, "sequences"),
    ("trl-mixin", "dft", "top-frac:0.5", "all-targets"),
    ("loss-func", "p", None, "all-targets"),
    ("trl-loss-func", "qtarget:gamma=0.9,prior=uniform", None, "all-targets"),
]


@pytest.mark.parametrize("kind,objective,mask,normalize", CASES)
def test_one_trainer_step_is_the_full_batch_gradient(enriched, tiny_dirs, tmp_path, kind, objective, mask, normalize):
    """8 examples, 2 per micro-batch, 4 accumulation steps: one optimizer step sees them all, in an
    order of the Trainer's choosing. Plain SGD with lr 1: new weights = old - gradient."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"]).float()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    dataset = trainer_dataset(str(enriched), objective, mask)
    collator = TokenSFTCollator(0)
    if kind == "mixin":
        trainer = TokenSFTTrainer(model=model, args=_args(tmp_path, TrainingArguments), train_dataset=dataset,
                                  data_collator=collator, objective=objective, normalize=normalize)
    elif kind == "trl-mixin":
        trainer = SFTWithTokenSFT(model=model, args=_args(tmp_path, trl.SFTConfig), train_dataset=dataset,
                                  data_collator=collator, objective=objective, normalize=normalize)
    elif kind == "loss-func":
        trainer = Trainer(model=model, args=_args(tmp_path, TrainingArguments), train_dataset=dataset,
                          data_collator=collator, compute_loss_func=TokenSFTLoss(objective))
    else:
        trainer = trl.SFTTrainer(model=model, args=_args(tmp_path, trl.SFTConfig), train_dataset=dataset,
                                 data_collator=collator, compute_loss_func=TokenSFTLoss(objective))
    trainer.train()
    grads = full_batch_gradient(enriched, tiny_dirs["bpe"], objective, mask, normalize)
    for name, p in model.named_parameters():
        torch.testing.assert_close(before[name] - p.detach(), grads[name], atol=2e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("objective,mask,normalize", [("nll", "top-frac:0.5", "kept-targets"), ("poft", "", "sequences")])
def test_two_processes_take_the_full_batch_step(enriched, tiny_dirs, tmp_path, objective, mask, normalize):
    """`accelerate launch` with 2 CPU processes: the counts are global, DDP averages, one step = the full batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--mixed_precision", "no", "--num_machines", "1", "--dynamo_backend", "no", str(STEP_SCRIPT),
           str(enriched), str(tiny_dirs["bpe"]), objective, mask, normalize, str(tmp_path / "two")]
    done = run_processes(cmd, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    before = load_file(tiny_dirs["bpe"] / "model.safetensors")
    after = load_file(tmp_path / "two" / "model.safetensors")
    grads = full_batch_gradient(enriched, tiny_dirs["bpe"], objective, mask or None, normalize)
    for name, grad in grads.items():
        if name in after:  # tied weights are saved once
            torch.testing.assert_close(before[name] - after[name], grad, atol=2e-6, rtol=1e-4, msg=name)


def test_trainer_trains_logs_evaluates_and_saves(enriched, tiny_dirs, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"]).float()
    dataset = trainer_dataset(str(enriched), "nll", "top-frac:0.5")
    args = _args(tmp_path, TrainingArguments, per_device_train_batch_size=len(CHATS), gradient_accumulation_steps=1,
                 max_steps=6, learning_rate=3e-3, optim="adamw_torch", per_device_eval_batch_size=len(CHATS),
                 save_strategy="steps", save_steps=6)
    trainer = TokenSFTTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset,
                              data_collator=TokenSFTCollator(0), objective="nll")
    trainer.train()
    logs = [row for row in trainer.state.log_history if "loss" in row and "mean_p" in row]
    assert len(logs) == 6 and logs[-1]["loss"] < logs[0]["loss"] and logs[-1]["mean_p"] > logs[0]["mean_p"]
    kept = trainer_dataset(str(enriched), "nll", "top-frac:0.5")["tokensft_mask"]
    targets = sum(1 for row in trainer_dataset(str(enriched), "nll")["labels"] for y in row if y >= 0)
    assert logs[0]["kept_fraction"] == pytest.approx(sum(map(sum, kept)) / targets)
    evaluated = trainer.evaluate()["eval_loss"]  # one eval batch holding every example: the full-batch loss
    data = TrainData(str(enriched), parse_objective("nll"), "top-frac:0.5")
    batch = data.collate(data.train_indices, pad_id=0)
    c = count_batch(batch)
    with torch.no_grad():
        expected, _ = micro_batch_loss(model, batch, parse_objective("nll"), "all-targets",
                                       Denominator(c["targets"], c["sequences"], c["kept"], 1))
    assert evaluated == pytest.approx(float(expected), rel=1e-5)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-6")  # a plain Hugging Face checkpoint
    assert saved.config.vocab_size == model.config.vocab_size


def test_example_script_runs_with_both_trainers(enriched, tiny_dirs, tmp_path):
    spec = importlib.util.spec_from_file_location("trainer_interop", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    for trainer in ("transformers", "trl"):
        out = tmp_path / trainer
        summary = example.main(["--data", str(enriched), "--model", str(tiny_dirs["bpe"]), "--trainer", trainer,
                                "--objective", "nll", "--mask", "top-frac:0.5", "--steps", "3", "--output", str(out)])
        assert summary["steps"] == 3 and (out / "model.safetensors").is_file()
        assert summary["last_loss"] < summary["first_loss"] * 1.5  # it ran; lowering is checked above


def test_misuse_is_a_clear_error(enriched, tiny_dirs, tmp_path):
    with pytest.raises(ConfigError, match="TokenSFTTrainer"):
        TokenSFTLoss("poft")
    with pytest.raises(ConfigError, match="TokenSFTTrainer"):
        TokenSFTLoss("qtarget:gamma=0.5,prior=teacher")
    with pytest.raises(ConfigError, match="normalize='all-targets'"):
        TokenSFTLoss("threshold-p:0.5")
    TokenSFTLoss("threshold-p:0.5", normalize="all-targets")  # allowed when asked for
    with pytest.raises(ConfigError, match="tokensft enrich .* --mask 'prob>=0.3'"):
        trainer_dataset(str(enriched), "nll", "prob>=0.3")
    with pytest.raises(ConfigError, match="token fingerprints differ"):
        trainer_dataset(str(enriched), "nll", tokenizer=AutoTokenizer.from_pretrained(tiny_dirs["sp"]))
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"])
    with pytest.raises(ConfigError, match="remove_unused_columns=False"):
        TokenSFTTrainer(model=model, args=_args(tmp_path, TrainingArguments, remove_unused_columns=True),
                        train_dataset=trainer_dataset(str(enriched)), data_collator=TokenSFTCollator(0))
    args = _args(tmp_path, trl.SFTConfig)
    args.dataset_kwargs = None
    with pytest.raises(ConfigError, match="skip_prepare_dataset"):
        SFTWithTokenSFT(model=model, args=args, train_dataset=trainer_dataset(str(enriched)),
                        data_collator=TokenSFTCollator(0))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
