"""The JSON summary of a scored dataset: every number of the report, in plain types (NaN becomes null).

    summary(load_targets(DIR), classify_vocab(tokenizer))   # what `tokensft report` writes as summary.json

Keys: version, overview, continuum, recommendation, quantiles, histogram, entropy_vs_probability,
by_position, by_class, masks, references, teacher, weights, extremes. Tables are lists of records
(the columns of the matching DataFrame function); by_class is null without token classes, masks /
references / teacher / weights are null when the dataset has none.
"""

from __future__ import annotations

import numpy as np

from tokensft.analysis.continuum import continuum
from tokensft.analysis.enrichment import mask_stats, reference_stats, teacher_stats
from tokensft.analysis.stats import (by_class, by_position, entropy_vs_probability, extreme_examples, overview,
                                     probability_histogram, quantiles)
from tokensft.analysis.tables import jsonable
from tokensft.analysis.targets import Targets
from tokensft.analysis.weights import weight_stats

SUMMARY_VERSION = 1
EXAMPLE_COLUMNS = ["row", "id", "num_targets", "mean_p"]


def summary(t: Targets, classes: np.ndarray | None = None, bins: int = 20, log_bins: int = 16,
            position_bins: int = 10, n: int = 10, parts: dict | None = None) -> dict:
    """Everything above as one JSON-serializable dict (`json.dumps(summary(...), allow_nan=False)` works).

    parts: the results of `enrichment_parts(t, classes, ...)` when the caller already has them (the
    report draws them too); computed here otherwise.
    """
    cont = continuum(t)
    recommendation = cont.pop("recommendation")
    hist = probability_histogram(t, bins, log_bins)
    histogram = {scale: {"edges": [*part["left"], part["right"].iloc[-1]], "counts": part["count"].tolist()}
                 for scale, part in hist.groupby("scale", sort=False)}
    parts = parts if parts is not None else enrichment_parts(t, classes, bins, position_bins, n)
    masks, refs, teacher = parts["masks"], parts["refs"], parts["teacher"]
    lowest, highest = extreme_examples(t, n)
    out = {
        "version": SUMMARY_VERSION,
        "overview": overview(t),
        "continuum": cont,
        "recommendation": recommendation,
        "quantiles": quantiles(t),
        "histogram": histogram,
        "entropy_vs_probability": entropy_vs_probability(t, bins, sample=0)[0],
        "by_position": by_position(t, position_bins),
        "by_class": by_class(t, classes) if classes is not None else None,
        "masks": masks or None,
        "references": None if refs is None else {
            "summary": refs["summary"], "histogram": refs["histogram"],
            "lowest": refs["lowest"][["row", "id", "num_targets", "mean_logprob", *refs["columns"]]]},
        "teacher": None if teacher is None else teacher["summary"],
        "weights": parts["weights"],
        "extremes": {"lowest": lowest[EXAMPLE_COLUMNS], "highest": highest[EXAMPLE_COLUMNS]},
    }
    return jsonable(out)


def enrichment_parts(t: Targets, classes: np.ndarray | None = None, bins: int = 20, position_bins: int = 10,
                     n: int = 10, tokenizer=None) -> dict:
    """{"masks": mask_stats, "refs": reference_stats, "teacher": teacher_stats, "weights": weight_stats}, with
    summary()'s settings; `tokenizer` decodes the weights' extreme tokens ("#id" without one)."""
    return {"masks": mask_stats(t, classes, position_bins), "refs": reference_stats(t, bins, n), "teacher": teacher_stats(t),
            "weights": weight_stats(t, classes, tokenizer, bins, position_bins, n)}
