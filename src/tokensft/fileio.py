"""Atomic file writes: a reader sees the old file or the new one, never half of one.

    with atomic_write(path, "wb") as f:   # a unique sibling temp file
        f.write(...)                      # then fsync, rename over `path`
                                          # any exception (or Ctrl-C): temp removed, path untouched
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_sibling(path: Path) -> Path:
    """`.NAME.tmp-<random>` beside `path`: same filesystem (rename is atomic), unique across
    processes and hosts (pids collide across nodes), and recognisable as a leftover."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")


@contextmanager
def atomic_write(path: Path, mode: str = "wb", encoding: str | None = None) -> Iterator:
    tmp = temp_sibling(path)
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
