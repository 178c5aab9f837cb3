"""The subcommands of `tokensft`, one module each: `add(sub)` declares the flags, `run(args)` calls the stage.

    common     the parser class, `given`, the run flags score/enrich/eval share
    score      tokensft score          enrich    tokensft enrich (and score's enrichment flags)
    train      tokensft train          dataset   tokensft merge, tokensft inspect
    report     tokensft report         evaluate  tokensft eval, tokensft sweep

Nothing heavy is imported here (the CLI builds every parser for every command): each `run`
imports its stage when it runs.
"""
