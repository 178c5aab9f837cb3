"""What every subcommand's parser shares: argparse with one-line errors and negative numbers as
values, a count type that refuses negatives, `given` (the flags a user gave), the run flags.

    parser = Parser(prog="tokensft")               # subparsers inherit the class
    p.add_argument("--examples", type=nonnegative_int)
    Config(**given(args, Config))                  # only the flags given: defaults stay in Config
"""

from __future__ import annotations

import argparse
import re
from dataclasses import fields

from tokensft.core.errors import EXIT_USAGE


class Parser(argparse.ArgumentParser):
    """argparse with tokensft's error style, one line, and negative numbers as values.

    `--lr -1e-4` is a value (argparse's own matcher misses scientific notation and would read an
    option), so validation can say what is wrong with it; errors read `error: MESSAGE (see
    tokensft CMD --help)`, exit code 2, instead of the usage block. Subparsers inherit the class.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def nonnegative_int(text: str) -> int:
    """An argparse type for counts and seeds: an integer >= 0, else a one-line error naming the flag."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def given(args, config_class, exclude: tuple[str, ...] = ()) -> dict:
    """{field: value} of the flags a user gave for `config_class`'s fields: every flag defaults to
    None here, so the dataclass holds each default once (a flag's dest is its field's name)."""
    names = {f.name for f in fields(config_class)} - set(exclude) - {"command"}  # args.command: the subcommand
    return {name: getattr(args, name) for name in sorted(names) if getattr(args, name, None) is not None}


def add_run_flags(parser, ranks: str, batch: str = "padded tokens per forward batch (default: 8192 on CUDA, 1024 on CPU)") -> None:
    """The flags every model pass shares (score; enrich's references and teacher), defined once:
    fields of core.identity.RunConfig, whose defaults the help shows."""
    from tokensft.core.identity import RunConfig as D

    r = parser.add_argument_group("model passes")
    r.add_argument("--batch-tokens", type=int, help=batch)
    r.add_argument("--chunk-size", type=int, help=f"target rows per lm_head/log-softmax chunk (memory; default {D.chunk_size})")
    r.add_argument("--dtype", help=f"auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16 (default {D.dtype})")
    r.add_argument("--device", help=f"auto, cpu, cuda, cuda:N (default {D.device})")
    o = parser.add_argument_group("runs")
    o.add_argument("--rank", type=int, help=f"this process's rank ({ranks}; default from RANK or SLURM_ARRAY_TASK_ID, else 0)")
    o.add_argument("--world-size", type=int, help="number of ranks (default from WORLD_SIZE or SLURM_ARRAY_TASK_COUNT, else 1)")
    o.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                   help="when another run holds the output's lock at the start: wait for it, naming it after a few "
                        "seconds (default); --no-wait fails at once, naming it")
    o.add_argument("--quiet", "-q", action="store_true", default=None, help="no progress bar")


def add_record_flags(p, rendering: str):
    """The flags that say how to read and render records (score, and eval's held-out records):
    fields of FormatSpec and ScoreConfig's template / max length. Returns the two groups."""
    from tokensft.records.formats import FORMATS, FormatSpec as F
    from tokensft.records.render import TEMPLATES

    g = p.add_argument_group("input records")
    g.add_argument("--format", choices=["auto", *FORMATS],
                   help="record layout; auto (the default) detects it from the first record's fields")
    g.add_argument("--input-format", choices=["jsonl", "json", "parquet", "csv", "hf-disk"],
                   help="file type, when the extension does not say it")
    g.add_argument("--targets", choices=["all", "last"],
                   help=f"messages format: train on every assistant turn, or on the last one only (default {F.targets})")
    for name in ("messages", "prompt", "response", "system", "text"):
        g.add_argument(f"--{name}-field", help=f"name of the {name} field (overrides auto-detection)")
    g.add_argument("--id-field", help=f"field kept as the example id, else a stable content hash (default {F.id_field})")
    r = p.add_argument_group(rendering)
    r.add_argument("--template", choices=TEMPLATES,
                   help="auto (the default): the model's chat template when it has one, else plain text")
    r.add_argument("--max-length", type=int, help="keep the first N tokens (default: the model's context length); truncated examples are flagged and counted")
    return g, r
