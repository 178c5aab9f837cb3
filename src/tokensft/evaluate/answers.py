"""Answer checks for generation-based evaluation: pure functions of (completion, reference).

    metric = parse_metric("numeric")                 # exact | numeric | contains | regex:PATTERN
    answer = metric.extract(completion)              # the answer the model gave (None: none found)
    metric.correct(completion, reference)            # bool

    exact      the whole completion, whitespace collapsed and case folded, equals the reference's
    numeric    the last number in the completion equals the reference's number: the number after
               GSM8K's "#### " when the reference has one, else its last number. Commas between
               digit groups are dropped ("1,234" is 1234), a leading minus counts ("-3"), and
               numbers compare by value ("3.50" == "3.5", "7" == "7.0")
    contains   the normalized reference occurs in the normalized completion
    regex:P    the first group of P's first match (the whole match when P has no group), in the
               completion, equals the same extraction from the reference (or the whole normalized
               reference when P does not match it)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from tokensft.core.errors import ConfigError

METRICS = ("exact", "numeric", "contains", "regex:PATTERN")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")  # 1,234.5  -3  .5 (commas between digits only, see _value)
_GSM8K = re.compile(r"####\s*(.+)")


def normalize(text: str) -> str:
    """Whitespace collapsed to single spaces, stripped, case folded."""
    return " ".join(text.split()).casefold()


def _value(token: str) -> Decimal | None:
    """The number a matched token denotes, or None ("1,2,3" is not a number: commas must group thousands)."""
    body = token.lstrip("-")
    if "," in body and not re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", body):
        return None
    try:
        return Decimal(token.replace(",", ""))
    except InvalidOperation:
        return None


def last_number(text: str) -> Decimal | None:
    """The last number in `text` (see the module docstring), or None."""
    for token in reversed(_NUMBER.findall(text)):
        token = token.rstrip(",")
        value = _value(token)
        if value is None and "," in token:  # "1,2,3" is a list, not a number: its last item
            value = _value(token.rsplit(",", 1)[1])
        if value is not None:
            return value
    return None


def reference_number(reference: str) -> Decimal | None:
    """The reference's answer: the number after GSM8K's "####" when present, else its last number."""
    marked = _GSM8K.search(reference)
    return last_number(marked.group(1) if marked else reference)


@dataclass(frozen=True)
class Metric:
    """A parsed --metric: `name` is exact, numeric, contains or regex; `pattern` for regex."""

    name: str
    pattern: str | None = None

    @property
    def spec(self) -> str:
        return f"regex:{self.pattern}" if self.name == "regex" else self.name

    def extract(self, text: str) -> str | None:
        """The answer in a completion (or a reference) as this metric reads it; None when there is none."""
        if self.name == "numeric":
            value = last_number(text)
            return None if value is None else _plain(value)
        if self.name == "regex":
            match = re.search(self.pattern, text)
            if match is None:
                return None
            return normalize(match.group(1) if match.re.groups else match.group(0))
        return normalize(text)

    def expected(self, reference: str) -> str | None:
        """The answer a reference gives, as this metric compares it."""
        if self.name == "numeric":
            value = reference_number(reference)
            return None if value is None else _plain(value)
        if self.name == "regex":
            found = self.extract(reference)
            return found if found is not None else normalize(reference)
        return normalize(reference)

    def correct(self, completion: str, reference: str) -> bool:
        expected = self.expected(reference)
        if expected is None:
            return False
        if self.name == "contains":
            return expected in normalize(completion)
        answer = self.extract(completion)
        return answer is not None and answer == expected


def _plain(value: Decimal) -> str:
    """A canonical string for a number: 3.50 -> "3.5", 7.0 -> "7", -0 -> "0"."""
    text = format(value.normalize(), "f")
    text = text.rstrip("0").rstrip(".") if "." in text else text
    return "0" if text in ("-0", "") else text


def parse_metric(text: str) -> Metric:
    """Parse a --metric value; a ConfigError names the choices."""
    if text in ("exact", "numeric", "contains"):
        return Metric(text)
    if text.startswith("regex:"):
        pattern = text[len("regex:"):]
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"--metric {text!r}: not a regular expression ({exc})") from None
        if not pattern:
            raise ConfigError(f"--metric {text!r}: give a pattern after regex:")
        return Metric("regex", pattern)
    raise ConfigError(f"--metric {text!r}: use one of {', '.join(METRICS)}")
