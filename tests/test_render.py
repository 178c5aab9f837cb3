"""Target spans: decoding the target tokens gives back the response text (plus its end-of-turn
token), for every input format and both tokenizer families; nothing of the prompt is a target."""

from __future__ import annotations

import pytest
from conftest import TOKENIZERS

from tokensft.core.errors import ConfigError
from tokensft.records.formats import FormatSpec, detect_format, to_example
from tokensft.records.render import Renderer, label_tokens
from tokensft.core.schema import IGNORE_INDEX

RECORDS = {
    "messages": {"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "The answer is 4."},
        {"role": "user", "content": "And 10 + 20?"},
        {"role": "assistant", "content": "It is 30, so 30."},
    ]},
    "prompt-response": {"prompt": "Tell me a joke about cats.", "response": "The cat naps, then the cat naps again!"},
    "question-answer": {"question": "How many bolts?", "answer": "It takes 2/2=1 bolt\n#### 3"},
    "alpaca": {"instruction": "Add the numbers.", "input": "10 and 20", "output": "10 + 20 = 30"},
}


def target_runs(input_ids, labels):
    """Maximal runs of consecutive target positions, as lists of ids."""
    runs, current = [], []
    for token_id, label in zip(input_ids, labels):
        if label != IGNORE_INDEX:
            assert label == token_id
            current.append(token_id)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def responses(record) -> list[str]:
    if "messages" in record:
        return [m["content"] for m in record["messages"] if m["role"] == "assistant"]
    return [record.get("response") or record.get("answer") or record.get("output")]


@pytest.mark.parametrize("name", list(RECORDS))
@pytest.mark.parametrize("template", ["chat", "plain"])
def test_targets_decode_to_response(family, name, template):
    tokenizer = TOKENIZERS[family]()
    record = RECORDS[name]
    spec = FormatSpec()
    example = to_example(record, spec, "r", detect_format(record, spec, "r"))
    rendered = Renderer(tokenizer, template)(example, "r")
    runs = target_runs(rendered.input_ids, rendered.labels)
    expected = responses(record)
    assert len(runs) == len(expected)
    for run, text in zip(runs, expected):
        assert run[-1] == tokenizer.eos_token_id  # the turn's end-of-turn token is a target
        decoded = tokenizer.decode(run[:-1])
        # A merged boundary token may carry one leading space of scaffolding, nothing more.
        assert decoded.strip() == text.strip()
        assert len(decoded) - len(text) <= 1
    assert rendered.labels[0] == IGNORE_INDEX and not rendered.truncated


def test_targets_last_only(family):
    tokenizer = TOKENIZERS[family]()
    record = RECORDS["messages"]
    example = to_example(record, FormatSpec(targets="last"), "r", "messages")
    rendered = Renderer(tokenizer, "chat")(example, "r")
    runs = target_runs(rendered.input_ids, rendered.labels)
    assert len(runs) == 1 and tokenizer.decode(runs[0][:-1]).strip() == "It is 30, so 30."


def test_response_repeating_the_prompt_is_found_in_the_response(family):
    """The answer text also occurs in the prompt: only the response occurrence is a target."""
    tokenizer = TOKENIZERS[family]()
    record = {"prompt": "Repeat after me: The answer is 4.", "response": "The answer is 4."}
    example = to_example(record, FormatSpec(), "r", "prompt-response")
    rendered = Renderer(tokenizer, "chat")(example, "r")
    first = next(t for t, label in enumerate(rendered.labels) if label != IGNORE_INDEX)
    prompt_text = tokenizer.decode(rendered.input_ids[:first])
    assert prompt_text.count("The answer is 4.") == 1  # the prompt's copy stayed in the context


