"""Record formats: each layout is detected and normalized; each bad record names its field and reason."""

import math

import pytest

from tokensft.core.errors import ConfigError, InputError
from tokensft.records.formats import FormatSpec, Message, detect_format, stable_id, to_example
from tokensft.records.weights import WeightRules

WHERE = "data.jsonl line 12"

CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
}


def normalize(record, spec=FormatSpec()):
    """detect_format then to_example, as the caller does."""
    return to_example(record, spec, WHERE, detect_format(record, spec, WHERE))


def error_of(record, spec=FormatSpec()) -> InputError:
    with pytest.raises(InputError) as info:
        normalize(record, spec)
    return info.value


def test_messages_every_assistant_turn_is_a_target_by_default():
    example = normalize(CHAT)
    assert example.kind == "chat"
    assert example.messages == (
        Message("system", "Be brief.", False),
        Message("user", "Hi", False),
        Message("assistant", "Hello.", True),
        Message("user", "2+2?", False),
        Message("assistant", "4", True),
    )


def test_messages_targets_last_marks_only_the_last_assistant_turn():
    example = normalize(CHAT, FormatSpec(targets="last"))
    assert [m.is_target for m in example.messages] == [False, False, False, False, True]


def test_sharegpt_conversations_are_normalized():
    record = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
    assert detect_format(record, FormatSpec(), WHERE) == "messages"
    assert normalize(record).messages == (Message("user", "Hi", False), Message("assistant", "Hello.", True))


def test_messages_as_a_json_string_cell_is_parsed():
    record = {"messages": '[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]'}
    assert normalize(record).messages[1] == Message("assistant", "Yo", True)


def test_empty_user_and_system_content_is_allowed():
    record = {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": ""},
                           {"role": "assistant", "content": "ok"}]}
    assert [m.content for m in normalize(record).messages] == ["", "", "ok"]


@pytest.mark.parametrize(
    "turns, field, reason, text",
    [
        ([{"role": "bot", "content": "x"}], "messages[0].role", "unknown_role", "unknown role 'bot'"),
        ([{"role": "user", "content": "x"}], "messages", "no_target_turn", "has no assistant turn"),
        ([{"role": "user", "content": "x"}, {"role": "assistant"}], "messages[1].content", "missing_field",
         "is missing"),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": None}], "messages[1].content",
         "missing_field", "is missing"),
        ([{"role": "assistant", "content": ""}], "messages[0].content", "empty_field", "is empty"),
        ([{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}], "messages[0].content[0]",
         "wrong_type", "is a string, expected an object"),  # a content list holds parts {"type": "text", ...}
        ([{"role": "user", "content": {"a": 1}}, {"role": "assistant", "content": "b"}], "messages[0].content",
         "wrong_type", "is an object, expected a string or a list of text parts"),
        ([{"content": "x"}], "messages[0].role", "missing_field", "is missing"),
        (["hello"], "messages[0]", "wrong_type", "is a string, expected an object"),
        ([], "messages", "empty_field", "is an empty list"),
        ({"role": "user"}, "messages", "wrong_type", "is an object, expected a list of messages"),
    ],
)
def test_bad_messages_name_the_field_and_reason(turns, field, reason, text):
    err = error_of({"messages": turns}, FormatSpec(format="messages"))
    assert str(err).startswith(f"{WHERE}, field '{field}': {text}")
    assert err.reason == reason and err.field == field
    assert "--skip-invalid" in str(err)


def test_unknown_role_lists_the_accepted_roles():
    err = error_of({"messages": [{"role": "bot", "content": "x"}]})
    assert "use one of system, user, assistant" in str(err)


@pytest.mark.parametrize(
    "record, prompt, response",
    [
        ({"prompt": "p", "response": "r"}, "p", "r"),
        ({"prompt": "p", "completion": "c"}, "p", "c"),
        ({"question": "Natalia sold clips...", "answer": "72\n#### 72"}, "Natalia sold clips...", "72\n#### 72"),
        ({"prompt": "p", "response": "r", "completion": "c"}, "p", "r"),  # pairs are tried in order
    ],
)
def test_prompt_response_pairs(record, prompt, response):
    assert detect_format(record, FormatSpec(), WHERE) == "prompt-response"
    example = normalize(record)
    assert example.kind == "chat"
    assert example.messages == (Message("user", prompt, False), Message("assistant", response, True))


