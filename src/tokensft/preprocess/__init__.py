"""The scoring stage: an SFT dataset in, a scored dataset (Arrow shards + tokensft.json) out.

    records (read, normalize, render) -> core.scorer (the model pass) -> shards (the writer) -> output (finish)
    run.score(ScoreConfig)         `tokensft score`: the pipeline, resumable, split by rank
    enrich.enrich(EnrichConfig)    `tokensft enrich`: masks, PoFT references, a teacher, added to a scored dataset
    rescore                        scoring stored rows under another model (references, teacher)

It stands on `tokensft.records` (the input records and their renders) and `tokensft.core` (schema,
dataset, models, the model pass, run identity); no other stage imports it, only the command line.
"""
