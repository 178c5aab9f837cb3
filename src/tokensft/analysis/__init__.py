"""Analysis of scored datasets: pure computations returning pandas DataFrames and JSON-able dicts.

    t = load_targets(DIR)                      # every target token as flat numpy arrays
    classes = classify_vocab(tokenizer)        # optional: token classes for the by-class tables
    summary(t, classes)                        # what `tokensft report` writes as summary.json
    compare(load_targets(A), load_targets(B))  # what moved between two scorings of the same examples
    mask_drift(A_targets, B_targets)           # how far stored masks drift from masks by B's p
    weight_stats(t, classes)                   # the stored loss weights: distribution, position, class, extremes

Drawing lives in tokensft.reports; nothing here plots.
"""

from tokensft.analysis.compare import align, compare
from tokensft.analysis.continuum import (PROJECT_POINTS, REFERENCE_POINTS, STRONG_MIN, WEAK_MAX, agreement, continuum,
                                        nearest_project_point, recommend, regime, sweep_command)
from tokensft.analysis.drift import mask_drift
from tokensft.analysis.enrichment import mask_stats, reference_stats, teacher_kl, teacher_stats
from tokensft.analysis.stats import (by_class, by_position, cdf, entropy_vs_probability, extreme_examples, overview,
                                     probability_histogram, quantiles)
from tokensft.analysis.summary import enrichment_parts, summary
from tokensft.analysis.tables import jsonable
from tokensft.analysis.targets import Targets, load_targets
from tokensft.analysis.token_classes import CLASSES, classify_text, classify_vocab, target_classes, token_strings
from tokensft.analysis.weights import (extreme_tokens, prompt_split, summarize, weight_by_class, weight_by_position,
                                       weight_distribution, weight_histogram, weight_provenance, weight_stats)

__all__ = [
    "CLASSES", "PROJECT_POINTS", "REFERENCE_POINTS", "STRONG_MIN", "WEAK_MAX", "Targets", "agreement", "align", "by_class", "by_position", "cdf",
    "classify_text", "classify_vocab", "compare", "continuum", "enrichment_parts", "entropy_vs_probability", "extreme_examples", "jsonable",
    "load_targets", "mask_drift", "nearest_project_point", "mask_stats", "overview", "probability_histogram", "quantiles", "recommend", "reference_stats",
    "regime", "summarize", "summary", "sweep_command", "target_classes", "teacher_kl", "teacher_stats", "token_strings", "extreme_tokens", "prompt_split",
    "weight_by_class", "weight_by_position", "weight_distribution", "weight_histogram", "weight_provenance", "weight_stats",
]
