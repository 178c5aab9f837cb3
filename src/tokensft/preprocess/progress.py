"""A progress bar on stderr for the scoring pass: rows done, target tokens/s, ETA."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """tqdm over input rows, with the target-token rate as a postfix (what users budget by)."""

    def __init__(self, total_rows: int, disable: bool = False, desc: str = "scoring"):
        self.bar = tqdm(total=total_rows, unit="row", file=sys.stderr, disable=disable, dynamic_ncols=True, desc=desc)
        self.start = time.perf_counter()
        self.targets = 0

    def update(self, rows: int, targets: int) -> None:
        self.targets += targets
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.targets / elapsed:,.0f} target tok/s", refresh=False)
        self.bar.update(rows)

    def close(self) -> None:
        self.bar.close()
