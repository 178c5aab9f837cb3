"""The ground floor: what every other package stands on (records, then the stages).

    errors     user-facing errors (one line, exit code 2)
    fileio     atomic writes and directory swaps
    schema     the column and metadata vocabulary of a scored dataset, its version
    dataset    reading a scored dataset: metadata, shards, flat Arrow columns
    integrity  each shard's record (size, rows, checksum) and its check
    counts     counts that add up across shards and ranks
    locks      an output's lock and each rank's
    progress   the progress bar every long command shows
    identity   run identity: RunConfig (the flags every model pass shares), ranks, changed_keys
    models     resolving and loading models and tokenizers, fingerprints, the embedded default
    head       the hidden -> logits map (lm_head and per-architecture extras)
    scorer     the model pass: batched teacher-forced log-probs, entropies, ranks, top-k (scoring: its math)
    masks      mask specs and their vectorized math
    weights    weight specs (enrich --weight) and their math

Nothing here imports another tokensft package (`tests/test_layout.py` holds the floor plan).
"""
