"""Progress bars on stderr, for every long-running command.

    bar = Progress(total_rows=n, desc="scoring")   # model passes: rows done, target tokens/s, ETA
    bar.update(rows=..., targets=...)
    with Stages(["reading", "analysis", "writing"]) as stages:   # commands made of a few long steps
        ...; stages.next(); ...
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """tqdm over input rows, with the target-token rate as a postfix (what users budget by)."""

    def __init__(self, total_rows: int, disable: bool = False, desc: str = "scoring", rate: str = "target tok/s"):
        self.bar = tqdm(total=total_rows, unit="row", file=sys.stderr, disable=disable, dynamic_ncols=True, desc=desc)
        self.start = time.perf_counter()
        self.targets = 0
        self.rate = rate  # what the counted tokens are: scored targets, or generated tokens

    def update(self, rows: int, targets: int) -> None:
        self.targets += targets
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.targets / elapsed:,.0f} {self.rate}", refresh=False)
        self.bar.update(rows)

    def close(self) -> None:
        self.bar.close()


class Stages:
    """A bar over a command's named stages: shows the stage running now, and how many are done."""

    def __init__(self, names: list[str], disable: bool = False):
        self.names = names
        self.bar = tqdm(total=len(names), unit="stage", file=sys.stderr, disable=disable, dynamic_ncols=True,
                        desc=names[0], bar_format="{desc}: {n_fmt}/{total_fmt} stages [{elapsed}]")
        self.done = 0

    def next(self) -> None:
        """The current stage is done; the next one starts."""
        self.done += 1
        if self.done < len(self.names):
            self.bar.set_description_str(self.names[self.done], refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.set_description_str("done", refresh=False)
        self.bar.update(len(self.names) - self.done)
        self.bar.close()

    def __enter__(self) -> Stages:
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None:
            self.close()
        else:  # an error: clear the bar, so the error is the only line left on stderr
            self.bar.leave = False
            self.bar.close()
