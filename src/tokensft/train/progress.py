"""Per-step metrics: one JSON line per optimizer step in OUTPUT/metrics.jsonl, and a progress bar."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from tokensft.core.fileio import atomic_write

logger = logging.getLogger(__name__)


def _records(path: Path) -> list[tuple[str, dict]]:
    """(line, parsed) for each complete JSON line; a line torn by a kill mid-append is dropped (its step is redone)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append((line, json.loads(line)))
        except ValueError:
            continue
    return out


def last_metrics(path: Path, step: int) -> dict:
    """The metrics of step `step` (its training line and its final eval line, merged); {} without them."""
    out = {}
    for _, row in _records(path) if path.is_file() else []:
        if row.get("step") == step:
            out.update(row)
    return out


class StepLog:
    """Appends metrics as JSON lines (main process only). On resume from step `start`, lines of
    later steps (written before the kill, after the checkpoint) are dropped: they are redone.
    zero_kept: the steps so far that kept no target (flagged "zero_kept" in their lines), kept ones included."""

    def __init__(self, path: Path, total: int, start: int, disable: bool, main: bool = True):
        self.path, self.main, self.zero_kept = path, main, 0
        if main:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = [(line, row) for line, row in _records(path) if row.get("step", 0) <= start] if path.is_file() else []
            self.zero_kept = sum(1 for _, row in kept if row.get("zero_kept"))
            with atomic_write(path, "w", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line, _ in kept))
        self.bar = tqdm(total=total, initial=start, unit="step", file=sys.stderr, disable=disable, dynamic_ncols=True,
                        desc="training")

    def write(self, metrics: dict) -> None:
        if not self.main:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        if "loss" in metrics:
            self.bar.set_postfix_str(f"loss {metrics['loss']:.4f} p {metrics['mean_p']:.3f} "
                                     f"{metrics['targets_per_s']:,.0f} tgt/s", refresh=False)
            self.bar.update(1)

    def warning(self, message: str) -> None:
        """A logging warning (silenced by --quiet, as every warning) that leaves the progress bar whole."""
        if self.main:
            with tqdm.external_write_mode(file=sys.stderr):
                logger.warning(message)

    def close(self) -> None:
        self.bar.close()
