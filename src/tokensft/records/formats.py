"""Normalize an input record into an `Example`: a conversation whose target messages get scored.

    spec = FormatSpec()                                   # auto-detect, every assistant turn a target
    fmt = detect_format(first_record, spec, where)        # once, on the first valid record
    example = to_example(record, spec, where, fmt)        # then for every row

Accepted layouts (field names as found in common SFT datasets):
    messages         {"messages" | "conversations": [{"role", "content"} | ShareGPT {"from", "value"}, ...]}
    alpaca           {"instruction", "input"?, "output"}
    prompt-response  {"prompt", "response"} | {"prompt", "completion"} | {"question", "answer"}  (GSM8K)
    text             {"text"}  -- plain text, every token a target
A message's content may also be a list of text parts [{"type": "text", "text": ...}, ...], joined
with "" (the joined text is what is rendered and stored). With `rules` (a `weights.WeightRules`;
`tokensft score` passes one) the weights written in the record are read too: per example (a
top-level field, any format), per assistant turn, per part of an assistant turn (a target token
weighs example x turn x part; one whose characters come from two parts takes the part of its first
character inside the target span, the turn's closing special token its last part's: see
`records.weights`). Without `rules` (eval), weights are ignored.
Every problem raises `InputError` naming the field and a `reason` (missing_field, empty_field,
wrong_type, unknown_role, no_target_turn, unknown_format, bad_weight) that is counted when rows are
skipped.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from tokensft.core.errors import ConfigError, InputError
from tokensft.records.weights import TURN_KEY, WeightRules, parse_parts, parse_weight, refuse_on_prompt, untrained

FORMATS = ("messages", "prompt-response", "alpaca", "text")
TARGETS = ("all", "last")
MESSAGES_FIELDS = ("messages", "conversations")
PROMPT_RESPONSE_PAIRS = (("prompt", "response"), ("prompt", "completion"), ("question", "answer"))
# ShareGPT speaks of "human" and "gpt"; everything is stored under the three chat roles.
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}
SKIP_HINT = "or --skip-invalid to skip such rows"


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant" | "text"
    content: str
    is_target: bool  # train on this message's tokens
    weight: float | None = None  # the turn's weight (assistant turns); None: none given, 1
    # content given as weighted parts: ((end char of the part in `content`, its weight or None), ...); () = one part
    parts: tuple[tuple[int, float | None], ...] = ()


@dataclass(frozen=True)
class Example:
    id: str
    kind: str  # "chat" (rendered through a chat template) or "text" (plain text, every token a target)
    messages: tuple[Message, ...]
    weight: float | None = None  # the example's weight (--weight-field); None: none given, 1


@dataclass(frozen=True)
class FormatSpec:
    """How to read records: the --format, --targets and --*-field flags."""

    format: str = "auto"  # auto | messages | prompt-response | alpaca | text
    targets: str = "all"  # all | last: which assistant turns are targets (messages format)
    messages_field: str | None = None
    prompt_field: str | None = None
    response_field: str | None = None
    system_field: str | None = None  # optional system prompt column for prompt-response/alpaca
    text_field: str | None = None
    id_field: str = "id"

    def __post_init__(self):
        if self.format != "auto" and self.format not in FORMATS:
            raise ConfigError(f"--format {self.format!r} is not one of auto, {', '.join(FORMATS)}")
        if self.targets not in TARGETS:
            raise ConfigError(f"--targets {self.targets!r} is not one of {', '.join(TARGETS)}")
        implied = self.implied_formats()
        if len(implied) > 1:
            raise ConfigError(f"the field flags name different formats ({', '.join(sorted(implied))}); give one")
        if implied and self.format != "auto" and self.format not in implied:
            raise ConfigError(f"--format {self.format} does not use the field flag given for {implied.pop()}")

    def implied_formats(self) -> set[str]:
        """The formats named by the field overrides: --prompt-field implies prompt-response, and so on."""
        implied = set()
        if self.messages_field:
            implied.add("messages")
        if self.prompt_field or self.response_field:
            implied.add("prompt-response")
        if self.text_field:
            implied.add("text")
        return implied


def detect_format(record: dict, spec: FormatSpec, where: str) -> str:
    """The format for a dataset: as given, implied by a field flag, or read from this record's keys."""
    if spec.format != "auto":
        return spec.format
    if implied := spec.implied_formats():
        return implied.pop()
    if any(_present(record, f) for f in MESSAGES_FIELDS):
        return "messages"
    if _present(record, "instruction") and _present(record, "output"):
        return "alpaca"
    if any(_present(record, p) and _present(record, r) for p, r in PROMPT_RESPONSE_PAIRS):
        return "prompt-response"
    if _present(record, "text"):
        return "text"
    keys = sorted(k for k in record if _present(record, k))
    raise InputError(
        where, None, f"cannot tell the format from the keys {keys}",
        fix="expected messages or conversations, instruction+output, prompt+response, prompt+completion, "
        "question+answer, or text; or name it with --format and --messages-field/--prompt-field/"
        "--response-field/--text-field",
        reason="unknown_format",
    )


