"""Token-probability reports: `tokensft report DIR --output REPORT [--compare B]`.

    write_report(DIR, REPORT)   # REPORT/index.html (offline, self-contained), summary.json, examples.parquet

The numbers come from tokensft.analysis; this package draws and arranges them (build, sections,
plots, tokens, html), and words what the commands print (inspect, console).
"""


def __getattr__(name: str):
    # build imports pandas and matplotlib (a second or more): only when a report is made, not for
    # `tokensft.reports.console`, which every command uses to print its summary
    if name in ("REPORT_FILES", "write_report"):
        from tokensft.reports import build

        return getattr(build, name)
    if name == "sweep_page":  # a sweep's index.html (`tokensft sweep`, `report --sweep`)
        from tokensft.reports import sweep

        return sweep.sweep_page
    raise AttributeError(name)


__all__ = ["REPORT_FILES", "sweep_page", "write_report"]
