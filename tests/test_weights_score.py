"""Weights that come with the data: per example, per turn, per span and --prompt-weight land on
exactly the right tokens (decoded, both tokenizer families, against a naive per-character
reference), `tokensft score` writes them, and bad weights are one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from conftest import TOKENIZERS, write_jsonl
from test_score_cli import QA, score_cli
from test_scoring import naive_scores
from transformers import AutoModelForCausalLM, AutoTokenizer

import tokensft
from tokensft.cli import main
from tokensft.core.schema import IGNORE_INDEX
from tokensft.records.formats import FormatSpec, detect_format, to_example
from tokensft.records.render import Renderer, chat_spans, plain_spans
from tokensft.records.weights import WeightRules

ANSWER = "Janet has 16 eggs. She eats 3 and bakes 4 into muffins; she sells the rest for $2 each."


def example_of(record, rules=WeightRules()):
    spec = FormatSpec()
    return to_example(record, spec, "r", detect_format(record, spec, "r"), rules)


def render(tokenizer, template, record, **kwargs):
    return Renderer(tokenizer, template, weighted=True, **kwargs)(example_of(record), "r")


def offsets_of(tokenizer, template, example):
    """The render's text, target spans and token offsets, as the Renderer computes them."""
    text, spans = chat_spans(example, tokenizer, "r") if template == "chat" else plain_spans(example, tokenizer)
    enc = tokenizer(text, add_special_tokens=template == "plain", return_offsets_mapping=True)
    return text, spans, list(enc["offset_mapping"])


def chat(*turns, weight=None):
    """A messages record: user and assistant turns alternating; an assistant turn is a str, a
    list of (text, weight) parts, or (parts, turn weight)."""
    messages = []
    for i, turn in enumerate(turns):
        if i % 2 == 0:
            messages.append({"role": "user", "content": turn})
            continue
        parts, turn_weight = turn if isinstance(turn, tuple) else (turn, None)
        content = parts if isinstance(parts, str) else [{"type": "text", "text": t, "weight": w} for t, w in parts]
        messages.append({"role": "assistant", "content": content, **({"weight": turn_weight} if turn_weight else {})})
    return {"messages": messages, **({"weight": weight} if weight is not None else {})}


def naive_weights(tokenizer, template, record, labels) -> list[float]:
    """Per character: every char of part i of target turn k weighs example x turn x part; a target
    token takes its first non-space in-span character's weight, a special token closing a turn its last part's."""
    example = example_of(record)
    text, spans, offsets = offsets_of(tokenizer, template, example)
    turns = [m for m in record["messages"] if m["role"] == "assistant"]
    char_weight, last = {}, []
    for (start, end), turn in zip(spans, turns):
        parts = turn["content"] if isinstance(turn["content"], list) else [{"text": turn["content"]}]
        scale = record.get("weight", 1) * turn.get("weight", 1)
        per_char = [scale * p.get("weight", 1) for p in parts for _ in p["text"]]
        shift = "".join(p["text"] for p in parts).find(text[start:end])  # 0 unless the template strips it
        char_weight.update({c: per_char[c - start + shift] for c in range(start, end)})
        last.append(scale * parts[-1].get("weight", 1))
    out = []
    for j, (a, b) in enumerate(offsets):
        inside = [c for c in range(a, b) if c in char_weight]
        if labels[j] == IGNORE_INDEX:
            out.append(math.nan)
        else:
            visible = [c for c in inside if not text[c].isspace()] or inside  # " 4" goes with "4"
            out.append(char_weight[visible[0]] if inside else last[max(k for k, s in enumerate(spans) if s[1] <= a)])
    return out


def decoded(tokenizer, rendered, weight) -> str:
    return tokenizer.decode([t for t, y, w in zip(rendered.input_ids, rendered.labels, rendered.weight)
                             if y != IGNORE_INDEX and w == weight])


