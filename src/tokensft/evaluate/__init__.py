"""The evidence stage: held-out task accuracy by generation (`tokensft eval`), and objectives
trained and evaluated side by side (`tokensft sweep`).

    answers         answer checks (exact, numeric, contains, regex), pure functions
    generate        batched decoding with the KV cache; greedy or seeded sampling
    teacher_forced  held-out mean target p and NLL, from the model pass of `core.scorer`
    config          EvalConfig (no torch: the CLI reads it)
    run             `tokensft eval`: read, render the prompts as scoring does, generate, check, resume
    sweep           `tokensft sweep`: train each arm, evaluate it, rank them

It reads and renders records with `tokensft.records` (the same code as scoring, so prompts are the
tokens training saw) and never imports `tokensft.preprocess`. The sweep enters the other stages
through their packages: `tokensft.train` (train, TrainConfig), `tokensft.reports` (sweep_page),
`tokensft.analysis` (the guidance).
"""
