"""Counts that add up across shards, ranks and runs: one type for every tally tokensft records.

    c = Counts(read=0, written=0, skipped={})      # the keys that must appear even when 0
    c.add("written", 3)
    c.add("skipped", 1, "no_targets")              # a nested count, by reason
    total = Counts.total(parts)                    # the sum of dicts read back from shard metadata

Numbers sum; nested dicts (skipped or failed rows by reason, counts per mask or per reference)
merge key by key, recursively, their keys kept sorted so what is printed and stored is stable.
A Counts is a dict, so it is stored as JSON as is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class Counts(dict):
    """A dict of counts: values are numbers or nested Counts."""

    def __init__(self, values: Mapping | None = None, **zeros):
        super().__init__()
        for key, value in {**zeros, **(values or {})}.items():
            self[key] = Counts(value) if isinstance(value, Mapping) else value

    def add(self, key: str, n: int | float = 1, *within: str) -> Counts:
        """Add n to self[key], or, with `within`, to self[key][within[0]][...]; returns self."""
        if within:
            nested = self.get(key)
            if not isinstance(nested, Counts):
                nested = self[key] = Counts()
            nested.add(within[0], n, *within[1:])
            self[key] = Counts(dict(sorted(nested.items())))
        else:
            self[key] = self.get(key, 0) + n
        return self

    def merge(self, other: Mapping) -> Counts:
        """Add every count of `other` (numbers sum, nested dicts merge); returns self."""
        for key, value in other.items():
            if isinstance(value, Mapping):
                nested = self.get(key)
                nested = nested if isinstance(nested, Counts) else Counts()
                self[key] = Counts(dict(sorted(nested.merge(value).items())))
            else:
                self[key] = self.get(key, 0) + value
        return self

    @classmethod
    def total(cls, parts: Iterable[Mapping], **zeros) -> Counts:
        """The sum of `parts` (starting from the given zero keys)."""
        out = cls(**zeros)
        for part in parts:
            out.merge(part)
        return out
