"""The scoring pass against an independent naive computation: full-vocab log-softmax of
`model(input_ids).logits` on each unpadded sequence, one example at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TOKENIZERS, make_model

from tokensft.records.formats import Example, Message
from tokensft.records.render import Renderer
from tokensft.core.scorer import Scorer, plan_batches
from tokensft.core.head import LogitHead
from tokensft.core.scoring import score_hidden
from tokensft.core.schema import IGNORE_INDEX

QUESTIONS = [
    ("What is 2 + 2?", "The answer is 4."),
    ("Janet has 16 eggs. She eats 3 and bakes 4 into muffins; how many are left?", "16 - 3 - 4 = 9 eggs are left, so 9."),
    ("Hi", "Hello there! How can I help you today? Tell me a joke about cats, or ask about numbers like 10, 20 and 300."),
    ("Write code", "def add(a, b):\n    return a + b"),
    ("Say hi", "Hi"),
]


def examples() -> list[Example]:
    out = []
    for i, (q, a) in enumerate(QUESTIONS):
        out.append(Example(id=str(i), kind="chat", messages=(Message("user", q, False), Message("assistant", a, True))))
    # multi-turn with a system prompt, both assistant turns trained
    out.append(Example(id="mt", kind="chat", messages=(
        Message("system", "You are a helpful assistant.", False), Message("user", "What is 2 + 2?", False),
        Message("assistant", "4", True), Message("user", "And 10 + 20?", False), Message("assistant", "It is 30.", True))))
    return out


def naive_scores(model, input_ids: list[int], labels: list[int], top_k: int) -> dict[str, np.ndarray]:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids])).logits[0].double()  # (T, V), float64
    logprobs = torch.log_softmax(logits, dim=-1)
    out = {"pos": [], "logprob": [], "entropy": [], "rank": [], "topk_ids": [], "topk_logprobs": []}
    for t, y in enumerate(labels):
        if y == IGNORE_INDEX:
            continue
        row = logprobs[t - 1]  # position t-1 predicts token t
        out["pos"].append(t)
        out["logprob"].append(row[y].item())
        out["entropy"].append(-(row.exp() * row).sum().item())
        out["rank"].append(int((logits[t - 1] > logits[t - 1, y]).sum()))
        values, ids = torch.sort(row, descending=True)
        out["topk_ids"].append(ids[:top_k].numpy())
        out["topk_logprobs"].append(values[:top_k].numpy())
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("batch_tokens", [1, 10_000], ids=["batch1", "mixed-batch"])
@pytest.mark.parametrize("chunk_size", [3, 512])
def test_scores_equal_naive(family, batch_tokens, chunk_size):
    tokenizer = TOKENIZERS[family]()
    model = make_model(tokenizer, family)
    renderer = Renderer(tokenizer)
    rendered = [renderer(e, f"ex {e.id}") for e in examples()]
    if batch_tokens > 1:
        assert len(plan_batches([len(r.input_ids) for r in rendered], batch_tokens)) == 1  # really mixed in one batch
    scored = Scorer(model, top_k=5, batch_tokens=batch_tokens, chunk_size=chunk_size).score(rendered)
    for r, s in zip(rendered, scored):
        ref = naive_scores(model, r.input_ids, r.labels, top_k=5)
        np.testing.assert_array_equal(s.target_positions, ref["pos"])
        np.testing.assert_allclose(s.logprob[ref["pos"]], ref["logprob"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(s.entropy[ref["pos"]], ref["entropy"], atol=1e-4, rtol=0)
        np.testing.assert_array_equal(s.rank[ref["pos"]], ref["rank"])
        np.testing.assert_allclose(s.topk_logprobs, ref["topk_logprobs"], atol=1e-4, rtol=0)
        # ids may swap only where two log-probs tie within float error
        same = s.topk_ids == ref["topk_ids"]
        assert same.all() or np.allclose(s.topk_logprobs[~same], ref["topk_logprobs"][~same], atol=1e-5)
        non_target = np.setdiff1d(np.arange(len(r.input_ids)), ref["pos"])
        assert np.isnan(s.logprob[non_target]).all() and np.isnan(s.entropy[non_target]).all()
        assert (s.rank[non_target] == -1).all()
    # the scores are spread out, so the comparison is not between near-constant numbers
    all_lp = np.concatenate([s.logprob[s.target_positions] for s in scored])
    assert all_lp.max() - all_lp.min() > 2.0


def test_rank_zero_is_argmax_and_topk_sorted(family):
    tokenizer = TOKENIZERS[family]()
    model = make_model(tokenizer, family)
    rendered = [Renderer(tokenizer)(e, "x") for e in examples()]
    for s in Scorer(model, top_k=4).score(rendered):
        top1 = s.topk_ids[:, 0]
        targets = np.array(s.rendered.labels)[s.target_positions]
        assert ((s.rank[s.target_positions] == 0) == (top1 == targets)).all()
        assert (np.diff(s.topk_logprobs, axis=1) <= 0).all()


def test_score_hidden_empty_and_head_softcap():
    tokenizer = TOKENIZERS["sp"]()
    model = make_model(tokenizer, "sp")
    head = LogitHead(model)
    assert head.softcap == 5.0  # the Gemma 2 path is really exercised
    hidden = torch.randn(7, model.config.hidden_size)
    logits = head(hidden)
    assert logits.abs().max() <= 5.0 + 1e-6
    empty = score_hidden(torch.zeros(0, model.config.hidden_size), torch.zeros(0, dtype=torch.long), head, top_k=3)
    assert empty.logprob.shape == (0,) and empty.topk_ids.shape == (0, 3)


def test_plan_batches_respects_budget_and_covers_all():
    lengths = [5, 100, 7, 64, 64, 3, 250, 1]
    batches = plan_batches(lengths, max_tokens=128)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 128
    assert [6] in batches  # longer than the budget: alone


@pytest.mark.slow
def test_real_embedded_model_equals_naive():
    """SmolLM2-135M-Instruct (the embedded default), chat template, batched vs naive."""
    from tokensft.core.models import load_model

    loaded = load_model("smollm2-135m-instruct")
    renderer = Renderer(loaded.tokenizer)
    rendered = [renderer(e, e.id) for e in examples()]
    scored = Scorer(loaded.model, top_k=5, batch_tokens=4096).score(rendered)
    for r, s in zip(rendered, scored):
        ref = naive_scores(loaded.model, r.input_ids, r.labels, top_k=5)
        np.testing.assert_allclose(s.logprob[ref["pos"]], ref["logprob"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(s.entropy[ref["pos"]], ref["entropy"], atol=1e-4, rtol=0)
        np.testing.assert_array_equal(s.rank[ref["pos"]], ref["rank"])
        np.testing.assert_allclose(s.topk_logprobs, ref["topk_logprobs"], atol=1e-4, rtol=0)
        # the end-of-turn token closes every response
        assert loaded.tokenizer.convert_ids_to_tokens(r.labels[s.target_positions[-1]]) == "<|im_end|>"
