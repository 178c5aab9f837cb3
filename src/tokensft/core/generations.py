"""Reading one generation of a scored dataset while writers replace it.

    t = read_whole(DIR, lambda: read_everything(DIR))   # every open inside one generation

An in-place enrich or a `score --overwrite` builds the new dataset beside the old one and puts it
in place with one rename (`fileio.exchange_dirs`); a merge rewrites its three files by rename. A
reader opens several files by name one after another (tokensft.json, state.json,
dataset_info.json, the shards): a replacement landing between two opens would mix the old
generation with the new (`datasets` then says "Keys mismatch", or worse, reads both). So every
reader of tokensft makes its opens inside `read_whole`: the generation (`generation`: the
directory's and its two state files' inode and mtime) is taken before and after, and when it
changed the read is thrown away and made again, saying so on one line, up to ATTEMPTS times.
A read that fails while the generation holds still is a real problem and raises as it is.

What a finished read holds stays valid after the old generation is deleted: shards are memory-mapped,
and an unlinked file lives until its last map is gone. (A `datasets.Dataset` pickled later, e.g. for
`map(num_proc=...)`, reopens its files by name, so it reads whatever is there by then.)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tokensft.core.errors import ConfigError
from tokensft.core.schema import METADATA_FILE, STATE_FILE

logger = logging.getLogger(__name__)
T = TypeVar("T")
ATTEMPTS = 10  # a replacement is one rename; 10 in a row means writers finish back to back
_PAUSE_S = 0.02  # before reading again, doubled each time: lets a two-rename exchange (no renameat2) land


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:  # missing (between the renames of a fallback exchange, or not finished)
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def generation(directory: str | Path) -> tuple:
    """What changes whenever the dataset at `directory` is replaced or rewritten: the directory
    itself (an exchange puts another one there; a file renamed into it moves its mtime) and the
    files a reader starts from, tokensft.json and state.json (a new file each time they are written)."""
    directory = Path(directory)
    return (_stamp(directory), _stamp(directory / METADATA_FILE), _stamp(directory / STATE_FILE),
            _stamp(directory / "dataset_info.json"))


def read_whole(directory: str | Path, read: Callable[[], T]) -> T:
    """`read()`, made again until no replacement of `directory` overlapped it.

    `read` opens the dataset's files itself and may raise; its exception stands when the dataset
    did not change meanwhile (a damaged shard keeps its own message), and is dropped when it did.
    """
    directory = Path(directory)
    for attempt in range(ATTEMPTS):
        before = generation(directory)
        try:
            out = read()
        except Exception:  # noqa: BLE001 -- re-raised below unless the dataset changed under it
            if generation(directory) == before:
                raise
        else:
            if generation(directory) == before:
                return out
        logger.warning("%s was replaced while it was being read (an enrich or score finished); reading again",
                       directory)
        time.sleep(min(_PAUSE_S * 2**attempt, 1.0))
    raise ConfigError(f"{directory} was replaced {ATTEMPTS} times while it was being read (enrich or score runs "
                      "finishing one after another); read it when they are done, or enrich to a new --output")
