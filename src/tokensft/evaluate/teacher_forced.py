"""eval's teacher-forced numbers: held-out mean target p and NLL per token under the model evaluated.

    tf = TeacherForced(loaded, template, limit, batch_tokens, chunk_size)
    sums = tf.score(examples)          # one chunk's examples -> {"examples", "targets", "logprob_sum", "prob_sum"}
    numbers(sums of every chunk)       # {"mean_p", "nll", "targets", "examples"}, what results.json holds

Every target turn of every record, rendered as `tokensft score` renders it (cut at the same
limit: --max-length, else the model's context) and scored by the same model pass
(`core.scorer`), so the numbers are those of a `tokensft score` of the records under the model.
It runs in eval's own chunk loop, with the model already loaded: one read of the input, one
load of the model, and a chunk's sums live in its part, so a killed eval resumes them with it.
A record whose prompt eval cannot answer (plain text, a prompt too long to generate after) is
still scored here, as `score` would score it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from tokensft.core.errors import InputError
from tokensft.core.schema import IGNORE_INDEX
from tokensft.records.formats import Example
from tokensft.records.render import Renderer

ZERO = {"examples": 0, "targets": 0, "logprob_sum": 0.0, "prob_sum": 0.0}


class TeacherForced:
    """The teacher-forced pass of one eval: a renderer cut at `limit` and a scorer over the loaded model."""

    def __init__(self, loaded, template: str, limit: int | None, batch_tokens: int | None, chunk_size: int):
        from tokensft.core.scorer import Scorer  # deferred: torch

        self.renderer = Renderer(loaded.tokenizer, template, limit)
        self.scorer = Scorer(loaded.model, batch_tokens=batch_tokens, chunk_size=chunk_size)

    def score(self, examples: Sequence[tuple[Example, str]]) -> dict:
        """The sums over (example, where) pairs: examples with a target left after the cut, their
        targets, and the float64 sums of log p and p over those targets."""
        rendered = []
        for example, where in examples:
            try:
                rendered.append(self.renderer(example, where))
            except InputError:  # eval met it too: refused the run, or skipped it with --skip-invalid (as score does)
                continue
        rendered = [r for r in rendered if any(y != IGNORE_INDEX for y in r.labels)]  # as score skips them
        sums = dict(ZERO)
        for scored in self.scorer.score(rendered) if rendered else []:
            logprob = scored.logprob[scored.target_positions].astype(np.float64)  # (n,)
            sums["examples"] += 1
            sums["targets"] += len(logprob)
            sums["logprob_sum"] += float(logprob.sum())
            sums["prob_sum"] += float(np.exp(logprob).sum())
        return sums


def numbers(parts: Iterable[dict]) -> dict:
    """Mean target p and NLL per target token over every chunk's sums (None without targets)."""
    total = dict(ZERO)
    for sums in parts:
        for key in total:
            total[key] += sums[key]
    n = total["targets"]
    return {"mean_p": total["prob_sum"] / n if n else None, "nll": -total["logprob_sum"] / n if n else None,
            "targets": int(n), "examples": int(total["examples"])}
