"""tokensft: probability-aware supervised fine-tuning.

Score every target token of an SFT dataset once (`tokensft score`), keep the per-token
log-probs, entropies, ranks and sparse top-k distributions as Arrow shards, and reuse them.
"""

__version__ = "0.1.0"

from tokensft.core.dataset import load, load_metadata  # noqa: E402
from tokensft.core.schema import IGNORE_INDEX, SCHEMA_VERSION  # noqa: E402

__all__ = ["IGNORE_INDEX", "SCHEMA_VERSION", "__version__", "load", "load_metadata"]
