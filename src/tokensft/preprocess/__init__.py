"""The scoring stage: an SFT dataset in, a scored dataset (Arrow shards + tokensft.json) out.

    readers -> formats -> render -> scorer (scoring: the math) -> shards (the writer) -> output (finish)
    run.score(ScoreConfig)         `tokensft score`: the pipeline, resumable, split by rank
    enrich.enrich(EnrichConfig)    `tokensft enrich`: masks, PoFT references, a teacher, added to a scored dataset
    rescore                        scoring stored rows under another model (references, teacher)
    config.RunConfig               the settings score and enrich share

It reads and writes through `tokensft.core` (schema, dataset, models, masks); no other stage
imports it.
"""