def cut_at_tokens(tokenizer, template, record, n_parts=3) -> list[str]:
    """The response cut at the first characters of some of its target tokens: whole tokens per part."""
    rendered = Renderer(tokenizer, template)(example_of(record), "r")
    _, spans, offsets = offsets_of(tokenizer, template, example_of(record))
    (start, end), = spans
    inner = [offsets[j][0] for j, y in enumerate(rendered.labels) if y != IGNORE_INDEX and start < offsets[j][0] < end]
    cuts = [0] + [inner[len(inner) * i // n_parts] - start for i in range(1, n_parts)] + [len(ANSWER)]
    return [ANSWER[a:b] for a, b in zip(cuts, cuts[1:])]


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_span_weights_decode_to_their_parts(family, template):
    tokenizer = TOKENIZERS[family]()
    parts = cut_at_tokens(tokenizer, template, chat("How many eggs?", ANSWER))
    record = chat("How many eggs?", (list(zip(parts, [2, 3, 5])), 0.5), weight=4)
    rendered = render(tokenizer, template, record)
    plain = Renderer(tokenizer, template)(example_of(chat("How many eggs?", ANSWER)), "r")
    assert rendered.input_ids == plain.input_ids and rendered.labels == plain.labels  # weights move no token
    for part, weight in zip(parts, [4.0, 6.0, 10.0]):
        text = decoded(tokenizer, rendered, weight)
        if weight == 10.0:  # the turn's end-of-turn token takes its last part's weight
            assert text.endswith(tokenizer.eos_token)
            text = text[: -len(tokenizer.eos_token)]
        assert text.strip() == part.strip() and len(text) - len(part) <= 1
    assert all(math.isnan(w) == (y == IGNORE_INDEX) for w, y in zip(rendered.weight, rendered.labels))


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_span_weights_equal_the_naive_reference_for_any_cut(family, template):
    """Cuts inside tokens too: such a token takes the part of its first non-space in-span character."""
    tokenizer = TOKENIZERS[family]()
    rng = np.random.default_rng(0)
    for _ in range(12):
        cuts = sorted(rng.choice(np.arange(1, len(ANSWER)), size=3, replace=False))
        parts = [ANSWER[a:b] for a, b in zip([0, *cuts], [*cuts, len(ANSWER)])]
        record = chat("Hi", "Hello.", "How many eggs?", (list(zip(parts, [2, 3, 5, 7])), 0.5), weight=1.5)
        rendered = render(tokenizer, template, record)
        np.testing.assert_array_equal(rendered.weight, naive_weights(tokenizer, template, record, rendered.labels))


def test_span_weights_under_a_template_that_strips_the_content():
    """Llama-3-style templates trim the content: the parts still line up with their characters."""
    tokenizer = TOKENIZERS["bpe"]()
    tokenizer.chat_template = tokenizer.chat_template.replace("m['content']", "(m['content'] | trim)")
    content = "  " + ANSWER + "\n"
    for cuts in ([1, 5, 30], [2, 3, 60], [4, 19, len(content) - 1]):
        parts = [content[a:b] for a, b in zip([0, *cuts], [*cuts, len(content)])]
        record = chat("How many eggs?", list(zip(parts, [2, 3, 5, 7])))
        rendered = render(tokenizer, "chat", record)
        np.testing.assert_array_equal(rendered.weight, naive_weights(tokenizer, "chat", record, rendered.labels))


def test_token_spanning_two_parts_takes_the_first(family):
    tokenizer = TOKENIZERS[family]()
    record = chat("How many eggs?", ANSWER)
    rendered = Renderer(tokenizer, "chat")(example_of(record), "r")
    _, ((start, end),), offsets = offsets_of(tokenizer, "chat", example_of(record))
    j = next(j for j, (a, b) in enumerate(offsets) if start < a and b - a >= 2 and b < end)  # a multi-char target
    cut = offsets[j][0] + 1 - start
    weights = render(tokenizer, "chat", chat("How many eggs?", [(ANSWER[:cut], 2), (ANSWER[cut:], 3)])).weight
    assert rendered.labels[j] != IGNORE_INDEX and weights[j] == 2 and weights[j + 1] == 3 and weights[j - 1] == 2


def test_a_word_after_a_space_takes_its_own_part(family):
    """The README's example: BPE's " 4" starts on the space of "is ", yet goes with the part "4"."""
    tokenizer = TOKENIZERS[family]()
    record = chat("What is 2+2?", [("The answer is ", 0.2), ("4", 3)])
    rendered = render(tokenizer, "chat", record)
    eos = tokenizer.eos_token
    assert decoded(tokenizer, rendered, 3.0).replace(eos, "").strip() == "4"
    assert decoded(tokenizer, rendered, 0.2).strip() == "The answer is"


def test_end_of_turn_token_takes_the_last_part_even_an_empty_one():
    tokenizer = TOKENIZERS["bpe"]()
    rendered = render(tokenizer, "chat", chat("Hi", [("Hello there", 2), ("", 5)]))
    assert decoded(tokenizer, rendered, 2.0) == "Hello there" and decoded(tokenizer, rendered, 5.0) == "<|im_end|>"


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_turn_weights_times_the_example_weight(family, template):
    tokenizer = TOKENIZERS[family]()
    record = chat("What is 2 + 2?", ("The answer is 4.", 2), "And 10 + 20?", ("It is 30.", 3), weight=5)
    rendered = render(tokenizer, template, record)
    for text, weight in (("The answer is 4.", 10.0), ("It is 30.", 15.0)):
        assert decoded(tokenizer, rendered, weight).strip() == text + tokenizer.eos_token
    assert {w for w in rendered.weight if not math.isnan(w)} == {10.0, 15.0}


@pytest.mark.parametrize("record", [
    {"prompt": "Tell me a joke.", "response": "The cat naps.", "weight": 2.5},
    {"instruction": "Add.", "input": "10 and 20", "output": "10 + 20 = 30", "weight": 2.5},
    {"text": "The quick brown fox jumps over the lazy dog.", "weight": 2.5},
    chat("Hi", "Hello.", "2+2?", "4", weight=2.5),
], ids=["prompt-response", "alpaca", "text", "messages"])
def test_example_weight_in_every_format(family, record):
    tokenizer = TOKENIZERS[family]()
    rendered = render(tokenizer, "chat", record)
    unweighted = Renderer(tokenizer, "chat")(example_of({k: v for k, v in record.items() if k != "weight"}), "r")
    assert rendered.labels == unweighted.labels and any(y != IGNORE_INDEX for y in rendered.labels)
    assert all(w == 2.5 if y != IGNORE_INDEX else math.isnan(w) for w, y in zip(rendered.weight, rendered.labels))


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_prompt_weight_makes_every_other_token_a_target(family, template):
    tokenizer = TOKENIZERS[family]()
    record = chat("How many eggs?", ([("Janet has ", 2), ("16 eggs.", 3)], None))
    base = render(tokenizer, template, record)
    rendered = render(tokenizer, template, record, prompt_weight=0.25)
    assert rendered.input_ids == base.input_ids
    assert rendered.labels[0] == IGNORE_INDEX and math.isnan(rendered.weight[0]) and rendered.from_prompt[0] == 0
    for t in range(1, len(base.labels)):
        prompt = base.labels[t] == IGNORE_INDEX
        assert rendered.labels[t] == rendered.input_ids[t] and rendered.from_prompt[t] == int(prompt)
        assert rendered.weight[t] == (0.25 if prompt else base.weight[t])
    first = next(t for t, y in enumerate(base.labels) if y != IGNORE_INDEX)
    prompt_ids = [i for i, f in zip(rendered.input_ids[:first], rendered.from_prompt) if f]
    assert tokenizer.decode(prompt_ids) == tokenizer.decode(rendered.input_ids[1:first])
    cut = Renderer(tokenizer, template, max_length=first, weighted=True, prompt_weight=0.25)(example_of(record), "r")
    assert cut.truncated and len(cut.weight) == len(cut.from_prompt) == first and sum(cut.from_prompt) == first - 1


# --- tokensft score end to end ------------------------------------------------------------------

WEIGHTED = [
    chat("What is 2 + 2?", "The answer is 4.", weight=2.0),
    chat("Say hi", ("Hi", 0.5), "Again", "Hello!"),
    chat("Count", [("One, two, ", 1.5), ("three.", 3.0)]),
    chat("Hello there!", "Hello! How can I help you today?"),  # no weight: 1 at its targets
]


def test_score_writes_the_weight_column(tmp_path, family, tiny_dirs):
    code, out = score_cli(tmp_path, tiny_dirs[family], records=WEIGHTED)
    assert code == 0
    table = tokensft.load(out).data.table
    assert table.schema.field("weight").type == pa.list_(pa.float32()) and "from_prompt" not in table.column_names
    weights, labels = table.column("weight").to_pylist(), table.column("labels").to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[family])
    for got, record, y in zip(weights, WEIGHTED, labels):
        want = naive_weights(tokenizer, "chat", record, y)
        np.testing.assert_array_equal(np.array(got, np.float32), np.array(want, np.float32))
        assert all(math.isnan(w) == (label == IGNORE_INDEX) for w, label in zip(got, y))
    meta = tokensft.load_metadata(out)
    assert meta["weights"] == {"column": "weight", "sources": ["example", "span", "turn"], "example_field": "weight",
                               "prompt_weight": 0.0, "allow_negative": False}
    flat = np.array([w for row in weights for w in row if not math.isnan(w)])
    counts = meta["counts"]
    assert counts["weighted_targets"] == int((flat != 1).sum()) > 0 and counts["negative_weights"] == 0
    assert math.isclose(counts["weight_sum"], flat.sum()) and counts["prompt_targets"] == 0
    contents = [m["content"] for m in table.column("messages").to_pylist()[2]]
    assert contents == ["Count", "One, two, three."]  # the joined text, as references re-render it


def test_unweighted_data_has_no_weights(tmp_path, tiny_dirs):
    code, out = score_cli(tmp_path, tiny_dirs["bpe"])
    meta = tokensft.load_metadata(out)
    assert code == 0 and "weights" not in meta and "weight_sum" not in meta["counts"]
    assert "weight" not in tokensft.load(out).column_names


def test_prompt_weight_scores_prompt_tokens(tmp_path, family, tiny_dirs):
    code, out = score_cli(tmp_path, tiny_dirs[family], "--prompt-weight", "0.5", records=QA[:4])
    assert code == 0
    ds = tokensft.load(out)
    meta = tokensft.load_metadata(out)
    assert meta["weights"]["sources"] == ["prompt"] and meta["weights"]["prompt_weight"] == 0.5
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[family]).eval()
    for row in ds:
        assert row["num_targets"] == row["num_tokens"] - 1  # every token but the first
        ref = naive_scores(model, row["input_ids"], row["labels"], top_k=0)
        np.testing.assert_allclose(np.array(row["logprob"])[ref["pos"]], ref["logprob"], atol=1e-4)
        assert math.isclose(row["mean_logprob"], float(np.mean(ref["logprob"])), abs_tol=1e-4)
        prompt = np.array(row["from_prompt"], dtype=bool)
        assert np.all(np.array(row["weight"])[prompt] == 0.5) and prompt.sum() > 0
    assert meta["counts"]["prompt_targets"] == sum(sum(r) for r in ds["from_prompt"])


