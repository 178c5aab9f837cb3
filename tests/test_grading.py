"""The metrics the papers use, as `tokensft.grade` and `tokensft eval --metric` check them: a
hand-written table of completions with the verdict each must get (True right, False wrong, None no
answer), Math-Verify's timeouts in a worker process, and the multiple-choice letter reader."""

from __future__ import annotations

import threading

import pytest

import tokensft
from tokensft.core.errors import ConfigError
from tokensft.evaluate import mathgrade
from tokensft.evaluate.answers import parse_metric

MATH = [  # (completion, reference, verdict)
    (r"The answer is $\boxed{\frac{1}{3}}$.", r"\frac13", True),  # \frac13: bare LaTeX reference, no braces
    (r"So we get $0.5$.", r"\frac{1}{2}", True),  # a decimal against a fraction
    (r"$\boxed{0.5}$", r"$\frac{1}{2}$", True),
    (r"$\boxed{0.51}$", r"$\frac{1}{2}$", False),
    (r"The solution set is $\boxed{[1, 3)}$", r"$[1,3)$", True),  # an interval
    (r"The solution set is $\boxed{(1, 3)}$", r"$[1,3)$", False),  # open where the gold is closed
    (r"Therefore $x = 3$.", "3", True),  # an assignment against its value
    (r"$\boxed{50\%}$", "$50$", True),  # a percentage (Math-Verify accepts 50 and 0.5 for 50%)
    (r"$\boxed{5\text{ cm}}$", "$5$", True),  # units in \text{} are dropped
    (r"$\boxed{\frac{\sqrt{2}}{2}}$", r"$\frac{\sqrt2}{2}$", True),  # nested braces in the box
    (r"First $\boxed{2}$, but on reflection $\boxed{3}$.", "3", True),  # two boxes: the last one is the answer
    (r"First $\boxed{2}$, but on reflection $\boxed{3}$.", "2", False),
    (r"I am not sure how to solve this.", "3", None),  # no answer: an outcome of its own
    (r"#### 72", "#### 72", True),  # GSM8K's marked answer parses as a plain expression
    (r"She has 72 left.", "72", True),  # the parser's own fallback: the expression in plain text
]
CHOICE = [
    ("The answer is C", "C", True), ("(B)", "B", True), ("B.", "(B)", True), ("Answer: d", "The answer is D", True),
    ("I considered (A) and then chose (D)", "D", True), ("The answer is (D).", "A", False),
    ("I cannot tell which one", "A", None), ("A cat sat on the mat", "A", None),  # no "most similar option"
]


@pytest.mark.parametrize("completion, reference, verdict", MATH)
def test_math_answers_get_the_verdict_written_down(completion, reference, verdict):
    assert tokensft.grade(completion, reference, metric="math") is verdict


@pytest.mark.parametrize("completion, reference, verdict", CHOICE)
def test_choice_letters_get_the_verdict_written_down(completion, reference, verdict):
    assert tokensft.grade(completion, reference, metric="choice") is verdict


def test_the_other_metrics_say_no_answer_too():
    assert tokensft.grade("no number here", "#### 4", metric="numeric") is None
    assert tokensft.grade("it is 4", "#### 4", metric="numeric") is True
    assert tokensft.grade("nothing", "x", metric="regex:ANSWER=(\\d+)") is None
    assert tokensft.grade("Paris.", "paris.", metric="exact") is True
    assert tokensft.grade("in 14 days", "4", metric="contains") is True  # contains: no answer to read, never None


def test_math_grades_in_a_worker_so_a_thread_gets_real_timeouts():
    """Math-Verify's signal.alarm only works in a main thread: from a thread our grade still works,
    because the check runs in the worker process's main thread."""
    out = {}
    thread = threading.Thread(target=lambda: out.update(v=tokensft.grade(r"$\boxed{\frac{2}{4}}$", "$0.5$", "math")))
    thread.start()
    thread.join(60)
    assert out == {"v": True}


def test_a_hung_check_is_killed_and_counted_wrong(monkeypatch):
    monkeypatch.setattr(mathgrade, "HARD_TIMEOUT_S", 0.5)
    worker = mathgrade._Worker()
    worker._start()
    try:
        worker.conn = _Silent()  # a worker that never answers, as one stuck where no alarm reaches would not
        assert worker("$1$", "1") == (False, None, "timeout")
        assert worker.process is None  # killed; the next check starts a new one
        monkeypatch.setattr(mathgrade, "HARD_TIMEOUT_S", 60.0)
        assert worker("$1$", "1")[0] is True
    finally:
        worker.stop()


class _Silent:
    """A pipe end that never receives an answer."""

    def send(self, item):
        pass

    def poll(self, timeout):
        import time

        time.sleep(timeout)
        return False

    def close(self):
        pass


def test_unknown_metrics_and_a_missing_math_verify_are_one_line(monkeypatch):
    with pytest.raises(ConfigError, match="use one of exact, numeric, contains, regex:PATTERN, choice, math"):
        parse_metric("bleu")
    monkeypatch.setattr(mathgrade, "available", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'tokensft\[math\]'"):
        parse_metric("math")


def test_a_worker_that_dies_mid_check_is_one_wrong_answer_not_a_crash():
    worker = mathgrade._Worker()
    worker._start()
    real = worker.conn

    class DiesOnPoll:  # the worker got the check, then died before answering
        def send(self, item):
            real.send(item)

        def poll(self, timeout):
            worker.process.kill()
            worker.process.join()
            return real.poll(timeout)  # True: the pipe is at its end

        def recv(self):
            return real.recv()  # EOFError

        def close(self):
            real.close()

    worker.conn = DiesOnPoll()
    try:
        assert worker("$1$", "1") == (False, None, "error: the checking process died")
        assert worker("$1$", "1")[0] is True  # a new worker
    finally:
        worker.stop()
