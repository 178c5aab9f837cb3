"""Render an example to token ids and labels: which tokens the model is trained on.

The targets are exactly the tokens the assistant produced, including its end-of-turn token, and
nothing of the prompt or the template scaffolding. Spans are found on the *tokenized render*, not
by tokenizing prompt and response apart: a tokenizer may merge characters across the
prompt/response boundary, and only the offsets of the full render say which tokens carry
response text.

    text   = template(messages)                       # one string, through the chat template
    spans  = char ranges of each target message in text
    tokens = tokenizer(text, return_offsets_mapping=True)
    target = token overlaps a span, or is the special token (e.g. <|im_end|>) that closes it

Weights (a `weight` list aligned with input_ids, NaN where not a target) when the dataset is
weighted: a target token takes example x turn x part weight of the target message it belongs to
(`records.weights`): the part holding the token's first non-space character inside the span, and for the
closing special token, the turn's last part. With a prompt weight W != 0 (WIT, arXiv 2507.07817)
every other token but the first (it has no prefix) becomes a target too: its label is its id,
its weight W, and `from_prompt` marks it 1, template scaffolding included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokensft.core.errors import ConfigError, InputError
from tokensft.core.schema import IGNORE_INDEX
from tokensft.records.formats import Example, Message
from tokensft.records.weights import token_weights

TEMPLATES = ("auto", "chat", "plain")
PLAIN_SEPARATOR = "\n"  # between turns in the plain render of a conversation


@dataclass(frozen=True)
class Rendered:
    input_ids: list[int]
    labels: list[int]  # aligned with input_ids; IGNORE_INDEX where not trained
    truncated: bool
    weight: list[float] | None = None  # a weighted render: each target's weight, NaN elsewhere
    from_prompt: list[int] | None = None  # with a prompt weight: 1 at the prompt tokens made targets


def resolve_template(template: str, tokenizer, flag: str = "--template") -> str:
    """`auto` -> `chat` when the tokenizer has a chat template, else `plain`. `flag` is the option
    that set it, named in errors (`score --template`; a reference's is `enrich --ref-template`)."""
    if template not in TEMPLATES:
        raise ConfigError(f"{flag} {template!r}: use one of {', '.join(TEMPLATES)}")
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "auto":
        return "chat" if has_chat else "plain"
    if template == "chat" and not has_chat:
        raise ConfigError(f"{flag} chat: the model's tokenizer has no chat template (use {flag} plain)")
    return template


def _as_dicts(messages: tuple[Message, ...] | list[Message]) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _chat_text(tokenizer, messages, where: str, flag: str, generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(
            _as_dicts(messages), tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as exc:  # jinja2 raises its own errors, e.g. "roles must alternate user/assistant"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(where, None, f"the chat template rejects this conversation: {first}",
                         fix=f"fix the conversation, or use {flag} plain", reason="template") from None


def chat_spans(example: Example, tokenizer, where: str, flag: str = "--template") -> tuple[str, list[tuple[int, int]]]:
    """The chat-template render and the char spans of its target messages.

    Assistant turn i is searched between two bounds: the render of the turns before it (with the
    generation prompt) and the render of the turns up to it. A response that repeats text of the
    prompt, or of a later turn, is thus never matched there. Where a template renders earlier turns
    differently in a longer conversation (so the prefix is not a prefix), the bounds fall back to
    the previous match and the end of the text. Non-target turns are not searched at all.
    `flag` is the template option that errors suggest (see `resolve_template`).
    """
    messages = example.messages
    text = _chat_text(tokenizer, messages, where, flag)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message.role != "assistant" or not message.is_target:
            continue
        lower, upper = cursor, len(text)
        if i > 0:
            prefix = _chat_text(tokenizer, messages[:i], where, flag, generation_prompt=True)
            if text.startswith(prefix):
                lower = max(lower, len(prefix))
        through = _chat_text(tokenizer, messages[: i + 1], where, flag)
        if text.startswith(through):
            upper = len(through)
        start, end = _find(text, message.content, lower, upper)
        if start < 0:
            raise InputError(
                where, None, f"the chat template does not reproduce assistant turn {i} verbatim",
                fix=f"use {flag} plain, or a model whose template keeps the response text", reason="template",
            )
        cursor = end
        spans.append((start, end))
    return text, spans


def _find(text: str, content: str, lower: int, upper: int) -> tuple[int, int]:
    """The first match of the content (else of its stripped form) within text[lower:upper]."""
    for needle in (content, content.strip()):
        if needle:
            pos = text.find(needle, lower, upper)
            if pos >= 0:
                return pos, pos + len(needle)
    return -1, -1


def plain_spans(example: Example, tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """Turns joined by a newline; each target turn is followed by the eos token, which it owns."""
    eos = tokenizer.eos_token or ""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for i, message in enumerate(example.messages):
        sep = PLAIN_SEPARATOR if i > 0 else ""
        start = pos + len(sep)
        end = start + len(message.content)
        tail = eos if message.is_target else ""
        parts.append(sep + message.content + tail)
        pos = end + len(tail)
        if message.is_target:
            spans.append((start, end))
    return "".join(parts), spans


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if added.special:
            ids.add(token_id)
    return ids


def target_tokens(
    input_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]],
    special_ids: set[int], text: str,
) -> list[tuple[int, int, int]]:
    """(position, span index, char) of every target token of one render: a token is a target when
    its chars overlap a span (char: its first non-whitespace character inside the span, else its first:
    BPE tokens carry the space before a word, " 4", and the word decides its part); the first special token
    after a span (skipping whitespace-only scaffolding) is the turn's end-of-turn token (char -1).
    Position 0 may be listed: `label_tokens` drops it."""
    out: list[tuple[int, int, int]] = []
    j = 0
    for s, (span_start, span_end) in enumerate(spans):
        while j < len(input_ids) and offsets[j][1] <= span_start:
            j += 1
        last = -1
        while j < len(input_ids) and offsets[j][0] < span_end:
            start, end = offsets[j]
            if end > start and end > span_start:  # zero-width tokens carry no response text
                out.append((j, s, _first_visible(text, max(start, span_start), min(end, span_end))))
                last = j
            j += 1
        if last < 0:
            continue
        k = last + 1
        while k < len(input_ids) and input_ids[k] not in special_ids and not text[offsets[k][0]:offsets[k][1]].strip():
            k += 1
        if k < len(input_ids) and input_ids[k] in special_ids:
            out.append((k, s, -1))
    return out


def _first_visible(text: str, start: int, end: int) -> int:
    """The first non-whitespace character of text[start:end], else `start`."""
    for i in range(start, end):
        if not text[i].isspace():
            return i
    return start


def label_tokens(
    input_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]],
    special_ids: set[int], text: str, targets: list[tuple[int, int, int]] | None = None,
) -> list[int]:
    """Labels for one render: the token id at each of `target_tokens` (computed when not given),
    IGNORE_INDEX elsewhere and at position 0, which has no prefix to be predicted from."""
    if targets is None:
        targets = target_tokens(input_ids, offsets, spans, special_ids, text)
    labels = [IGNORE_INDEX] * len(input_ids)
    for j, _, _ in targets:
        labels[j] = input_ids[j]
    if labels:
        labels[0] = IGNORE_INDEX
    return labels


