"""`tokensft enrich DIR`: add masks, loss weights, PoFT reference likelihoods and teacher
distributions to a scored dataset, without re-running the scorer. Computed once, reused by every
training run.

    plan     = what is asked minus what DIR already holds with the same provenance
    staging  = --output DIR2, or a hidden sibling .DIR.enrich (in place)
    for each model job (reference, teacher), one model in memory at a time:
        for each chunk k of this rank:  part k = score(rows of shard k)      # atomic, resumable
    last rank, once every part exists:
        for each chunk k:  shard k = source shard k + parts + masks + weights  # atomic, resumable
        finish(staging)                                                        # metadata, state.json
        in place: exchange(staging, DIR)      # one atomic rename: readers see old or new, whole

A killed run resumes from the parts and shards already written; the result equals a clean run's.

    plan.py      EnrichConfig, EnrichPlan, preflight: what to compute, decided before any work
    jobs.py      the model jobs (references, teacher): resolve, load, score a shard
    run.py       enrich(): locks, staging, running the jobs into parts, completing
    assemble.py  final shards, summed counts into the metadata, the swap
    weights.py   the computed weights (--weight): which, in what order, their statistics
"""

from tokensft.preprocess.enrich.plan import EnrichConfig, EnrichPlan, preflight
from tokensft.preprocess.enrich.run import enrich

__all__ = ["EnrichConfig", "EnrichPlan", "enrich", "preflight"]
