"""tokensft eval's pieces: the answer checks on hand-written cases, and batched decoding against a
plain `model.generate` loop, one example at a time."""

from __future__ import annotations

import pytest
import torch
from conftest import TOKENIZERS, make_model

from tokensft.core.errors import ConfigError
from tokensft.evaluate.answers import last_number, parse_metric, reference_number
from tokensft.evaluate.generate import generate, generate_batch


@pytest.mark.parametrize("text, value", [
    ("The answer is 72.", "72"), ("1,234 apples", "1234"), ("it fell to -3 degrees", "-3"), ("costs $3.50", "3.50"),
    ("first 5, then 12", "12"), ("no digits here", None), ("a list 1,2,3", "3"), ("10,000,000 and .5", ".5"),
    ("pages 2-5", "5"), ("on 2023-10-05", "5"), ("it fell to \u22123", "-3"), ("about 1.5e-3", "0.0015"), ("3/4 of it", "0.75"),
])
def test_last_number(text, value):
    got = last_number(text)
    assert (got is None) if value is None else (got is not None and float(got) == float(value))


def test_reference_number_reads_gsm8k_marks():
    assert reference_number("He has 3 + 5 = 8 apples.\n#### 8") == 8
    assert reference_number("Total 1,000 then 2 more\n#### 1,002") == 1002
    assert reference_number("no mark, last is 7") == 7


@pytest.mark.parametrize("metric, completion, reference, correct", [
    ("numeric", "So she makes 9 * 2 = $18.\n#### 18", "Janet sells 16 - 3 - 4 = 9 duck eggs.\n#### 18", True),
    ("numeric", "The answer is 18.0", "#### 18", True),
    ("numeric", "9 * 2 = 18\n#### 18\nThen 19 more.", "#### 18", True),  # the marked answer, not the last number
    ("numeric", "#### 17 (or 18)", "#### 18", False),
    ("numeric", "1/4", "#### 3/4", False), ("numeric", "0.75", "#### 3/4", True), ("numeric", "#### 1e2", "100", True),
    ("numeric", "The answer is 17", "#### 18", False),
    ("numeric", "The answer is -4", "#### -4", True),
    ("numeric", "no number", "#### 4", False),
    ("exact", "  Paris\n", "paris", True),
    ("exact", "Paris.", "Paris", False),
    ("contains", "I think it is PARIS, France.", "paris", True),
    ("contains", "Rome", "Paris", False),
    ("regex:answer: (\\w+)", "reasoning... answer: Blue", "answer: blue", True),
    ("regex:answer: (\\w+)", "reasoning... answer: red", "blue", False),
    ("regex:answer: (\\w+)", "no marker", "blue", False),
    ("regex:[A-D]", "The option is C", "C", True),
    ("regex:answer is (\\d+)|#### (\\d+)", "so #### 12", "12", True),  # the group that took part
    ("regex:(\\d+)?", "abc", "5", False),
])
def test_metrics(metric, completion, reference, correct):
    assert parse_metric(metric).correct(completion, reference) is correct


def test_bad_metrics_are_config_errors():
    for spec in ("fuzzy", "regex:", "regex:(unclosed"):
        with pytest.raises(ConfigError):
            parse_metric(spec)


@pytest.fixture(scope="module", params=["bpe", "sp"])
def tiny(request):
    tokenizer = TOKENIZERS[request.param]()
    return make_model(tokenizer, request.param), tokenizer


def _plain_generate(model, prompt: list[int], max_new_tokens: int, stop: int, pad: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop, pad_token_id=pad)
    return out[0, len(prompt):].tolist()


def test_batched_greedy_equals_plain_generate_per_example(tiny):
    model, tokenizer = tiny
    texts = ["What is 2 + 2?", "Tell me a joke about cats, then another one about dogs and foxes.", "Hi",
             "Janet has 16 eggs. She eats 3 and bakes 4 into muffins."]
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    stop, pad = tokenizer.eos_token_id, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    expected = [_plain_generate(model, p, 12, stop, pad) for p in prompts]
    assert generate_batch(model, prompts[:1], 12, {stop}, pad) == expected[:1]  # batch 1
    assert generate(model, prompts, 12, {stop}, pad, batch_tokens=4096) == expected  # mixed lengths, one batch
    assert generate(model, prompts, 12, {stop}, pad, batch_tokens=1) == expected  # one example per batch


def test_completions_end_at_the_first_stop_id(tiny):
    model, tokenizer = tiny
    prompt = tokenizer("Hello there!")["input_ids"]
    free = generate_batch(model, [prompt], 10, set(), 0)[0]
    stop = free[3]  # make the 4th greedy token a stop id
    assert generate_batch(model, [prompt], 10, {stop}, 0)[0] == free[:free.index(stop) + 1]


def test_sampling_depends_on_the_seed_alone(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer(t)["input_ids"] for t in ("What is 2 + 2?", "Hi", "The quick brown fox")]
    together = generate(model, prompts, 8, set(), 0, temperature=1.0, seeds=[1, 2, 3], batch_tokens=4096)
    alone = [generate(model, [p], 8, set(), 0, temperature=1.0, seeds=[s])[0] for p, s in zip(prompts, [1, 2, 3])]
    assert together == alone
    other = generate(model, prompts, 8, set(), 0, temperature=1.0, seeds=[4, 5, 6], batch_tokens=4096)
    assert other != together  # different seeds draw differently (8 tokens from a spread distribution)
