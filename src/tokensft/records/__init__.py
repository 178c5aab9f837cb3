"""SFT records: reading them and rendering them into token ids with target spans. The floor
between `core` and the stages, shared by everything that turns input records into tokens: score,
enrich's references (each in its own tokenizer and template), eval's prompts and its
teacher-forced pass, and later readers of the same inputs.

    readers    an input file (JSONL, JSON, Parquet, CSV, a `datasets` directory) as a stream of rows;
               chunks of rows by index (the unit of resume), the input's fingerprint
    formats    a row normalized into an `Example` (messages, prompt-response, alpaca, text)
    weights    the loss weights written in records (per example, turn, content part)
    render     an `Example` into token ids, labels and weights through a chat template or plain text
    validate   a whole input checked before any model runs (its format, every row parsed once)

No torch here, and nothing of a stage: `tokensft.core` is the only floor below.
"""