def test_alpaca_with_and_without_input():
    with_input = {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}
    assert detect_format(with_input, FormatSpec(), WHERE) == "alpaca"
    assert normalize(with_input).messages == (
        Message("user", "Translate.\n\nBonjour", False), Message("assistant", "Hello", True))
    empty_input = {"instruction": "Say hi.", "input": "", "output": "hi"}
    for no_input in (empty_input, {"instruction": "Say hi.", "output": "hi"}):
        assert normalize(no_input).messages[0] == Message("user", "Say hi.", False)


def test_system_field_adds_a_system_message_when_non_empty():
    spec = FormatSpec(system_field="sys")
    example = normalize({"prompt": "p", "response": "r", "sys": "Be kind."}, spec)
    assert example.messages[0] == Message("system", "Be kind.", False)
    assert len(normalize({"prompt": "p", "response": "r", "sys": ""}, spec).messages) == 2
    assert len(normalize({"prompt": "p", "response": "r"}, spec).messages) == 2


def test_text_format():
    example = normalize({"text": "Once upon a time."})
    assert example.kind == "text"
    assert example.messages == (Message("text", "Once upon a time.", True),)


def test_field_overrides_imply_the_format():
    spec = FormatSpec(prompt_field="q", response_field="a")
    record = {"q": "Why?", "a": "Because.", "text": "ignored"}
    assert detect_format(record, spec, WHERE) == "prompt-response"
    assert [m.content for m in normalize(record, spec).messages] == ["Why?", "Because."]
    assert detect_format({"body": "x"}, FormatSpec(text_field="body"), WHERE) == "text"
    assert normalize({"body": "x"}, FormatSpec(text_field="body")).messages[0].content == "x"
    chat = {"dialog": CHAT["messages"]}
    assert normalize(chat, FormatSpec(messages_field="dialog")).messages == normalize(CHAT).messages
    # one side overridden: the other is taken from the known pairs
    assert normalize({"q": "p?", "completion": "c"}, FormatSpec(prompt_field="q")).messages[1].content == "c"


def test_bad_specs_name_the_flag():
    with pytest.raises(ConfigError, match="--format 'sharegpt'"):
        FormatSpec(format="sharegpt")
    with pytest.raises(ConfigError, match="--targets 'first'"):
        FormatSpec(targets="first")
    with pytest.raises(ConfigError, match="different formats"):
        FormatSpec(messages_field="m", text_field="t")
    with pytest.raises(ConfigError, match="--format text"):
        FormatSpec(format="text", prompt_field="q")


def test_unknown_layout_names_the_keys_and_the_flags():
    err = error_of({"foo": "x", "bar": "y", "nothing": None})
    assert str(err).startswith(f"{WHERE}: cannot tell the format from the keys ['bar', 'foo']")
    assert "--format" in str(err) and "--prompt-field" in str(err) and err.reason == "unknown_format"


@pytest.mark.parametrize(
    "record, field, reason, text",
    [
        ({"prompt": "p", "response": ""}, "response", "empty_field", "is empty"),
        ({"prompt": "  \n", "response": "r"}, "prompt", "empty_field", "is empty"),
        ({"prompt": "p", "response": None}, "response", "missing_field", "is missing"),
        ({"prompt": "p", "response": math.nan}, "response", "missing_field", "is missing"),
        ({"prompt": "p"}, "response", "missing_field", "is missing"),
        ({"question": "q"}, "answer", "missing_field", "is missing"),
        ({"prompt": 3, "response": "r"}, "prompt", "wrong_type", "is a number, expected a string"),
    ],
)
def test_bad_prompt_response_fields(record, field, reason, text):
    err = error_of(record, FormatSpec(format="prompt-response"))
    assert str(err).startswith(f"{WHERE}, field '{field}': {text}")
    assert err.reason == reason