def to_example(record: dict, spec: FormatSpec, where: str, fmt: str, rules: WeightRules | None = None) -> Example:
    """Normalize one record in format `fmt` (from `detect_format`) into an `Example`; with `rules`,
    read its weights too (else they are ignored)."""
    assert fmt in FORMATS, fmt
    if fmt == "messages":
        kind, messages = "chat", _messages(record, spec, where, rules)
    elif fmt == "text":
        field = spec.text_field or "text"
        kind, messages = "text", (Message("text", _required(record, field, where), True),)
    else:
        kind, messages = "chat", _system(record, spec, where) + _single_turn(record, spec, where, fmt)
    weight = parse_weight(record.get(rules.field), rules, where, rules.field) if rules else None
    return Example(_example_id(record, spec.id_field, where, messages, kind), kind, messages, weight)


def stable_id(example_messages, kind: str) -> str:
    """First 16 hex chars of sha256 over canonical JSON of the content: the same on every run and machine.
    Weights are not hashed: rescoring the same records with other
    weights, a weight ablation, keeps every id, and with it the eval split, random masks and
    `report --compare` matching."""
    payload = [kind, [[m.role, m.content, m.is_target] for m in example_messages]]
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


# --- per-format helpers --------------------------------------------------------------------------


def _messages(record: dict, spec: FormatSpec, where: str, rules: WeightRules | None) -> tuple[Message, ...]:
    field = spec.messages_field or next((f for f in MESSAGES_FIELDS if _present(record, f)), MESSAGES_FIELDS[0])
    turns = _value(record, field, where)
    if isinstance(turns, str):  # CSV cells and some Parquet exports hold the list as a JSON string
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            raise _wrong_type(where, field, turns, "a list of messages") from None
    if not isinstance(turns, list):
        raise _wrong_type(where, field, turns, "a list of messages")
    if not turns:
        raise InputError(where, field, "is an empty list", fix=f"give at least one assistant turn, {SKIP_HINT}",
                         reason="empty_field")
    parsed = [_turn(turn, f"{field}[{i}]", where, rules) for i, turn in enumerate(turns)]
    assistant_turns = [i for i, m in enumerate(parsed) if m.role == "assistant"]
    if not assistant_turns:
        raise InputError(where, field, "has no assistant turn to train on",
                         fix=f"add an assistant (or ShareGPT gpt) message, {SKIP_HINT}", reason="no_target_turn")
    targets = set(assistant_turns[-1:] if spec.targets == "last" else assistant_turns)
    return tuple(Message(m.role, m.content, i in targets, m.weight, m.parts) for i, m in enumerate(parsed))


def _turn(turn, field: str, where: str, rules: WeightRules | None) -> Message:
    """One message (not yet marked target or not): role, content (a list of parts joined), weights."""
    if not isinstance(turn, dict):
        raise _wrong_type(where, field, turn, "an object with role and content")
    # ShareGPT items are {"from", "value"}; both spellings normalize to (role, content).
    role_key, content_key = ("from", "value") if "from" in turn and "role" not in turn else ("role", "content")
    raw_role = _value(turn, role_key, where, f"{field}.{role_key}")
    if not isinstance(raw_role, str) or raw_role not in ROLES:
        raise InputError(where, f"{field}.{role_key}", f"unknown role {raw_role!r}",
                         fix=f"use one of system, user, assistant (or ShareGPT human, gpt); {SKIP_HINT}",
                         reason="unknown_role")
    role = ROLES[raw_role]
    content_field = f"{field}.{content_key}"
    content, parts = _value(turn, content_key, where, content_field), ()
    if isinstance(content, list):
        content, parts = parse_parts(content, rules, where, content_field, assistant=role == "assistant")
    if not isinstance(content, str):
        raise _wrong_type(where, content_field, content, "a string or a list of text parts")
    if role == "assistant" and not content.strip():  # an empty target has no tokens to score
        raise InputError(where, content_field, "is empty", fix=f"fill it in, {SKIP_HINT}", reason="empty_field")
    weight = None
    if rules is not None and turn.get(TURN_KEY) is not None:
        if role == "assistant":
            weight = parse_weight(turn[TURN_KEY], rules, where, f"{field}.{TURN_KEY}")
        elif not untrained(turn[TURN_KEY]):
            raise refuse_on_prompt(where, f"{field}.{TURN_KEY}")
    return Message(role, content, False, weight, parts)


