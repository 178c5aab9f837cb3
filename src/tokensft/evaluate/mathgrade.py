"""Math answers checked with Math-Verify (`pip install 'tokensft[math]'`), as the papers grade them.

    verdict, answer, note = grade_math(completion, reference)   # True / False / None ("no answer")

The completion's answer is its last `\\boxed{...}` (brace-matched) when it has one, else whatever
Math-Verify's parser finds (LaTeX in math delimiters, then plain expressions); none found is
"no answer" (None), an outcome of its own. The reference is parsed the same way, or as `$ref$`
when bare LaTeX ("\\frac13"). `verify(gold, pred)` takes the gold first: it is asymmetric.

Timeouts: Math-Verify bounds parsing and comparison with signal.alarm, which only works in a
process's main thread (in a thread it raises, or with its errors off, silently says False). So
every check runs in a worker process of its own, in that process's main thread, with
Math-Verify's own 3 s limits; a check that still hangs past HARD_TIMEOUT_S is killed with its
worker (a new one starts) and counted wrong with the note "timeout", as the BLL harness counts a
timeout. The worker is started on first use and lives as long as this process.
"""

from __future__ import annotations

import atexit
import multiprocessing

SOFT_TIMEOUT_S = 3  # Math-Verify's own, per parse and per comparison (the Qwen2.5-Math harness uses 3 s)
HARD_TIMEOUT_S = 20.0  # the worker's whole answer, from outside
_BOXES = ("\\boxed{", "\\fbox{")


def available() -> bool:
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return False
    return True


def last_boxed(text: str) -> str | None:
    """The last `\\boxed{...}` of `text`, braces matched (nested ones included), or None."""
    start = max(text.rfind(box) for box in _BOXES)
    if start < 0:
        return None
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[start:j + 1]
    return None  # unclosed: no answer box


def check(completion: str, reference: str) -> tuple[bool | None, str | None, str | None]:
    """(verdict, the answer read, note) in this process (its main thread): see the module docstring."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    def read(text: str) -> list:
        try:
            return parse(text, parsing_timeout=SOFT_TIMEOUT_S, raise_on_error=True)
        except TimeoutException:
            raise
        except Exception:  # noqa: BLE001 -- an unparseable text is no answer, whatever the parser's reason
            return []

    try:
        gold = read(reference) or read(f"${reference}$")
        if not gold:
            return False, None, "unreadable reference"
        boxed = last_boxed(completion)
        pred = (read(boxed) if boxed else []) or read(completion)
        if not pred:
            return None, None, None
        answer = str(pred[1] if len(pred) > 1 else pred[0])
        return bool(verify(gold, pred, timeout_seconds=SOFT_TIMEOUT_S, raise_on_error=True)), answer, None
    except TimeoutException:
        return False, None, "timeout"
    except Exception as exc:  # noqa: BLE001 -- sympy failing on an odd expression: wrong, said so
        return False, None, f"error: {type(exc).__name__}"


def _serve(conn) -> None:
    while True:
        try:
            completion, reference = conn.recv()
        except EOFError:
            return
        conn.send(check(completion, reference))


class _Worker:
    """One process that runs `check` in its main thread; restarted when a check outlives HARD_TIMEOUT_S."""

    def __init__(self):
        self.process = self.conn = None

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # never a fork of a process holding torch's threads
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True)
        self.process.start()
        child.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join()
            self.conn.close()
        self.process = self.conn = None

    def __call__(self, completion: str, reference: str) -> tuple[bool | None, str | None, str | None]:
        if self.process is None or not self.process.is_alive():
            self._start()
        try:
            self.conn.send((completion, reference))
            if self.conn.poll(HARD_TIMEOUT_S):
                return self.conn.recv()
        except (EOFError, OSError):  # the worker died mid-check (a crash in sympy, killed for memory)
            self.stop()
            return False, None, "error: the checking process died"
        self.stop()  # stuck where no alarm reaches: killed, and the next check starts a new worker
        return False, None, "timeout"


_worker = _Worker()
atexit.register(_worker.stop)


def grade_math(completion: str, reference: str) -> tuple[bool | None, str | None, str | None]:
    """(verdict, answer, note), checked in the worker process: True, False, or None for no answer."""
    return _worker(completion, reference)
