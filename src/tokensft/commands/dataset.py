"""`tokensft merge` and `tokensft inspect`: finishing a scored dataset, and showing it."""

from __future__ import annotations

from tokensft.commands.common import nonnegative_int
from tokensft.core.errors import EXIT_USAGE, TokensftError
from tokensft.reports import console


def add(sub) -> None:
    _add_merge(sub)
    _add_inspect(sub)


def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="finish an output written by several ranks (automatic when the last rank ends)")
    p.add_argument("directory")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.set_defaults(func=_cmd_merge)


def _cmd_merge(args) -> int:
    from pathlib import Path

    from tokensft.core.fileio import keeping
    from tokensft.core.locks import OutputLock
    from tokensft.preprocess.output import finish

    directory = Path(args.directory)
    if not directory.is_dir():  # (the lock would create it)
        raise TokensftError(f"{directory}: no such directory; pass the --output of a `tokensft score` run")
    with OutputLock(directory), keeping(f"every shard is kept: free some space, then rerun `tokensft merge {directory}`"):
        meta = finish(directory)  # already finished as it would be: nothing is rewritten
    if not args.quiet:
        print("\n".join(console.score_lines({"status": "finished", "output": args.directory, "metadata": meta})))
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show a scored dataset: metadata, schema, counts, examples token by token")
    p.add_argument("directory")
    p.add_argument("--examples", "-n", type=nonnegative_int, default=2, help="examples to show token by token (default %(default)s)")
    p.add_argument("--model", help="tokenizer to decode tokens with (default: the dataset's model)")
    p.add_argument("--quiet", "-q", action="store_true", help="no warnings (e.g. a tokenizer that no longer matches), only the listing")
    p.add_argument("--verify", action="store_true",
                   help="instead: read every shard, check it against its record (size, rows, checksum) and the "
                        "metadata's counts; one line per problem, then a verdict; exit 2 if anything is damaged")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args) -> int:
    from tokensft.reports.inspect import inspect_dataset, verify_dataset

    if args.verify:
        lines, ok = verify_dataset(args.directory)
        print("\n".join(lines))
        return 0 if ok else EXIT_USAGE
    print(inspect_dataset(args.directory, num_examples=args.examples, model=args.model))
    return 0