def test_training_prompt_targets_needs_their_weights_and_no_poft(tmp_path, tiny_dirs, capsys):
    """Without --weight the prompt tokens would train at weight 1; poft would compare unlike means."""
    code, out = score_cli(tmp_path, tiny_dirs["bpe"], "--prompt-weight", "0.5", records=QA[:4])
    assert code == 0
    capsys.readouterr()
    for extra, says in ((), "pass --weight weight"), (("--objective", "poft"), "poft compares"):
        assert main(["train", str(out), "-o", str(tmp_path / "t"), "--model", str(tiny_dirs["bpe"]), "-q", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err


def test_killed_weighted_run_resumes_to_a_clean_run(tmp_path, tiny_dirs, monkeypatch):
    """Its first chunk holds no weight at all: its shard still has the weighted schema (1 at targets)."""
    from test_score_cli import assert_same_rows

    from tokensft.preprocess import run as run_module

    records = [WEIGHTED[3], WEIGHTED[3], *WEIGHTED]
    flags = ("--shard-size", "2")
    _, clean = score_cli(tmp_path, tiny_dirs["bpe"], *flags, records=records, name="clean")
    real_write = run_module.write_shard
    written = []

    def dies_after_one(directory, chunk, table, stats):
        if written:
            raise KeyboardInterrupt
        written.append(chunk)
        return real_write(directory, chunk, table, stats)

    monkeypatch.setattr(run_module, "write_shard", dies_after_one)
    assert score_cli(tmp_path, tiny_dirs["bpe"], *flags, records=records, name="killed")[0] == 130
    monkeypatch.setattr(run_module, "write_shard", real_write)
    code, out = score_cli(tmp_path, tiny_dirs["bpe"], *flags, records=records, name="killed")
    assert code == 0 and written == [0]
    assert_same_rows(tokensft.load(out).data.table, tokensft.load(clean).data.table)
    assert tokensft.load_metadata(out)["counts"] == tokensft.load_metadata(clean)["counts"]


def test_weight_settings_are_the_run(tmp_path, tiny_dirs, capsys):
    assert score_cli(tmp_path, tiny_dirs["bpe"], records=WEIGHTED)[0] == 0
    code, _ = score_cli(tmp_path, tiny_dirs["bpe"], "--allow-negative-weights", records=WEIGHTED)
    assert code == 2 and "differs in: weights" in capsys.readouterr().err


def test_negative_weights_with_the_flag_and_csv_numbers(tmp_path, tiny_dirs):
    data = tmp_path / "data.csv"
    data.write_text('prompt,response,w\nWhat is 2 + 2?,The answer is 4.,-0.5\nSay hi,Hi,\n', encoding="utf-8")
    out = tmp_path / "out"
    args = ["score", str(data), "-m", str(tiny_dirs["bpe"]), "-o", str(out), "-q", "--weight-field", "w"]
    assert main(args) == 2  # negative, refused without the flag
    assert main([*args, "--allow-negative-weights"]) == 0
    ds, counts = tokensft.load(out), tokensft.load_metadata(out)["counts"]
    assert {w for w in ds["weight"][0] if not math.isnan(w)} == {-0.5} and counts["negative_weights"] == ds["num_targets"][0]
    assert {w for w in ds["weight"][1] if not math.isnan(w)} == {1.0}  # an empty cell: no weight


BAD_WEIGHTS = {
    "nan": ({"prompt": "a", "response": "b", "weight": math.nan}, (), "line 2, field 'weight': is nan, expected a finite"),
    "inf": ({"prompt": "a", "response": "b", "weight": math.inf}, (), "field 'weight': is inf"),
    "string": ({"prompt": "a", "response": "b", "weight": "2"}, (), "field 'weight': is a string, expected a number"),
    "bool": ({"prompt": "a", "response": "b", "weight": True}, (), "field 'weight': is a boolean"),
    "negative": ({"prompt": "a", "response": "b", "weight": -1}, (), "is negative (-1) (pass --allow-negative-weights"),
    "turn": (chat("a", ("b", [1])), (), "field 'messages[1].weight': is a list, expected a number"),
    "no-text": ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": [
        {"type": "text", "text": "b"}, {"type": "text", "weight": 2}]}]}, (), "field 'messages[1].content[1].text': is missing"),
    "on-prompt": ({"messages": [{"role": "user", "content": "a", "weight": 2}, {"role": "assistant", "content": "b"}]},
                  (), "field 'messages[0].weight': weights apply to assistant turns (0 is accepted); prompt tokens take --prompt-weight"),
    "field-typo": ({"prompt": "a", "response": "b", "weight": 2}, ("--weight-field", "wieght"), "--weight-field wieght: no row"),
    "prompt-nan": ({"prompt": "a", "response": "b"}, ("--prompt-weight", "nan"), "--prompt-weight nan: must be a finite"),
    "prompt-negative": ({"prompt": "a", "response": "b"}, ("--prompt-weight", "-1"), "--allow-negative-weights"),
}


