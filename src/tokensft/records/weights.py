"""The loss weights that come with the data: per example, per assistant turn, per span of a turn.

    rules   = WeightRules(field="weight")                     # --weight-field, --allow-negative-weights
    example = to_example(record, spec, where, fmt, rules)     # formats: reads and checks every weight
    weight_sources(example)                                   # {"example", "turn", "span"} it carries
    token_weights(example, spans, text, targets, n)           # render: one weight per token

Where weights are written in a record:
    example  {"weight": 2.0, ...}: a top-level number (field name: --weight-field), any format
    turn     {"role": "assistant", "content": ..., "weight": 0.5}: messages format, assistant turns
    span     {"role": "assistant", "content": [{"type": "text", "text": "...", "weight": 3}, ...]}
A missing weight (absent, or null) is 1. A target token's weight is example x turn x part. The
parts of a content list are joined with "" for rendering; a token whose characters come from
two parts takes the weight of the part holding its first non-whitespace character inside the
target span (a BPE token " 4" goes with the part of "4", not with the space before it), and
the special token that closes the turn (<|im_end|>, the plain render's eos) takes the weight of
the turn's last part. Weights are finite numbers (a boolean is not one); negative ones (pushing
the model away from a token) only with --allow-negative-weights. Prompt tokens take
--prompt-weight instead (`Renderer`), never a weight written on a user or system message (except
0, axolotl's ShareGPT way of saying "not trained", which prompt tokens already are).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

from tokensft.core.errors import InputError

# The functions below take formats.Example / formats.Message by duck typing: formats imports this
# module to read weights, so importing it back (even for annotations) would close a circle.

TURN_KEY = "weight"  # on an assistant message, and on a content part
SOURCES = ("example", "turn", "span", "prompt")
SKIP_HINT = "or --skip-invalid to skip such rows"
NOT_ON_PROMPT = "weights apply to assistant turns (0 is accepted); prompt tokens take --prompt-weight"


@dataclass(frozen=True)
class WeightRules:
    """How weights are read: the per-example field, whether negative weights are allowed, and
    whether numbers come as text (CSV cells: "2.5" is 2.5 and "" is missing)."""

    field: str = "weight"
    allow_negative: bool = False
    text_numbers: bool = False


def parse_weight(value, rules: WeightRules, where: str, field: str) -> float | None:
    """A weight value: None when missing, else a finite float (InputError reason bad_weight)."""
    if value is None:
        return None
    if rules.text_numbers and isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = float(value)
        except ValueError:
            raise _bad(where, field, f"is the text {value!r}, expected a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        found = {dict: "an object", list: "a list", bool: "a boolean", str: "a string"}.get(type(value))
        raise _bad(where, field, f"is {found or type(value).__name__}, expected a number")
    try:
        value = float(value)
    except OverflowError:  # an integer past float's range (1e308)
        raise _bad(where, field, "is too large for a float") from None
    if not math.isfinite(value):
        raise _bad(where, field, f"is {value}, expected a finite number")
    if value < 0 and not rules.allow_negative:
        raise InputError(where, field, f"is negative ({value:g})", reason="bad_weight",
                         fix=f"pass --allow-negative-weights to push the model away from such tokens, or fix the "
                             f"value; {SKIP_HINT}")
    return value


def untrained(value) -> bool:
    """A prompt message's weight 0: axolotl's ShareGPT "not trained", which prompt tokens already are."""
    return value == 0 and not isinstance(value, bool)


def refuse_on_prompt(where: str, field: str) -> InputError:
    """The error for a weight written on a user or system message (or one of its parts)."""
    return InputError(where, field, NOT_ON_PROMPT, fix=f"remove it, {SKIP_HINT}", reason="bad_weight")


def parse_parts(parts: list, rules: WeightRules | None, where: str, field: str,
                assistant: bool) -> tuple[str, tuple[tuple[int, float | None], ...]]:
    """A content list [{"type": "text", "text": str, "weight"?: number}, ...] -> (joined text,
    parts), parts being ((end char of the part in the joined text, its weight or None), ...), or
    () when no part carries a weight. rules None: weights are not read (joined text only)."""
    texts, ends, weights = [], [], []
    pos = 0
    for i, part in enumerate(parts):
        at = f"{field}[{i}]"
        if not isinstance(part, dict):
            raise _wrong(where, at, part, 'an object {"type": "text", "text": ...}')
        if part.get("type", "text") != "text":
            raise InputError(where, f"{at}.type", f"is {part['type']!r}, expected 'text'",
                             fix=f"only text parts can be trained on, {SKIP_HINT}", reason="wrong_type")
        text = part.get("text")
        if text is None:
            raise InputError(where, f"{at}.text", "is missing", fix=f"add it, {SKIP_HINT}", reason="missing_field")
        if not isinstance(text, str):
            raise _wrong(where, f"{at}.text", text, "a string")
        weight = None
        if rules is not None and part.get(TURN_KEY) is not None:
            if assistant:
                weight = parse_weight(part[TURN_KEY], rules, where, f"{at}.{TURN_KEY}")
            elif not untrained(part[TURN_KEY]):
                raise refuse_on_prompt(where, f"{at}.{TURN_KEY}")
        pos += len(text)
        texts.append(text)
        ends.append(pos)
        weights.append(weight)
    if all(w is None for w in weights):
        return "".join(texts), ()
    return "".join(texts), tuple(zip(ends, weights))


def weight_sources(example) -> set[str]:
    """Which kinds of weight `example` carries on its targets: a subset of example, turn, span."""
    found = {"example"} if example.weight is not None else set()
    for m in example.messages:
        if m.is_target and m.weight is not None:
            found.add("turn")
        if m.is_target and any(w is not None for _, w in m.parts):
            found.add("span")
    return found


def message_weight(message, char: int | None) -> float:
    """Turn x part weight of `message`'s content character `char` (None: the token closing the turn,
    which takes the last part's weight)."""
    weight = _one(message.weight)
    if message.parts:
        ends = [end for end, _ in message.parts]
        i = len(ends) - 1 if char is None else min(bisect_right(ends, char), len(ends) - 1)
        weight *= _one(message.parts[i][1])
    return weight


