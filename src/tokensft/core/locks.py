"""Locks on output directories: one writer at a time, across processes and runs.

    with OutputLock(DIR):              # waits: short critical sections (prepare, finish, swap)
        ...                            #   after WAIT_NOTICE_S, says once on stderr who holds it
    with OutputLock(DIR, wait=False):  # refused at once, naming the holder (--no-wait)
    with RankLock(DIR, rank):          # non-blocking: a second writer of the same rank is refused
        ...
    with replace_lock(DIR):            # a sibling .DIR.lock: whoever swaps DIR whole for a new one

flock(2) locks: the kernel releases them when their process dies, so a killed run never leaves
a stale lock behind; the lock files themselves stay. A stopped or stuck process keeps its lock,
so the holder writes who it is into the file (pid, host, since, command), and whoever waits or
is refused names it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from tokensft.core.errors import ConfigError
from tokensft.core.schema import STATE_DIR

OUTPUT_LOCK = ".tokensft.lock"  # never deleted: serializes prepare/finish across ranks and runs
WAIT_NOTICE_S = 3.0  # a blocked OutputLock waits this long in silence, then says who holds it
_POLL_S = 0.05


def rank_locked(state_dir: Path) -> bool:
    """Whether any process holds a rank lock in `state_dir` right now."""
    for path in state_dir.glob("lock-rank*"):
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
    return False


def holder(path: Path) -> str:
    """Who holds the lock file `path`, as its holder wrote it: 'pid 123 on HOST since TIME (COMMAND)'."""
    try:
        who = json.loads(path.read_text(encoding="utf-8"))
        line = f"pid {who['pid']} on {who['host']} since {who['since']} ({who['command']})"
    except (OSError, ValueError, KeyError, TypeError):  # empty: taken an instant ago, or by an older tokensft
        return "a process that has not said who it is"
    return " ".join(line.split())  # one line, whatever the command held


class _Flock:
    """An exclusive flock on `path`; whoever takes it writes its identity into the file."""

    def __init__(self, path: Path):
        self.path = path
        self.file = None

    def _take(self, blocking: bool) -> bool:
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a+", encoding="utf-8")  # never truncated on open: another may hold it
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        if not self._still_there():  # the directory holding it was swapped away while we waited: lock the new one
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None
            return self._take(blocking)
        self.file.truncate(0)
        self.file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                    "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": shlex.join(sys.argv)}))
        self.file.flush()
        return True

    def _still_there(self) -> bool:
        """Whether the file we locked is still the one at `path` (an exchange of the directory that
        holds DIR/.tokensft.lock, or its deletion, leaves us holding a lock nobody else will look at)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(self.file.fileno()).st_ino
        except FileNotFoundError:
            return False

    def _refused(self, message: str) -> ConfigError:
        self.file.close()
        self.file = None
        return ConfigError(message)

    def __exit__(self, *exc) -> None:
        self.file.truncate(0)  # free: nobody to name
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
        self.file = None


class OutputLock(_Flock):
    """A flock on DIR/.tokensft.lock around prepare and finish (short critical sections). Waits
    for another holder, saying who it is after WAIT_NOTICE_S; with wait=False, refuses at once.
    Never deleted: deleting a lock file another process waits on would let two in at once."""

    def __init__(self, directory: Path, name: str = OUTPUT_LOCK, wait: bool = True):
        super().__init__(directory / name)
        self.wait = wait

    def __enter__(self) -> OutputLock:
        if self._take(blocking=False):
            return self
        if not self.wait:
            raise self._refused(f"{self.path} is held by another tokensft run, {holder(self.path)}; "
                                "wait for it to finish (rerun without --no-wait) or stop it")
        deadline = time.monotonic() + WAIT_NOTICE_S
        while time.monotonic() < deadline:
            time.sleep(_POLL_S)
            if self._take(blocking=False):
                return self
        print(f"waiting for {self.path}, held by {holder(self.path)}", file=sys.stderr, flush=True)
        self._take(blocking=True)
        return self


def replace_lock(path: Path, wait: bool = True) -> OutputLock:
    """The lock of whoever replaces `path` whole -- an in-place enrich, a `score --overwrite` of a
    finished dataset, a report over an old one: a sibling `.NAME.lock`, because a lock file inside
    the directory would be exchanged away with it (the next writer would lock the new copy's)."""
    return OutputLock(path.parent, name=f".{path.name}.lock", wait=wait)


class RankLock(_Flock):
    """An exclusive flock on DIR/.tokensft/lock-rank{r}: two runs never write one rank's shards."""

    def __init__(self, directory: Path, rank: int):
        super().__init__(directory / STATE_DIR / f"lock-rank{rank}")
        self.rank = rank

    def __enter__(self) -> RankLock:
        if not self._take(blocking=False):
            raise self._refused(
                f"{self.path.parent.parent}: another tokensft run is writing rank {self.rank} of this output "
                f"({holder(self.path)}); wait for it to finish or stop it"
            )
        return self
