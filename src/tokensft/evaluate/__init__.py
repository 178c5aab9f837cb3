"""The evidence stage: held-out task accuracy by generation (`tokensft eval`).

    answers    answer checks (exact, numeric, contains, regex), pure functions
    generate   batched decoding with the KV cache; greedy or seeded sampling
    config     EvalConfig (no torch: the CLI reads it)
    run        `tokensft eval`: read, render the prompts as scoring does, generate, check, resume

It renders and reads records with `tokensft.preprocess` (the same code as scoring, so prompts are
the tokens training saw) and runs `tokensft score` for the teacher-forced numbers.
"""