def token_weights(example, spans: list[tuple[int, int]], text: str,
                  targets: list[tuple[int, int, int]], n: int) -> list[float]:
    """One weight per token (NaN where not a target): `targets` are (position, span index, char)
    from render.target_tokens, char = the token's first non-whitespace character inside span i, or -1 for the
    special token closing it; spans[i] is the i-th target message's text in the render."""
    messages = [m for m in example.messages if m.is_target]
    assert len(messages) == len(spans), (len(messages), len(spans))
    # where each span's content starts in `text`: a template that strips the content matched the stripped form
    starts = []
    for m, (start, end) in zip(messages, spans):
        stripped = end - start != len(m.content)
        starts.append(start - (len(m.content) - len(m.content.lstrip()) if stripped else 0))
    out = [math.nan] * n
    scale = _one(example.weight)
    for pos, s, char in targets:
        out[pos] = scale * message_weight(messages[s], None if char < 0 else char - starts[s])
    return out


def _one(weight: float | None) -> float:
    return 1.0 if weight is None else weight


def _bad(where: str, field: str, problem: str) -> InputError:
    return InputError(where, field, problem, fix=f"give a finite number, {SKIP_HINT}", reason="bad_weight")


def _wrong(where: str, field: str, value, expected: str) -> InputError:
    found = {dict: "an object", list: "a list", bool: "a boolean", str: "a string"}.get(type(value))
    found = found or ("a number" if isinstance(value, (int, float)) else type(value).__name__)
    return InputError(where, field, f"is {found}, expected {expected}", fix=f"fix the value, {SKIP_HINT}",
                      reason="wrong_type")
