"""The floor under every stage: what preprocess, train, analysis and reports all stand on.

    errors    user-facing errors (one line, exit code 2)
    fileio    atomic writes and directory swaps
    schema    the column and metadata vocabulary of a scored dataset, its version
    dataset   reading a scored dataset: metadata, shards, flat Arrow columns
    counts    counts that add up across shards and ranks
    models    resolving and loading models and tokenizers, fingerprints, the embedded default
    head      the hidden -> logits map (lm_head and per-architecture extras)
    masks     mask specs and their vectorized math

Nothing here imports a stage (`tokensft.preprocess`, `.train`, `.analysis`, `.reports`).
"""
