"""`tokensft train --weight`: the weighted loss and its gradient equal a naive full-logits loop for every
normalization and several objectives, however the step is split (1 x 8, 2 x 4, 4 x 2 micro-batches, two
processes); weights all 1 train bit-identically to no weights; the Trainer interop carries the weights;
unusable weights and flags are one-line errors. The weight columns are written here with pyarrow (random
positive weights at the targets, NaN elsewhere), not by score or enrich."""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import run_processes
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_train import enriched, train_cli  # noqa: F401  (scored with top-k, a mask top-frac:0.5, a reference)
from test_train_settings import THRESHOLD, metrics
from transformers import AutoModelForCausalLM, TrainingArguments

from tokensft.cli import main
from tokensft.core.dataset import load, load_metadata, read_table, shard_paths
from tokensft.core.errors import ConfigError
from tokensft.core.integrity import write_record
from tokensft.train.data import TrainData
from tokensft.train.loss import micro_batch_loss
from tokensft.train.objectives import parse_objective
from tokensft.train.step import denominator, step_counts
from tokensft.train.weighting import weight_column

MASK, MASK_COLUMN = "top-frac:0.5", "mask_top_frac_0.5"
STEP_SCRIPT = Path(__file__).parent / "interop_step.py"


def with_weights(src: Path, dst: Path, make) -> Path:
    """A copy of dataset `src` with float32 list columns {name: values} from make(labels (T,), row) -> {name: (T,)},
    its shards rewritten with their schema metadata, their integrity records and dataset_info.json kept valid."""
    import datasets

    shutil.copytree(src, dst)
    row = 0
    for shard in shard_paths(dst, load_metadata(dst)):
        table = read_table(shard)
        made: dict[str, list] = {}
        for labels in table["labels"].to_pylist():
            for name, values in make(np.asarray(labels), row).items():
                made.setdefault(name, []).append(np.asarray(values, dtype=np.float32).tolist())
            row += 1
        for name, values in made.items():
            column = pa.array(values, type=pa.list_(pa.float32()))
            table = (table.set_column(table.column_names.index(name), name, column) if name in table.column_names
                     else table.append_column(name, column))
        table = table.replace_schema_metadata(read_table(shard).schema.metadata)
        tmp = shard.with_suffix(".tmp")  # a new file: the table's other columns still map the old one
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, shard)
        write_record(shard, table.num_rows)
    info = json.loads((dst / "dataset_info.json").read_text())
    info["features"] = datasets.Features.from_arrow_schema(table.schema).to_dict()
    (dst / "dataset_info.json").write_text(json.dumps(info))
    return dst


def random_weights(labels: np.ndarray, row: int) -> dict:
    g = np.random.default_rng(row)
    target = labels != -100
    return {"weight": np.where(target, g.uniform(0.1, 2.0, len(labels)), np.nan),
            "weight_x": np.where(target, g.lognormal(0.0, 1.0, len(labels)), np.nan)}


@pytest.fixture(scope="module")
def weighted(enriched, tmp_path_factory) -> Path:  # noqa: F811
    return with_weights(enriched, tmp_path_factory.mktemp("weighted") / "data", random_weights)


# ---------------------------------------------------------------------------------------------- naive reference

def naive_step(data_dir: Path, model, objective: str, normalize: str, mask: str | None, weight: str) -> tuple:
    """(loss, gradients, weight sum) over every example of `data_dir` as one step, from full (T, V) float64
    logits of each example alone and an explicit loop over its targets."""
    name, _, rest = objective.partition(":")
    model = copy.deepcopy(model).double()
    rows = load(str(data_dir)).to_list()
    total, seq_losses, seq_weights = 0.0, [], []
    targets = stored_kept = online_kept = 0
    abs_weight = 0.0
    for row in rows:
        ids = torch.tensor(row["input_ids"])[None]
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)  # (T, V)
        seq_sum, seq_lp, seq_w, n = 0.0, 0.0, 0.0, 0
        for t, y in enumerate(row["labels"]):
            if y == -100:
                continue
            lp, w = logp[t - 1, y], float(row[weight][t])
            keep = mask is None or row[MASK_COLUMN][t] == 1
            n, seq_lp, seq_w = n + 1, seq_lp + lp, seq_w + w
            targets += 1
            if keep:
                stored_kept += 1
                abs_weight += abs(w)
            if name == "nll":
                loss = -lp
            elif name == "p":
                loss = 1 - lp.exp()
            elif name == "threshold-nll":
                kept = lp.exp().item() >= float(rest)
                online_kept += kept and keep
                loss = -lp if kept else 0 * lp
            else:
                continue  # poft: per sequence, below
            seq_sum = seq_sum + (w * loss if keep else 0 * lp)
        if name == "poft":
            s, w_seq = seq_lp / n, seq_w / n
            seq_losses.append(-F.logsigmoid(s - row["ref_mean_logprob"]) * w_seq)  # beta 1, gamma 0
            seq_weights.append(abs(w_seq))
        else:
            seq_losses.append(seq_sum / n)
            total = total + seq_sum
    if name == "poft":
        loss = sum(seq_losses) / (len(rows) if normalize == "sequences" else sum(seq_weights))
        abs_weight = sum(seq_weights)
    elif normalize == "sequences":
        loss = sum(seq_losses) / len(rows)
    else:
        kept = online_kept if name == "threshold-nll" else stored_kept
        loss = total / {"all-targets": targets, "kept-targets": kept, "weight-sum": abs_weight}[normalize]
    loss.backward()
    return loss.item(), [p.grad.float() for p in model.parameters()], abs_weight