def test_bad_alpaca_and_text_fields():
    assert error_of({"instruction": "i", "output": ""}).field == "output"
    assert error_of({"instruction": "i", "input": 5, "output": "o"}).reason == "wrong_type"
    err = error_of({"text": ""}, FormatSpec(format="text"))
    assert str(err).startswith(f"{WHERE}, field 'text': is empty") and err.reason == "empty_field"
    assert error_of({"text": {"a": 1}}).reason == "wrong_type"


def test_stable_ids_are_deterministic_and_track_content():
    a, b = normalize({"prompt": "p", "response": "r"}), normalize({"prompt": "p", "response": "r"})
    assert a.id == b.id and len(a.id) == 16 and int(a.id, 16) >= 0
    assert a.id != normalize({"prompt": "p", "response": "r!"}).id
    # is_target and kind are part of the identity too
    assert normalize(CHAT).id != normalize(CHAT, FormatSpec(targets="last")).id
    assert stable_id(a.messages, "chat") != stable_id(a.messages, "text")
    # pinned value: canonical JSON, so any change of encoding shows up here
    import hashlib

    canonical = '["chat",[["user","p",false],["assistant","r",true]]]'
    assert a.id == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_explicit_id_is_kept():
    assert normalize({"id": "ex-7", "text": "t"}).id == "ex-7"
    assert normalize({"id": 42, "text": "t"}).id == "42"
    assert normalize({"uid": "u1", "text": "t"}, FormatSpec(id_field="uid")).id == "u1"
    assert normalize({"id": "", "text": "t"}).id == normalize({"text": "t"}).id  # empty id: derived instead
    assert normalize({"id": None, "text": "t"}).id == normalize({"text": "t"}).id
    assert error_of({"id": [1], "text": "t"}).reason == "wrong_type"


# --- weights and content parts (read with WeightRules, as `tokensft score` does) ---------------

RULES = WeightRules()


def weighted(record, rules=RULES, spec=FormatSpec()):
    return to_example(record, spec, WHERE, detect_format(record, spec, WHERE), rules)


def parts_turn(*parts, **extra):
    return {"role": "assistant", "content": [{"type": "text", "text": t, **({"weight": w} if w is not None else {})}
                                             for t, w in parts], **extra}


def test_weights_per_example_turn_and_part():
    record = {"weight": 2, "messages": [{"role": "user", "content": [{"text": "Hi "}, {"text": "there"}]},
                                        parts_turn(("Hello", 3), (" you", None), weight=0.5)]}
    example = weighted(record)
    assert example.weight == 2.0
    assert example.messages == (Message("user", "Hi there", False),
                                Message("assistant", "Hello you", True, 0.5, ((5, 3.0), (9, None))))
    assert weighted({"prompt": "p", "response": "r", "weight": 1.5}).weight == 1.5
    assert weighted({"text": "t", "w": 4}, WeightRules(field="w")).weight == 4.0
    assert weighted({"text": "t", "weight": None}).weight is None  # null: no weight, 1


def test_weight_0_on_a_prompt_message_is_accepted_as_not_trained():
    """axolotl's ShareGPT marks human turns "weight": 0; prompt tokens are untrained already."""
    record = {"messages": [{"role": "user", "content": [{"text": "Hi", "weight": 0}], "weight": 0},
                           {"role": "system", "content": "s", "weight": 0.0}, {"role": "assistant", "content": "Hey"}]}
    example = weighted(record)
    assert example.messages[0] == Message("user", "Hi", False) and example.messages[1] == Message("system", "s", False)
    for bad in (1, True, 0.5):
        with pytest.raises(InputError, match="weights apply to assistant turns"):
            weighted({"messages": [{"role": "user", "content": "Hi", "weight": bad}, {"role": "assistant", "content": "x"}]})


def test_content_parts_without_weights_equal_a_string():
    as_parts = {"messages": [{"role": "user", "content": "Hi"}, parts_turn(("Hel", None), ("lo.", None))]}
    as_text = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    assert weighted(as_parts) == weighted(as_text) == normalize(as_parts)


def test_without_rules_weights_are_ignored():
    record = {"weight": "bad", "messages": [{"role": "user", "content": "Hi", "weight": -1},
                                            parts_turn(("Hello", math.nan), weight=True)]}
    example = normalize(record)
    assert example.weight is None and example.messages[1] == Message("assistant", "Hello", True)


