"""tokensft: probability-aware supervised fine-tuning.

Score every target token of an SFT dataset once (`tokensft score`), keep the per-token
log-probs, entropies, ranks and sparse top-k distributions as Arrow shards, and reuse them.
"""

__version__ = "0.1.0"

from tokensft.core.dataset import load, load_metadata  # noqa: E402
from tokensft.core.schema import IGNORE_INDEX, SCHEMA_VERSION  # noqa: E402



def grade(completion: str, reference: str, metric: str = "exact") -> bool | None:
    """Check one completion against its reference as `tokensft eval --metric METRIC` does: True
    (right), False (wrong), or None when the completion holds no answer the metric can read.
    metric: exact, numeric, contains, regex:PATTERN, choice, or math (needs `tokensft[math]`)."""
    from tokensft.evaluate.answers import parse_metric

    return parse_metric(metric).grade(completion, reference).verdict


__all__ = ["IGNORE_INDEX", "SCHEMA_VERSION", "__version__", "grade", "load", "load_metadata"]
