"""Atomic file writes: a reader sees the old file or the new one, never half of one.

    with atomic_write(path, "wb") as f:   # a unique sibling temp file
        f.write(...)                      # then fsync, rename over `path`
                                          # any exception (or Ctrl-C): temp removed, path untouched
    with keeping("the shards written so far are kept: ... rerun the same command"):
        ...                               # a write that fails (disk full): one line, the file and what is kept

A failed write inside `atomic_write` is a `WriteFailed` naming the file (a full disk raises from
`write` with no file name: "No space left on device" alone); `keeping` turns it into the command's
one-line error, saying what survived, as train's checkpoints do.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tokensft.core.errors import TokensftError


class WriteFailed(OSError):
    """A file that could not be written (disk full, quota, permissions, read-only): `filename` is it."""


def write_failed(exc: OSError, path: Path) -> WriteFailed:
    """`exc` (from open, write, fsync or a pyarrow writer) as a WriteFailed naming `path`."""
    if isinstance(exc, WriteFailed):
        return exc
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    return WriteFailed(exc.errno, reason, str(path))


@contextmanager
def keeping(kept: str) -> Iterator[None]:
    """Inside: a WriteFailed becomes one line, "FILE: cannot write it (REASON); KEPT"."""
    try:
        yield
    except WriteFailed as exc:
        raise TokensftError(f"{exc.filename}: cannot write it ({exc.strerror}); {kept}") from None


def temp_sibling(path: Path) -> Path:
    """`.NAME.tmp-<random>` beside `path`: same filesystem (rename is atomic), unique across
    processes and hosts (pids collide across nodes), and recognisable as a leftover."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")


@contextmanager
def atomic_write(path: Path, mode: str = "wb", encoding: str | None = None, fsync: bool = True) -> Iterator:
    """fsync=False: atomic but not durable, for a file whose loss after a crash is detected and redone."""
    tmp = temp_sibling(path)
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # pyarrow's write errors are OSErrors too (ArrowIOError)
        tmp.unlink(missing_ok=True)
        raise write_failed(exc, path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux renameat2(RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 / not Linux
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: this filesystem cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def exchange_dirs(new: Path, current: Path) -> None:
    """Put directory `new` in place of `current`, leaving the old contents at `new`.

    On Linux this is one atomic renameat2(RENAME_EXCHANGE): a reader opening `current` sees the
    old directory or the new one, complete. Elsewhere it falls back to two renames, with a moment
    in which `current` does not exist (never a half-written one).
    """
    if _renameat2_exchange(new, current):
        return
    aside = temp_sibling(current)
    os.replace(current, aside)
    os.replace(new, current)
    os.replace(aside, new)
