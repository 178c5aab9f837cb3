"""--batching packed: a micro-batch as one row of its real tokens. Its loss and gradients equal the
padded batch's (every objective family, masks, weights, every normalization, Llama's SDPA and
Gemma2's eager sliding-window attention) and the sum of its sequences run one by one; the run
trains like padded; an architecture whose attention would mix packed sequences falls back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_enrich import enrich_cli, scored
from test_train import train_cli
from test_train_settings import metrics
from transformers import AutoModelForCausalLM

from tokensft.core.errors import ConfigError
from tokensft.core.schema import IGNORE_INDEX
from tokensft.train import packing
from tokensft.train.data import TrainData
from tokensft.train.loss import Denominator, count_batch, micro_batch_loss
from tokensft.train.objectives import parse_objective
from tokensft.train.packing import VARLEN, pack, packing_supported, use_varlen
from tokensft.train.step import micro_batches

# (objective, --mask, --weight, --normalize): every per-sequence quantity and every normalization
CASES = [("nll", None, None, None), ("dft", None, None, None), ("threshold-nll:0.001", None, None, "kept-targets"),
         ("qtarget:gamma=0.5,prior=teacher", None, None, None), ("qtarget:gamma=p,prior=self", None, None, None),
         ("nll", "top-frac:0.5", None, "kept-targets"), ("nll", None, None, "sequences"),
         ("nll", None, "prob^1", None), ("nll", "top-frac:0.5", "prob^1", "weight-sum"),
         ("poft", None, None, None), ("poft", None, "prob^1", "weight-sum")]


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory, tiny_dirs) -> dict[str, Path]:
    """bpe: scored with top-k, a mask, a reference, a teacher and a weight; sp (Gemma2, eager, sliding window): scored."""
    bpe = scored(tmp_path_factory.mktemp("packing-bpe"), tiny_dirs["bpe"], "--top-k", "4")
    assert enrich_cli(bpe, "--mask", "top-frac:0.5", "--ref", str(tiny_dirs["sp"]), "--teacher", str(tiny_dirs["bpe"]),
                      "--top-k", "4", "--weight", "prob^1") == 0
    return {"bpe": bpe, "sp": scored(tmp_path_factory.mktemp("packing-sp"), tiny_dirs["sp"])}


def loss_and_grads(model, batch: dict, objective: str, normalize: str, d: Denominator) -> tuple[torch.Tensor, list]:
    model.zero_grad()
    loss, _ = micro_batch_loss(model, batch, parse_objective(objective), normalize, d, chunk_size=5)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def varied(data: TrainData, n: int = 4) -> np.ndarray:
    """n train rows of different lengths (so the padded batch pads)."""
    lengths = data.lengths(data.train_indices)
    order = np.unique(lengths, return_index=True)[1]
    assert len(order) >= n
    return data.train_indices[order[:n]]


def test_pack_keeps_every_real_token_in_order_with_restarting_positions(data_dirs):
    data = TrainData(str(data_dirs["bpe"]), parse_objective("qtarget:gamma=0.5,prior=teacher"), "top-frac:0.5",
                     weight="prob^1")
    padded = data.collate(varied(data), pad_id=0)
    packed = pack(padded)
    lengths = padded["attention_mask"].sum(1).tolist()
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    start = 0
    for row, n in enumerate(lengths):  # a naive loop over the rows
        piece = slice(start, start + n)
        assert packed["position_ids"][0, piece].tolist() == list(range(n))
        assert packed["sequence"][0, piece].tolist() == [row] * n
        for key in ("input_ids", "labels", "mask", "weight", "prior_ids", "prior_logprobs"):
            torch.testing.assert_close(packed[key][0, piece], padded[key][row, :n], atol=0, rtol=0)
        start += n
    assert packed["ids"] == padded["ids"]
    for sequence_level in (False, True):  # the weight sum up to float rounding (summed in another order)
        assert count_batch(packed, sequence_level) == pytest.approx(count_batch(padded, sequence_level), rel=1e-6)


def test_pack_refuses_a_target_at_a_sequence_start(data_dirs):
    data = TrainData(str(data_dirs["bpe"]), parse_objective("nll"))
    batch = data.collate(varied(data, 2), pad_id=0)
    batch["labels"][1, 0] = 5  # would be predicted from the first sequence's last token
    with pytest.raises(ConfigError, match=rf"example {batch['ids'][1]!r}: its first token is a target"):
        pack(batch)


@pytest.mark.parametrize("objective,mask,weight,normalize", CASES)
def test_packed_loss_and_gradients_equal_padded(data_dirs, tiny_dirs, objective, mask, weight, normalize):
    parsed = parse_objective(objective)
    data = TrainData(str(data_dirs["bpe"]), parsed, mask, weight=weight)
    padded = data.collate(varied(data), pad_id=0)
    packed = pack(padded)
    c = count_batch(padded, parsed.sequence_level)
    assert count_batch(packed, parsed.sequence_level) == pytest.approx(c, rel=1e-6)
    d = Denominator(c["targets"], c["sequences"], None if parsed.online_kept else c["kept"], 1, weight_sum=c["weight_sum"])
    normalize = normalize or parsed.default_normalize
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"]).float().train()
    loss, grads = loss_and_grads(model, padded, objective, normalize, d)
    packed_loss, packed_grads = loss_and_grads(model, packed, objective, normalize, d)
    assert loss.abs() > 0
    torch.testing.assert_close(packed_loss, loss, atol=1e-5, rtol=1e-5)
    for a, b in zip(packed_grads, grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family,objective,normalize", [("bpe", "nll", "all-targets"), ("bpe", "poft", "sequences"),
                                                        ("sp", "nll", "sequences"), ("sp", "dft", "all-targets")])
def test_packed_equals_each_sequence_run_alone(data_dirs, tiny_dirs, family, objective, normalize):
    """The independent check: no padding and no packing, one sequence per forward; with a shared
    denominator the micro-batch's loss is the sum of its sequences' (Gemma2: eager, sliding window)."""
    parsed = parse_objective(objective)
    data = TrainData(str(data_dirs[family]), parsed)
    rows = varied(data)
    packed = pack(data.collate(rows, pad_id=0))
    c = count_batch(packed, parsed.sequence_level)
    d = Denominator(c["targets"], c["sequences"], c["kept"], 1)
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[family]).float().train()
    loss, grads = loss_and_grads(model, packed, objective, normalize, d)
    alone_loss, alone_grads = torch.zeros(()), [torch.zeros_like(g) for g in grads]
    for row in rows:
        one = data.collate([row], pad_id=0)
        assert one["attention_mask"].all()  # a batch of one is unpadded
        part, part_grads = loss_and_grads(model, one, objective, normalize, d)
        alone_loss += part
        alone_grads = [a + g for a, g in zip(alone_grads, part_grads)]
    torch.testing.assert_close(loss, alone_loss, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, alone_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_micro_batches_packed_split_like_padded_with_no_padding(data_dirs):
    data = TrainData(str(data_dirs["bpe"]), parse_objective("nll"))
    drawn = data.step_indices(0, 7, seed=3)  # 7 over 2 processes x 2: one filler micro-batch
    for rank in (0, 1):
        padded = micro_batches(data, drawn, rank, 2, 2, 0)
        packed = micro_batches(data, drawn, rank, 2, 2, 0, "packed")
        assert [b["ids"] for b in packed] == [b["ids"] for b in padded]
        for p, q in zip(packed, padded):
            assert p["input_ids"].shape == (1, int(q["attention_mask"].sum()))
            assert int((p["labels"] != IGNORE_INDEX).sum()) == int((q["labels"] != IGNORE_INDEX).sum())


def test_packed_run_trains_like_padded_and_evaluates_alike(data_dirs, tiny_dirs, tmp_path):
    args = ["--objective", "nll", "--max-steps", "2", "--batch-size", "3", "--grad-accum", "2", "--lr", "1e-3",
            "--eval-fraction", "0.3"]
    assert train_cli(data_dirs["bpe"], tmp_path / "padded", tiny_dirs["bpe"], *args) == 0
    assert train_cli(data_dirs["bpe"], tmp_path / "packed", tiny_dirs["bpe"], *args, "--batching", "packed") == 0
    rows = list(zip(metrics(tmp_path / "padded"), metrics(tmp_path / "packed")))
    assert any("eval_loss" in a for a, _ in rows)
    for a, b in rows:
        for key in ("loss", "grad_norm", "eval_loss", "eval_nll", "eval_mean_p"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4), key
    a, b = load_file(tmp_path / "padded" / "model.safetensors"), load_file(tmp_path / "packed" / "model.safetensors")
    # AdamW moves a weight by about lr (1e-3) per step whatever its gradient's size, so where a gradient is
    # near 0 (~eps) float rounding between the two attention paths can move it by a few 1e-6 (measured here:
    # 4.7e-6 on 1 of 1024): 1e-5 is 1% of one step, still far below any real difference in what trained
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-5)


class _Unpacked(torch.nn.Module):
    """A decoder that drops position_ids: its attention would let packed sequences see each other."""

    def __init__(self, decoder):
        super().__init__()
        self.inner = decoder

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_packing_probe_tells_a_mixing_attention_apart(tiny_dirs):
    for family in ("bpe", "sp"):
        assert packing_supported(AutoModelForCausalLM.from_pretrained(tiny_dirs[family]))
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"])
    model.get_decoder = lambda: _Unpacked(model.model)
    assert not packing_supported(model)


def test_an_unsupported_architecture_falls_back_to_grouped_and_says_so(data_dirs, tiny_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(packing, "packing_supported", lambda model: False)
    args = ["--objective", "nll", "--max-steps", "1", "--batch-size", "2"]
    assert train_cli(data_dirs["bpe"], tmp_path / "packed", tiny_dirs["bpe"], *args, "--batching", "packed") == 0
    assert "training with --batching grouped instead" in capsys.readouterr().err
    assert train_cli(data_dirs["bpe"], tmp_path / "grouped", tiny_dirs["bpe"], *args, "--batching", "grouped") == 0
    a, b = load_file(tmp_path / "grouped" / "model.safetensors"), load_file(tmp_path / "packed" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0)


def test_packed_under_eager_attention_trains_like_padded_sdpa(data_dirs, tiny_dirs, tmp_path):
    args = ["--objective", "poft", "--max-steps", "2", "--batch-size", "3", "--lr", "1e-3"]
    assert train_cli(data_dirs["bpe"], tmp_path / "sdpa", tiny_dirs["bpe"], *args) == 0
    assert train_cli(data_dirs["bpe"], tmp_path / "eager", tiny_dirs["bpe"], *args, "--batching", "packed",
                     "--attn-implementation", "eager") == 0
    a, b = load_file(tmp_path / "sdpa" / "model.safetensors"), load_file(tmp_path / "eager" / "model.safetensors")
    # AdamW moves a weight by about lr (1e-3) per step whatever its gradient's size, so where a gradient is
    # near 0 (~eps) float rounding between the two attention paths can move it by a few 1e-6 (measured here:
    # 4.7e-6 on 1 of 1024): 1e-5 is 1% of one step, still far below any real difference in what trained
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="flash-attention may run here")
def test_an_attention_the_machine_cannot_run_is_one_line(data_dirs, tiny_dirs, tmp_path, capsys):
    assert train_cli(data_dirs["bpe"], tmp_path / "x", tiny_dirs["bpe"], "--attn-implementation", "flash_attention_2") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --attn-implementation flash_attention_2: ") and err.count("\n") == 1, err
    assert "--attn-implementation auto" in err


def test_varlen_attention_trains_packed_like_padded_sdpa(data_dirs, tiny_dirs):
    """VARLEN (SDPA per packed sequence, no mask) against the padded batch on the model's own SDPA."""
    parsed = parse_objective("poft")
    data = TrainData(str(data_dirs["bpe"]), parsed)
    padded = data.collate(varied(data), pad_id=0)
    c = count_batch(padded, True)
    d = Denominator(c["targets"], c["sequences"], c["kept"], 1)
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"]).float().train()
    assert model.config._attn_implementation == "sdpa"
    loss, grads = loss_and_grads(model, padded, "poft", "sequences", d)
    assert use_varlen(model) and model.config._attn_implementation == VARLEN
    assert packing_supported(model)
    packed_loss, packed_grads = loss_and_grads(model, pack(padded), "poft", "sequences", d)
    torch.testing.assert_close(packed_loss, loss, atol=1e-5, rtol=1e-5)
    for a, b in zip(packed_grads, grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    padded_loss, _ = loss_and_grads(model, padded, "poft", "sequences", d)  # padded rows under VARLEN: causal
    torch.testing.assert_close(padded_loss, loss, atol=1e-5, rtol=1e-5)


def test_varlen_is_only_for_plain_causal_sdpa(tiny_dirs):
    gemma = AutoModelForCausalLM.from_pretrained(tiny_dirs["sp"])  # eager, sliding window, soft-capping
    assert not use_varlen(gemma) and gemma.config._attn_implementation == "eager"
    eager = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"], attn_implementation="eager")
    assert not use_varlen(eager)
    windowed = AutoModelForCausalLM.from_pretrained(tiny_dirs["bpe"])
    windowed.config.sliding_window = 8
    assert not use_varlen(windowed)


def test_a_packed_run_saves_a_model_that_loads_anywhere(data_dirs, tiny_dirs, tmp_path):
    out = tmp_path / "packed"
    assert train_cli(data_dirs["bpe"], out, tiny_dirs["bpe"], "--max-steps", "1", "--batching", "packed") == 0
    assert VARLEN not in (out / "config.json").read_text()  # the attention is the trainer's, not the model's
    card = json.loads((out / "tokensft_train.json").read_text())
    assert (card["batching"], card["attention"]) == ("packed", VARLEN)
    assert AutoModelForCausalLM.from_pretrained(out).config._attn_implementation == "sdpa"


def test_packed_lora_with_checkpointing_trains_like_padded(data_dirs, tiny_dirs, tmp_path):
    pytest.importorskip("peft")
    args = ["--objective", "nll", "--max-steps", "2", "--batch-size", "3", "--lr", "1e-2", "--lora-r", "4",
            "--gradient-checkpointing"]
    assert train_cli(data_dirs["bpe"], tmp_path / "padded", tiny_dirs["bpe"], *args) == 0
    assert train_cli(data_dirs["bpe"], tmp_path / "packed", tiny_dirs["bpe"], *args, "--batching", "packed") == 0
    a = load_file(tmp_path / "padded" / "adapter_model.safetensors")
    b = load_file(tmp_path / "packed" / "adapter_model.safetensors")
    assert any(".lora_B." in name and t.abs().sum() > 0 for name, t in a.items())
    for x, y in zip(metrics(tmp_path / "padded"), metrics(tmp_path / "packed")):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5) and y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)
    for name in a:  # Adam at lr 1e-2 scales rounding-sized gradient differences up (B starts at 0)
        torch.testing.assert_close(b[name], a[name], atol=5e-5, rtol=1e-4)


def test_sequence_bounds_are_found_once_per_forward_and_never_reused_across_forwards():
    from tokensft.train import packing as p

    first = torch.tensor([[0, 1, 2, 0, 1]])
    assert p._bounds(first) == [0, 3, 5]
    assert p._bounds(first) is p._bounds(first)  # the layers after the first: no new device-to-host copy
    second = torch.tensor([[0, 1, 0, 1, 2]])  # the next forward, same shape
    assert p._bounds(second) == [0, 2, 5]
    assert p._bounds(torch.tensor([[3, 4, 0, 1]])) == [0, 2, 4]  # a row not starting at 0
