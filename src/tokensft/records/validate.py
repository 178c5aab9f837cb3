"""Checks over a whole input before any model runs: its record format, and every row parsed once.

    fmt = detect_record_format(config, kind)          # given, or from the first parseable record
    sources = validate_rows(config, kind, fmt, rules)  # the first bad row raises (seconds, not hours in)

`config` is anything with `input`, `format` (a FormatSpec) and `skip_invalid`: ScoreConfig, EvalConfig.
"""

from __future__ import annotations

from tokensft.core.errors import InputError
from tokensft.records.formats import detect_format, to_example
from tokensft.records.readers import iter_rows
from tokensft.records.weights import WeightRules, weight_sources


def detect_record_format(config, kind: str) -> str:
    """The record format: given, or detected on the first parseable record of the whole input
    (the same record for every rank and every resume, so all agree). config: anything with `input`
    and `format` (a FormatSpec): ScoreConfig, EvalConfig."""
    if config.format.format != "auto":
        return config.format.format
    for row in iter_rows(config.input, kind=kind):
        if row.record is not None:
            return detect_format(row.record, config.format, row.where)
    raise InputError(config.input, None, "no parseable record to detect the format from", fix="check the file")


def validate_rows(config, kind: str, fmt: str, rules: WeightRules | None = None) -> set[str]:
    """Parse and normalize every row once (no model), raising the first InputError (with
    config.skip_invalid: ignoring the rows that fail). With `rules`, the weights are read too:
    returns the kinds of weight the rows carry (example, turn, span; see `weight_sources`)."""
    sources: set[str] = set()
    for row in iter_rows(config.input, kind=kind):
        try:
            if row.error is not None:
                raise row.error
            example = to_example(row.record, config.format, row.where, fmt, rules)
        except InputError:
            if not config.skip_invalid:
                raise
            continue
        if rules is not None:
            sources |= weight_sources(example)
    return sources