CASES = [  # (objective, normalize, mask, weight column)
    ("nll", "all-targets", None, "weight"),
    ("p", "all-targets", MASK, "weight_x"),
    ("nll", "kept-targets", MASK, "weight"),
    ("p", "sequences", None, "weight_x"),
    ("nll", "weight-sum", MASK, "weight"),
    ("p", "weight-sum", None, "weight_x"),
    (f"threshold-nll:{THRESHOLD}", "kept-targets", None, "weight"),
    (f"threshold-nll:{THRESHOLD}", "weight-sum", MASK, "weight_x"),
    (f"threshold-nll:{THRESHOLD}", "all-targets", MASK, "weight"),
    ("poft", "sequences", None, "weight"),
    ("poft", "weight-sum", None, "weight_x"),
]


@pytest.mark.parametrize("objective,normalize,mask,weight", CASES)
def test_weighted_loss_and_gradient_equal_the_naive_loop_however_split(weighted, tiny_dirs, objective, normalize,
                                                                       mask, weight):
    """As the loop runs a step: the step's counts before any forward, then each micro-batch's loss backward
    (an online kept count: sums, the gradients divided by it afterwards)."""
    obj = parse_objective(objective)
    data = TrainData(str(weighted), obj, mask, weight=weight)
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"]).float()
    expected, grads, abs_weight = naive_step(weighted, model, objective, normalize, mask, weight)
    rows = data.train_indices
    assert len(rows) == 8
    rescale = normalize == "kept-targets" and obj.online_kept
    for micro in (1, 2, 4):
        batches = [data.collate(rows[i:i + 8 // micro], 0) for i in range(0, 8, 8 // micro)]
        counts = step_counts(batches, obj.sequence_level).tolist()
        assert counts[3] == pytest.approx(abs_weight, rel=1e-5)
        d = denominator(counts, obj.online_kept, len(batches), 1, rescale)
        model.zero_grad()
        total, kept = 0.0, 0.0
        for batch in batches:
            loss, stats = micro_batch_loss(model, batch, obj, normalize, d)
            loss.backward()
            total, kept = total + loss.item(), kept + float(stats["kept"])
        if rescale:
            assert 0 < kept < counts[0]  # the threshold splits the targets
            total /= kept
            for p in model.parameters():
                p.grad /= kept
        assert total == pytest.approx(expected, rel=1e-5), micro
        for p, g in zip(model.parameters(), grads):
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def grad_norm(grads) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


@pytest.mark.parametrize("objective,normalize,mask,weight", [CASES[4], CASES[7], CASES[10]])
def test_the_training_loop_logs_the_naive_loss_and_gradient_norm(weighted, tiny_dirs, tmp_path, objective, normalize,
                                                                 mask, weight):
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"]).float()
    expected, grads, abs_weight = naive_step(weighted, model, objective, normalize, mask, weight)
    for batch, accum in ((8, 1), (4, 2), (2, 4)):
        out = tmp_path / f"b{batch}"
        extra = ["--mask", mask] if mask else []
        assert train_cli(weighted, out, tiny_dirs["bpe"], "--objective", objective, "--normalize", normalize, "--weight",
                         weight, "--max-steps", "1", "--batch-size", str(batch), "--grad-accum", str(accum),
                         "--clip", "0", *extra) == 0
        row = metrics(out)[0]
        assert row["loss"] == pytest.approx(expected, rel=1e-5)
        assert row["grad_norm"] == pytest.approx(grad_norm(grads), rel=1e-4)
        assert row["weight_sum"] == pytest.approx(abs_weight, rel=1e-5)
        assert json.loads((out / "train_config.json").read_text())["weight"] == weight


def launch(*args: str) -> None:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--mixed_precision",
           "no", "--num_machines", "1", "--dynamo_backend", "no", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    done = run_processes(cmd, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("objective,normalize,mask,weight", [CASES[7], CASES[10]])
def test_two_processes_take_the_naive_step(weighted, tiny_dirs, tmp_path, objective, normalize, mask, weight):
    """2 processes x 2 micro-batches x 2 examples: the counts (the weight sum too) are global."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"]).float()
    expected, grads, abs_weight = naive_step(weighted, model, objective, normalize, mask, weight)
    launch("-m", "tokensft", "train", str(weighted), "--output", str(tmp_path / "two"), "--model", str(tiny_dirs["bpe"]),
           "-q", "--objective", objective, "--normalize", normalize, "--weight", weight, "--max-steps", "1",
           "--batch-size", "2", "--grad-accum", "2", "--clip", "0", *(["--mask", mask] if mask else []))
    row = metrics(tmp_path / "two")[0]
    assert row["loss"] == pytest.approx(expected, rel=1e-5)
    assert row["grad_norm"] == pytest.approx(grad_norm(grads), rel=1e-4)
    assert row["weight_sum"] == pytest.approx(abs_weight, rel=1e-5)


# ---------------------------------------------------------------------------------------------- weights all 1

@pytest.mark.parametrize("objective,mask", [("p", MASK), ("poft", None), (f"threshold-nll:{THRESHOLD}", None)])
def test_weights_all_one_train_bit_identically(enriched, tiny_dirs, tmp_path, objective, mask):  # noqa: F811
    ones = with_weights(enriched, tmp_path / "ones", lambda labels, _: {"weight": np.where(labels != -100, 1.0, np.nan)})
    args = ["--objective", objective, "--max-steps", "3", "--batch-size", "2", "--grad-accum", "2", "--lr", "1e-2",
            *(["--mask", mask] if mask else [])]
    assert train_cli(enriched, tmp_path / "plain", tiny_dirs["bpe"], *args) == 0
    assert train_cli(ones, tmp_path / "weighted", tiny_dirs["bpe"], *args, "--weight", "weight") == 0
    a, b = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "weighted" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in metrics(tmp_path / "plain")] == [r["loss"] for r in metrics(tmp_path / "weighted")]


# ---------------------------------------------------------------------------------------------- interop

def trainer_step(data_dir: Path, model_dir: Path, out: Path, objective: str, normalize: str, weight: str) -> dict:
    """One SGD step (lr 1) of TokenSFTTrainer over the 8 examples in 4 micro-batches of 2: old - new weights."""
    from tokensft.train.interop import TokenSFTCollator, TokenSFTTrainer, trainer_dataset

    model = AutoModelForCausalLM.from_pretrained(model_dir).float()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=2, gradient_accumulation_steps=4,
                             max_steps=1, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", warmup_steps=0,
                             weight_decay=0.0, max_grad_norm=0.0, use_cpu=True, report_to=[], save_strategy="no",
                             disable_tqdm=True, seed=3, remove_unused_columns=False)
    dataset = trainer_dataset(str(data_dir), objective, weight=weight)
    assert "tokensft_weight" in dataset.column_names
    TokenSFTTrainer(model=model, args=args, train_dataset=dataset, data_collator=TokenSFTCollator(0), objective=objective,
                    normalize=normalize).train()
    return {name: before[name] - p.detach() for name, p in model.named_parameters()}


@pytest.mark.parametrize("objective,normalize,weight", [("nll", "weight-sum", "weight"), ("poft", "sequences", "weight_x")])
def test_trainer_interop_takes_the_naive_weighted_step(weighted, tiny_dirs, tmp_path, objective, normalize, weight):
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"]).float()
    _, grads, _ = naive_step(weighted, model, objective, normalize, None, weight)
    moved = trainer_step(weighted, tiny_dirs["bpe"], tmp_path, objective, normalize, weight)
    for (name, _), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(moved[name], g, rtol=1e-4, atol=2e-6, msg=name)


def test_trainer_interop_two_processes_take_the_naive_weighted_step(weighted, tiny_dirs, tmp_path):
    launch(str(STEP_SCRIPT), str(weighted), str(tiny_dirs["bpe"]), "p", "", "weight-sum", str(tmp_path / "two"), "weight_x")
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"]).float()
    _, grads, _ = naive_step(weighted, model, "p", "weight-sum", None, "weight_x")
    before, after = load_file(tiny_dirs["bpe"] / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for (name, _), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(before[name] - after[name], g, rtol=1e-4, atol=2e-6, msg=name)


# ---------------------------------------------------------------------------------------------- errors

def test_unusable_weights_and_flags_are_one_line_errors(enriched, weighted, tiny_dirs, tmp_path, capsys):  # noqa: F811
    def bad(labels, row, value):
        w = np.where(labels != -100, 1.0, np.nan)
        if row == 5:
            w[np.flatnonzero(labels != -100)[2]] = value
        return {"weight": w}

    nan = with_weights(enriched, tmp_path / "nan", lambda labels, row: bad(labels, row, np.nan))
    negative = with_weights(enriched, tmp_path / "negative", lambda labels, row: bad(labels, row, -0.5))
    fifth = load(str(enriched))[5]["id"]
    cases = [
        (enriched, ["--weight", "weight_x"], "no column weight_x; add it with `tokensft enrich"),
        (enriched, ["--weight", "prob^1"], f"`tokensft enrich {enriched} --weight 'prob^1'`"),
        (enriched, ["--weight", "weight"], "has no data weights; give its records weights and re-score"),
        (weighted, ["--weight", "weight_prob_pow_1"], "(its weight columns: weight, weight_x)"),
        (weighted, ["--weight", "prob^x"], "--weight 'prob^x'"),
        (nan, ["--weight", "weight"], f"not finite (NaN or inf) at 1 targets, the first in example {fifth!r}"),
        (negative, ["--weight", "weight"], f"negative at 1 targets, the first in example {fifth!r}; pass "
                                           "--allow-negative-weights"),
        (weighted, ["--normalize", "weight-sum"], "--normalize weight-sum applies with --weight only"),
        (weighted, ["--allow-negative-weights"], "--allow-negative-weights applies with --weight only"),
        (weighted, ["--objective", "poft", "--normalize", "all-targets", "--weight", "weight"], "weight-sum"),
    ]
    for data, args, message in cases:
        assert train_cli(data, tmp_path / "x", tiny_dirs["bpe"], *args) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)
        assert not (tmp_path / "x").exists()
    TrainData(str(negative), parse_objective("nll"), weight="weight", allow_negative_weights=True)  # allowed when asked
    meta = {"enrichment": {"weights": {"weight_product_a_x_b": {"spec": "product:weight*prob>=0.1"}}}}
    with pytest.raises(ConfigError, match=r"--weight 'product:weight\*prob>=0.1'"):  # the recorded spec
        weight_column("D", "weight_product_a_x_b", {"weight"}, meta)


def test_a_rerun_with_another_weight_is_refused_naming_it(weighted, tiny_dirs, tmp_path, capsys):
    args = ["--max-steps", "1", "--batch-size", "8"]
    assert train_cli(weighted, tmp_path / "ckpt", tiny_dirs["bpe"], *args, "--weight", "weight") == 0
    capsys.readouterr()
    assert train_cli(weighted, tmp_path / "ckpt", tiny_dirs["bpe"], *args, "--weight", "weight_x") == 2
    err = capsys.readouterr().err
    assert "weight: 'weight' there, 'weight_x' now" in err and err.count("\n") == 1, err
    assert train_cli(weighted, tmp_path / "ckpt", tiny_dirs["bpe"], *args) == 2
    assert "weight: 'weight' there, None now" in capsys.readouterr().err
    assert train_cli(weighted, tmp_path / "ckpt", tiny_dirs["bpe"], *args, "--weight", "weight") == 0  # same: complete


def test_sweep_applies_the_weight_to_every_arm(weighted, tmp_path, monkeypatch):
    from tokensft.evaluate import sweep as sweep_module

    seen = {}

    def fake_sweep(config):
        seen["config"] = config
        return {"status": "rank-done", "output": config.output, "rank": 0}

    monkeypatch.setattr(sweep_module, "sweep", fake_sweep)
    assert main(["sweep", str(weighted), "--objectives", "nll,p", "--eval", str(tmp_path / "h.jsonl"), "-o",
                 str(tmp_path / "s"), "--weight", "prob^1", "--normalize", "weight-sum", "-q"]) == 0
    config = seen["config"]
    assert config.train["weight"] == "prob^1" and config.train["normalize"] == "weight-sum"
    from tokensft.evaluate.sweep_results import commands

    for arm in sweep_module.parse_arms(config.objectives):
        assert sweep_module.train_config(config, tmp_path / "s", arm, 0).weight == "prob^1"
        assert "--weight 'prob^1'" in commands(config, tmp_path / "s", arm, 0)[0]