@pytest.mark.parametrize("case", list(BAD_WEIGHTS))
def test_bad_weights_are_one_line(tmp_path, tiny_dirs, capsys, case):
    record, flags, expected = BAD_WEIGHTS[case]
    good = chat("fine", "row") if "messages" in record else {"prompt": "fine", "response": "row"}  # the same format
    data = write_jsonl(tmp_path / "data.jsonl", [good, record])
    code = main(["score", str(data), "-m", str(tiny_dirs["bpe"]), "-o", str(tmp_path / "o"), "-q", *flags])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and ("data.jsonl" in err or flags)


def test_skip_invalid_counts_bad_weights(tmp_path, tiny_dirs):
    records = [WEIGHTED[0], chat("a", "b", weight="heavy"), chat("a", ("b", -2))]
    code, out = score_cli(tmp_path, tiny_dirs["bpe"], "--skip-invalid", records=records)
    counts = tokensft.load_metadata(out)["counts"]
    assert code == 0 and counts["written"] == 1 and counts["skipped"] == {"bad_weight": 2}


def test_eval_prompt_of_a_content_list():
    """eval reads records without weights: a content list is joined, its weights ignored."""
    from tokensft.evaluate.run import eval_prompt

    tokenizer = TOKENIZERS["bpe"]()
    record = chat("How many eggs?", ([("Janet has ", 2), ("16 eggs.", -3)], 0.5))
    record["messages"][0]["weight"] = 9  # ignored too, where score would refuse it
    spec = FormatSpec()
    example = to_example(record, spec, "r", detect_format(record, spec, "r"))
    prompt, reference = eval_prompt(example, Renderer(tokenizer, "chat"), "r")
    assert reference == "Janet has 16 eggs." and tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    assert example.weight is None and example.messages[1].weight is None and example.messages[1].parts == ()