class Renderer:
    """Turns examples into `Rendered` for one tokenizer and template; holds the per-tokenizer state.

    `flag` is the command-line option that chose the template, which errors suggest changing:
    the scorer's `--template`, a reference's `--ref-template`. `weighted`: fill `Rendered.weight`
    (the data's weights; 1 at the targets of an example without any). `prompt_weight` W != 0:
    make every non-target token but the first a target of weight W (`from_prompt` 1 there).
    """

    def __init__(self, tokenizer, template: str = "auto", max_length: int | None = None, flag: str = "--template",
                 weighted: bool = False, prompt_weight: float = 0.0):
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("the tokenizer is not a fast tokenizer; tokensft needs offsets (tokenizer.json)")
        self.tokenizer = tokenizer
        self.template = resolve_template(template, tokenizer, flag)
        self.flag = flag
        self.max_length = max_length
        self.special_ids = _special_ids(tokenizer)
        self.weighted = weighted or prompt_weight != 0  # write `weight`; a prompt weight implies it
        self.prompt_weight = prompt_weight

    def __call__(self, example: Example, where: str) -> Rendered:
        if example.kind == "text" or self.template == "plain":
            text, spans = plain_spans(example, self.tokenizer)
            add_special = True  # the plain render gets the tokenizer's own BOS, if it adds one
        else:
            text, spans = chat_spans(example, self.tokenizer, where, self.flag)
            add_special = False  # the template already wrote every special token it wants
        enc = self.tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        input_ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        targets = target_tokens(input_ids, offsets, spans, self.special_ids, text)
        labels = label_tokens(input_ids, offsets, spans, self.special_ids, text, targets)
        weight = from_prompt = None
        if self.weighted:
            weight = token_weights(example, spans, text, targets, len(input_ids))
            weight[:1] = [math.nan] * min(1, len(weight))  # position 0 is never a target
        if self.prompt_weight != 0:
            from_prompt = [0] * len(input_ids)
            for t in range(1, len(input_ids)):
                if labels[t] == IGNORE_INDEX:
                    labels[t], weight[t], from_prompt[t] = input_ids[t], self.prompt_weight, 1
        truncated = self.max_length is not None and len(input_ids) > self.max_length
        if truncated:
            n = self.max_length
            input_ids, labels = input_ids[:n], labels[:n]
            weight = weight[:n] if weight is not None else None
            from_prompt = from_prompt[:n] if from_prompt is not None else None
        return Rendered(input_ids, labels, truncated, weight, from_prompt)
