"""Token-probability reports: `tokensft report DIR --output REPORT [--compare B]`.

    write_report(DIR, REPORT)   # REPORT/index.html (offline, self-contained), summary.json, examples.parquet

The numbers come from tokensft.analysis; this package draws and arranges them.
"""

from tokensft.reports.build import REPORT_FILES, write_report

__all__ = ["REPORT_FILES", "write_report"]