@pytest.mark.parametrize(
    "record, field, reason, text",
    [
        ({"text": "t", "weight": math.nan}, "weight", "bad_weight", "is nan, expected a finite number"),
        ({"text": "t", "weight": -math.inf}, "weight", "bad_weight", "is -inf, expected a finite number"),
        ({"text": "t", "weight": "2"}, "weight", "bad_weight", "is a string, expected a number"),
        ({"text": "t", "weight": False}, "weight", "bad_weight", "is a boolean, expected a number"),
        ({"text": "t", "weight": -0.5}, "weight", "bad_weight", "is negative (-0.5)"),
        ({"messages": [parts_turn(("a", 1), ("b", "x"))]}, "messages[0].content[1].weight", "bad_weight", "is a string"),
        ({"messages": [{"role": "assistant", "content": "a", "weight": [2]}]}, "messages[0].weight", "bad_weight",
         "is a list"),
        ({"messages": [{"role": "user", "content": "a", "weight": 2}, {"role": "assistant", "content": "b"}]},
         "messages[0].weight", "bad_weight", "weights apply to assistant turns (0 is accepted); prompt tokens take --prompt-weight"),
        ({"messages": [{"role": "user", "content": [{"text": "a", "weight": 2}]}, {"role": "assistant", "content": "b"}]},
         "messages[0].content[0].weight", "bad_weight", "weights apply to assistant turns"),
        ({"messages": [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text"}]}]},
         "messages[0].content[1].text", "missing_field", "is missing"),
        ({"messages": [{"role": "assistant", "content": [{"text": 5}]}]}, "messages[0].content[0].text", "wrong_type",
         "is a number, expected a string"),
        ({"messages": [{"role": "assistant", "content": [{"type": "image", "text": "a"}]}]},
         "messages[0].content[0].type", "wrong_type", "is 'image', expected 'text'"),
        ({"messages": [{"role": "assistant", "content": [{"text": " "}, {"text": ""}]}]}, "messages[0].content",
         "empty_field", "is empty"),
        ({"conversations": [{"from": "gpt", "value": "a", "weight": "x"}]}, "conversations[0].weight", "bad_weight",
         "is a string"),
        ({"prompt": "a", "response": "b", "weight": 10 ** 400}, "weight", "bad_weight", "is too large for a float"),
    ],
)
def test_bad_weights_name_the_field_and_reason(record, field, reason, text):
    with pytest.raises(InputError) as info:
        weighted(record)
    err = info.value
    assert str(err).startswith(f"{WHERE}, field '{field}': {text}"), str(err)
    assert err.reason == reason and "--skip-invalid" in str(err)


def test_negative_weights_with_the_flag_and_numbers_as_text():
    assert weighted({"text": "t", "weight": -2}, WeightRules(allow_negative=True)).weight == -2.0
    assert "--allow-negative-weights" in str(error_of_rules({"text": "t", "weight": -2}))
    csv = WeightRules(text_numbers=True)
    assert weighted({"text": "t", "weight": "2.5"}, csv).weight == 2.5
    assert weighted({"text": "t", "weight": ""}, csv).weight is None  # an empty cell
    assert error_of_rules({"text": "t", "weight": "nan"}, csv).reason == "bad_weight"
    assert error_of_rules({"text": "t", "weight": "heavy"}, csv).reason == "bad_weight"


def error_of_rules(record, rules=RULES) -> InputError:
    with pytest.raises(InputError) as info:
        weighted(record, rules)
    return info.value


def test_stable_ids_do_not_depend_on_weights():
    """A weight ablation rescoring the same records keeps every id (eval split, random masks, --compare)."""
    base = {"messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]}
    plain = normalize(base).id
    variants = [base, {**base, "weight": 2}, {"messages": [base["messages"][0], {**base["messages"][1], "weight": 2}]},
                {"messages": [base["messages"][0], parts_turn(("r", 2))]}]
    assert {weighted(v).id for v in variants} == {plain}
    assert normalize({"messages": [base["messages"][0], {"role": "assistant", "content": "s"}]}).id != plain