def test_text_format_every_token_is_a_target(family):
    tokenizer = TOKENIZERS[family]()
    example = to_example({"text": "The quick brown fox jumps over the lazy dog."}, FormatSpec(), "r", "text")
    rendered = Renderer(tokenizer)(example, "r")
    first_text = 1 if rendered.input_ids[0] == tokenizer.bos_token_id else 0
    # every token after the first is a target; the first has no context to be predicted from
    assert all(label != IGNORE_INDEX for label in rendered.labels[max(1, first_text):])
    assert rendered.labels[-1] == tokenizer.eos_token_id


def test_truncation_keeps_the_start_and_flags(family):
    tokenizer = TOKENIZERS[family]()
    example = to_example(RECORDS["prompt-response"], FormatSpec(), "r", "prompt-response")
    full = Renderer(tokenizer, "chat")(example, "r")
    cut = Renderer(tokenizer, "chat", max_length=len(full.input_ids) - 3)(example, "r")
    assert cut.truncated and cut.input_ids == full.input_ids[:-3] and cut.labels == full.labels[:-3]


def test_label_tokens_merged_boundary_and_zero_width():
    # text: "Q: hi|A: yo" with a token "i|A" spanning prompt and response chars (the merge case)
    text = "hi|yo<e>"
    offsets = [(0, 1), (1, 3), (3, 5), (5, 8), (8, 8)]
    ids = [10, 11, 12, 99, 50]
    labels = label_tokens(ids, offsets, [(3, 5)], special_ids={99, 50}, text=text)
    assert labels == [IGNORE_INDEX, IGNORE_INDEX, 12, 99, IGNORE_INDEX]
    labels = label_tokens(ids, offsets, [(2, 5)], special_ids={99, 50}, text=text)
    assert labels == [IGNORE_INDEX, 11, 12, 99, IGNORE_INDEX]  # a token overlapping the span is a target


def test_chat_template_required_for_chat():
    tokenizer = TOKENIZERS["bpe"]()
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        Renderer(tokenizer, "chat")
    assert Renderer(tokenizer, "auto").template == "plain"


def test_trimming_template_never_matches_a_later_turn():
    """Llama-3-style templates trim the content: "Yes\n" is rendered "Yes", and the untrimmed text
    occurs in the next user turn. The search is bounded by the render up to this turn."""
    tokenizer = TOKENIZERS["bpe"]()
    tokenizer.chat_template = tokenizer.chat_template.replace("m['content']", "(m['content'] | trim)")
    record = {"messages": [
        {"role": "user", "content": "Q"}, {"role": "assistant", "content": "Yes\n"},
        {"role": "user", "content": "Say Yes\nplease"}, {"role": "assistant", "content": "Ok"},
    ]}
    example = to_example(record, FormatSpec(), "r", "messages")
    rendered = Renderer(tokenizer, "chat")(example, "r")
    runs = target_runs(rendered.input_ids, rendered.labels)
    assert [tokenizer.decode(run) for run in runs] == ["Yes<|im_end|>", "Ok<|im_end|>"]


def test_template_error_is_an_input_error():
    from tokensft.core.errors import InputError

    tokenizer = TOKENIZERS["bpe"]()
    tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    example = to_example({"prompt": "a", "response": "b"}, FormatSpec(), "data.jsonl line 3", "prompt-response")
    with pytest.raises(InputError, match="data.jsonl line 3: the chat template rejects this conversation: Conversation roles") as info:
        Renderer(tokenizer, "chat")(example, "data.jsonl line 3")
    assert info.value.reason == "template"


def test_target_tokens_give_the_first_char_inside_the_span():
    """What weights read: a token straddling the prompt/response boundary starts, for its weight,
    at the span's first character; the closing special token is marked -1."""
    from tokensft.records.render import target_tokens

    text = "hi|yo<e>"
    offsets = [(0, 1), (1, 3), (3, 5), (5, 8), (8, 8)]
    targets = target_tokens([10, 11, 12, 99, 50], offsets, [(2, 5)], special_ids={99, 50}, text=text)
    assert targets == [(1, 0, 2), (2, 0, 3), (3, 0, -1)]
