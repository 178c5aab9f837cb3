"""The `tokensft` command: one entry point, one subcommand per pipeline stage.

    tokensft score INPUT --output DIR [--model M] [--top-k K] ...   score every target token
    tokensft enrich DIR [--mask SPEC] [--ref M] [--teacher M]        masks, PoFT references, teacher top-k
    tokensft train DIR --objective SPEC --output CKPT [--mask SPEC]  weighted/masked/soft-target SFT
    tokensft merge DIR                                               finish a multi-rank output
    tokensft inspect DIR                                             metadata, counts, examples
    tokensft report DIR --output REPORT [--compare B] [--sweep S]    token-probability report (HTML)
    tokensft eval MODEL DATA --output DIR [--metric M]               held-out accuracy by generation
    tokensft sweep DATA --objectives LIST --eval HELDOUT -o DIR      objectives trained and evaluated side by side

Each subcommand lives in `tokensft.commands.<name>`: `add(sub)` declares its flags, `run(args)`
parses them into its stage's config dataclass (which holds the defaults) and calls one function of
that stage; this module builds the parser from them and maps errors to exit codes. User errors (bad input, bad flags, missing model) print one line
and exit with code 2; a closed stdout (`tokensft inspect DIR | head`) ends quietly with 141, as
for a tool killed by SIGPIPE.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from tokensft import __version__
from tokensft.commands import dataset, enrich, evaluate, report, score, train
from tokensft.commands.common import Parser
from tokensft.core.errors import EXIT_USAGE, TokensftError


def build_parser() -> Parser:
    parser = Parser(prog="tokensft", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"tokensft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (score, enrich, train, dataset, report, evaluate):
        command.add(sub)
    parser.commands = sub.choices  # {name: its parser}, for errors about a command's own flags
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        code = _run(sys.argv[1:] if argv is None else list(argv))
        sys.stdout.flush()  # a reader gone (`| head`) shows here, where it is handled, not at interpreter exit
        return code
    except BrokenPipeError:
        # stdout points at nothing now, so interpreter shutdown has nothing to flush or complain about
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _run(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # named by the command's parser, so the hint points at its --help
            parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # --help, --version, or a usage error (printed, one line): its code, also to callers
        return exc.code
    args.argv = argv  # recorded in the output's metadata
    if getattr(args, "quiet", False):  # every subcommand takes --quiet: no progress bars, no warnings
        logging.getLogger("tokensft").setLevel(logging.ERROR)
    try:
        return args.func(args)
    except BrokenPipeError:
        raise  # not an error of the command: main ends quietly
    except TokensftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # unwritable output, disk full, a path that is a file: one line, no traceback
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