def _single_turn(record: dict, spec: FormatSpec, where: str, fmt: str) -> tuple[Message, ...]:
    if fmt == "alpaca":
        prompt = _required(record, "instruction", where)
        extra = _optional(record, "input", where)
        if extra.strip():
            prompt += "\n\n" + extra
        response = _required(record, "output", where)
    else:
        prompt_field, response_field = _prompt_response_fields(record, spec, where)
        prompt = _required(record, prompt_field, where)
        response = _required(record, response_field, where)
    return Message("user", prompt, False), Message("assistant", response, True)


def _prompt_response_fields(record: dict, spec: FormatSpec, where: str) -> tuple[str, str]:
    """The (prompt, response) field names: the flags where given, else the first pair in the record."""
    for prompt_field, response_field in PROMPT_RESPONSE_PAIRS:
        prompt_field = spec.prompt_field or prompt_field
        response_field = spec.response_field or response_field
        if _present(record, prompt_field) and _present(record, response_field):
            return prompt_field, response_field
    prompt_field = spec.prompt_field or next((p for p, _ in PROMPT_RESPONSE_PAIRS if _present(record, p)), "prompt")
    response_field = spec.response_field or next((r for p, r in PROMPT_RESPONSE_PAIRS if p == prompt_field), "response")
    missing = prompt_field if not _present(record, prompt_field) else response_field
    pairs = ", ".join(f"{p}+{r}" for p, r in PROMPT_RESPONSE_PAIRS)
    raise InputError(where, missing, "is missing", reason="missing_field",
                     fix=f"expected one of the pairs {pairs}, or name them with --prompt-field/--response-field; "
                     f"{SKIP_HINT}")


def _system(record: dict, spec: FormatSpec, where: str) -> tuple[Message, ...]:
    if not spec.system_field:
        return ()
    system = _optional(record, spec.system_field, where)
    return (Message("system", system, False),) if system.strip() else ()


def _example_id(record: dict, id_field: str, where: str, messages: tuple[Message, ...], kind: str) -> str:
    if not _present(record, id_field):
        return stable_id(messages, kind)
    value = record[id_field]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _wrong_type(where, id_field, value, "a string or an integer")
    return str(value) if str(value).strip() else stable_id(messages, kind)


# --- field access: missing, empty and wrong-typed values each get their own reason ---------------


def _is_missing(value) -> bool:
    """None and NaN are how pandas and Parquet spell a missing cell."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _present(record: dict, field: str) -> bool:
    return field in record and not _is_missing(record[field])


def _value(record: dict, key: str, where: str, field: str | None = None):
    """record[key], or InputError(missing_field) naming `field` (default: `key`)."""
    if not _present(record, key):
        raise InputError(where, field or key, "is missing", fix=f"add it, {SKIP_HINT}", reason="missing_field")
    return record[key]


def _required(record: dict, key: str, where: str, field: str | None = None) -> str:
    """A non-empty string field. Whitespace-only counts as empty: it gives nothing to learn from."""
    value = _value(record, key, where, field)
    if not isinstance(value, str):
        raise _wrong_type(where, field or key, value, "a string")
    if not value.strip():
        raise InputError(where, field or key, "is empty", fix=f"fill it in, {SKIP_HINT}", reason="empty_field")
    return value


def _optional(record: dict, key: str, where: str) -> str:
    """A string field that may be absent or empty ("" then)."""
    if not _present(record, key):
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise _wrong_type(where, key, value, "a string")
    return value


def _wrong_type(where: str, field: str, value, expected: str) -> InputError:
    found = {dict: "an object", list: "a list", bool: "a boolean", str: "a string"}.get(type(value))
    found = found or ("a number" if isinstance(value, (int, float)) else type(value).__name__)
    return InputError(where, field, f"is {found}, expected {expected}", fix=f"fix the value, {SKIP_HINT}",
                      reason="wrong_type")
