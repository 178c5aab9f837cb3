"""Answer checks for generation-based evaluation: pure functions of (completion, reference).

    metric = parse_metric("numeric")                 # exact | numeric | contains | regex:PATTERN | choice | math
    grade = metric.grade(completion, reference)      # Grade(verdict, answer, note)
    grade.verdict                                    # True, False, or None: no answer found ("no answer")
    tokensft.grade(completion, reference, "math")    # the same verdict, as public Python

    exact      the whole completion, whitespace collapsed and case folded, equals the reference's
    numeric    the completion's number equals the reference's: in each, the first number after the
               last GSM8K "####" mark when there is one, else the last number. Commas between
               digit groups are dropped ("1,234" is 1234), a minus sign counts ("-3", "−3"; not
               the hyphen of "2-5" or a date), fractions and scientific notation are numbers
               ("3/4", "1.5e-3"), and numbers compare by value ("3.50" == "3.5" == "7/2" / 1 ...)
    contains   the normalized reference occurs in the normalized completion
    regex:P    the first group of P's first match (the whole match when P has no group), in the
               completion, equals the same extraction from the reference (or the whole normalized
               reference when P does not match it)
    choice     a multiple-choice letter A-E: the last "answer is (B)" / "answer: B", else a
               completion that is only a letter ("C", "(C)", "C."), else the last "(B)"; none of
               these is no answer -- never "the most similar option" (BLL's matcher always picks one)
    math       Math-Verify (`tokensft[math]`): the last \boxed{} first, symbolic equivalence; see mathgrade

A completion with no answer the metric can read (no number, no letter, no match, nothing Math-Verify
parses) is wrong, and counted apart: its verdict is None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from tokensft.core.errors import ConfigError

METRICS = ("exact", "numeric", "contains", "regex:PATTERN", "choice", "math")
_ANSWER_IS = re.compile(r"answer(?: is|:)?\s*(?:option\s*)?\(?\**([A-E])\b", re.IGNORECASE)
_ONLY_LETTER = re.compile(r"\s*\(?([A-E])[).:]?\s*")
_PAREN_LETTER = re.compile(r"\(([A-E])\)")
# 1,234.5  -3  .5  3/4  1.5e-3; a minus only where it is no hyphen (not after a word character or a dot)
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?(?:/\d+(?![\d.]))?")
_MINUSES = str.maketrans({"\u2212": "-", "\u2013": "-"})  # the minus sign and an en dash written for one


def normalize(text: str) -> str:
    """Whitespace collapsed to single spaces, stripped, case folded."""
    return " ".join(text.split()).casefold()


def _value(token: str) -> Fraction | None:
    """The number a matched token denotes, exactly, or None ("1,2,3" is not a number: commas must
    group thousands; "3/0" is none either)."""
    body = token.lstrip("-").split("/")[0].split("e")[0].split("E")[0]
    if "," in body and not re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", body):
        return None
    try:
        return Fraction(token.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def last_number(text: str) -> Fraction | None:
    """The last number in `text` (see the module docstring), or None."""
    for token in reversed(_NUMBER.findall(text.translate(_MINUSES))):
        token = token.rstrip(",")
        value = _value(token)
        if value is None and "," in token:  # "1,2,3" is a list, not a number: its last item
            value = _value(token.rsplit(",", 1)[1])
        if value is not None:
            return value
    return None


def marked_number(text: str) -> Fraction | None:
    """The answer a text gives: the first number after its last GSM8K "####" mark, else its last number."""
    if "####" in text:
        after = text.rsplit("####", 1)[1].translate(_MINUSES)
        for token in _NUMBER.findall(after):
            value = _value(token.rstrip(","))
            if value is not None:
                return value
        return None
    return last_number(text)


def reference_number(reference: str) -> Fraction | None:
    """The reference's answer (see marked_number)."""
    return marked_number(reference)


def choice_letter(text: str) -> str | None:
    """The option letter a text gives (see the module docstring), upper case, or None."""
    found = _ANSWER_IS.findall(text)
    if found:
        return found[-1].upper()
    if only := _ONLY_LETTER.fullmatch(text):
        return only.group(1)
    found = _PAREN_LETTER.findall(text)
    return found[-1] if found else None


@dataclass(frozen=True)
class Grade:
    """One completion checked: verdict True (right), False (wrong) or None (no answer it could read);
    the answer as the metric read it; a note (e.g. "timeout", "unreadable reference")."""

    verdict: bool | None
    answer: str | None
    note: str | None = None

    @property
    def correct(self) -> bool:
        return self.verdict is True


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
            value = marked_number(text)
            return None if value is None else _plain(value)
        if self.name == "regex":
            match = re.search(self.pattern, text)
            if match is None:
                return None
            groups = [g for g in match.groups() if g is not None]  # `(a)|(b)`: the group that took part
            if match.re.groups and not groups:
                return None
            return normalize(groups[0] if groups else match.group(0))
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

    def grade(self, completion: str, reference: str) -> Grade:
        """The completion checked against the reference (see Grade)."""
        if self.name == "math":
            from tokensft.evaluate.mathgrade import grade_math

            return Grade(*grade_math(completion, reference))
        if self.name == "choice":
            answer, expected = choice_letter(completion), choice_letter(reference)
            if expected is None:
                return Grade(False, answer, "unreadable reference")
            return Grade(None if answer is None else answer == expected, answer)
        expected = self.expected(reference)
        if self.name == "contains":
            return Grade(expected in normalize(completion), normalize(completion))
        answer = self.extract(completion)
        if expected is None:
            return Grade(False, answer, "unreadable reference")
        return Grade(None if answer is None else answer == expected, answer)

    def correct(self, completion: str, reference: str) -> bool:
        return self.grade(completion, reference).correct


def _plain(value: Fraction) -> str:
    """A canonical string for a number: 3.50 -> "7/2", 7.0 -> "7", 0.75 -> "3/4" (exact: equal numbers, equal strings)."""
    return str(value)


def parse_metric(text: str) -> Metric:
    """Parse a --metric value; a ConfigError names the choices."""
    if text == "math":
        from tokensft.evaluate.mathgrade import available

        if not available():
            raise ConfigError("--metric math checks answers with Math-Verify: pip install 'tokensft[math]' "
                              "(or math-verify) first")
    if text in ("exact", "numeric", "contains", "choice", "math"):
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
