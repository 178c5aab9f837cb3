"""`tokensft report`: its flags and the call into `tokensft.reports.write_report`."""

from __future__ import annotations

from tokensft.commands.common import nonnegative_int
from tokensft.reports import console


def add(sub) -> None:
    p = sub.add_parser(
        "report", help="write a token-probability report: index.html (offline), summary.json, examples.parquet",
        description="Where the scorer sits on the capability continuum for this data, which objective that "
                    "suggests, and which examples and tokens look suspicious. With --compare, what moved between "
                    "two scorings of the same examples (base against aligned model, before against after training); "
                    "with --sweep, what a sweep measured on this data.")
    p.add_argument("directory", help="a scored (optionally enriched) dataset")
    p.add_argument("--output", "-o", required=True, help="report directory (replaced whole if it holds a report)")
    p.add_argument("--compare", metavar="DIR", help="a second scoring of the same examples (B; DIRECTORY is A); adds "
                                                    "the mask drift of stored p against B's")
    p.add_argument("--sweep", metavar="DIR", help="a finished `tokensft sweep` output: its measured ranking beside the "
                                                  "guidance, and whether they agree")
    p.add_argument("--examples", "-n", type=nonnegative_int, default=8, help="examples rendered token by token (default %(default)s)")
    p.add_argument("--model", help="tokenizer to decode tokens with (default: the dataset's model, offline)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="which random examples are rendered (default %(default)s)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or warnings; print only where the report is and its verdict")
    p.set_defaults(func=run)


def run(args) -> int:
    from tokensft.reports import write_report

    done = write_report(args.directory, args.output, compare_with=args.compare, model=args.model,
                        examples=args.examples, seed=args.seed, quiet=args.quiet, sweep=args.sweep)
    print("\n".join(console.report_lines(done, args.compare)))
    return 0
