"""Small command-line behaviours: a held lock names its holder (and --no-wait refuses at once),
rows cut and then skipped count as truncated, a closed stdout ends quietly, bad numbers and
argparse's own errors are one line, negative numbers reach validation, --quiet parses everywhere."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading

import pytest
from test_score_cli import score_cli

import tokensft
from tokensft.cli import build_parser, main
from tokensft.core import locks
from tokensft.core.errors import ConfigError
from tokensft.core.locks import RankLock

HOLD = ("import sys; from pathlib import Path; from tokensft.core.locks import OutputLock; "
        "lock = OutputLock(Path(sys.argv[1]), name=sys.argv[2]).__enter__(); print('held', flush=True); sys.stdin.read()")


@pytest.fixture
def hold():
    """hold(DIR, NAME): another process takes OutputLock(DIR, name=NAME) and keeps it until killed."""
    procs = []

    def start(directory, name=locks.OUTPUT_LOCK) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory), name],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline() == "held\n"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_no_wait_refuses_a_held_output_naming_its_holder(tmp_path, tiny_dirs, capsys, hold):
    _, scored = score_cli(tmp_path, tiny_dirs["bpe"], name="scored")
    first = hold(tmp_path, ".scored.lock")  # the lock of an in-place enrichment
    assert main(["enrich", str(scored), "--mask", "prob>=0.1", "--no-wait", "-q"]) == 2
    second = hold(tmp_path / "out")
    code, _ = score_cli(tmp_path, tiny_dirs["bpe"], "--no-wait")
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 2, err
    for line, proc, lock in zip(err, (first, second), (".scored.lock", "out/.tokensft.lock")):
        assert line.startswith(f"error: {tmp_path / lock} is held by another tokensft run, pid {proc.pid} on "), line
        assert " since " in line and "--no-wait" in line


def test_a_held_lock_is_named_once_then_waited_for(tmp_path, tiny_dirs, monkeypatch, hold):
    monkeypatch.setattr(locks, "WAIT_NOTICE_S", 0.1)
    holder = hold(tmp_path / "out")

    class Stderr(io.StringIO):
        def write(self, text):
            if "held by" in text:
                holder.kill()  # the holder goes away only once it has been named: no race
            return super().write(text)

    monkeypatch.setattr(sys, "stderr", Stderr())
    fallback = threading.Timer(60, holder.kill)  # never named: the test fails below instead of hanging
    fallback.start()
    try:
        code, out = score_cli(tmp_path, tiny_dirs["bpe"])
    finally:
        fallback.cancel()
    notices = [line for line in sys.stderr.getvalue().splitlines() if "held by" in line]
    assert code == 0 and (out / "state.json").exists()
    assert len(notices) == 1 and f"held by pid {holder.pid} on " in notices[0] and " since " in notices[0], notices


def test_rank_lock_refusal_names_the_holder(tmp_path):
    refused = rf"writing rank 0 of this output \(pid {os.getpid()} on .+ since .+\)"
    with RankLock(tmp_path, 0), pytest.raises(ConfigError, match=refused), RankLock(tmp_path, 0):
        pass
    assert (tmp_path / ".tokensft" / "lock-rank0").read_text() == ""  # released: nobody to name


def test_rows_skipped_after_truncation_are_shown_as_truncated(tmp_path, tiny_dirs, capsys):
    code, out = score_cli(tmp_path, tiny_dirs["bpe"], "--max-length", "24")
    counts = tokensft.load_metadata(out)["counts"]
    dropped = counts["skipped"]["no_targets_after_truncation"]
    assert code == 0 and counts["truncated"] == sum(tokensft.load(out)["truncated"]) + dropped
    assert f"truncated {counts['truncated']};" in capsys.readouterr().out
    assert main(["inspect", str(out), "-n", "0"]) == 0
    shown = capsys.readouterr().out
    assert f"truncated {counts['truncated']}\n" in shown and f"no_targets_after_truncation {dropped}" in shown


def test_closed_stdout_ends_quietly(tmp_path, tiny_dirs):
    _, out = score_cli(tmp_path, tiny_dirs["bpe"])
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line, as `| head` is after its lines
    try:  # -n 0: the listing without examples, seconds sooner (no tokenizer to import and load)
        done = subprocess.run([sys.executable, "-m", "tokensft", "inspect", str(out), "-n", "0"],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == ""


@pytest.mark.parametrize("argv,flag", [
    (["inspect", "D", "-n", "-1"], "--examples"), (["report", "D", "-o", "R", "-n", "-2"], "--examples"),
    (["report", "D", "-o", "R", "--seed", "-1"], "--seed"), (["enrich", "D", "--top-k", "-1"], "--top-k"),
    (["score", "IN", "-o", "O", "--teacher-top-k", "-1"], "--teacher-top-k"),
    (["score", "IN", "-o", "O", "--ref-max-length", "-1"], "--ref-max-length"),  # no --ref: checked all the same
    (["score", "IN", "-o", "O", "--rank", "-1"], "--rank"), (["train", "D", "-o", "O", "--seed", "-1"], "--seed"),
])
def test_negative_counts_are_refused_in_one_line(tmp_path, capsys, argv, flag):
    assert main([str(tmp_path / a) if a in ("D", "IN", "O", "R") else a for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and flag in err and err.count("\n") == 1, err


def test_negative_numbers_reach_validation(tmp_path, capsys):
    assert main(["train", str(tmp_path / "d"), "-o", str(tmp_path / "o"), "--lr", "-1e-4"]) == 2
    assert capsys.readouterr().err == "error: --learning-rate -0.0001: must be positive\n"


@pytest.mark.parametrize("argv,expected", [
    (["train"], "error: the following arguments are required: data, --output/-o (see tokensft train --help)"),
    (["train", "d", "-o", "o", "--lr"], "error: argument --learning-rate/--lr: expected one argument (see tokensft train --help)"),
    (["score", "in", "-o", "o", "--frobnicate"], "error: unrecognized arguments: --frobnicate (see tokensft score --help)"),
    (["enrich", "d", "--ref-name", "a"], "error: --ref-name a: put it right after the --ref it names (see tokensft enrich --help)"),
    (["bogus"], "error: argument command: invalid choice: 'bogus' (choose from "),
])
def test_argparse_errors_are_one_line(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1 and "usage" not in err, err


def test_help_keeps_its_usage(capsys):
    assert main(["inspect", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: tokensft inspect [-h]")


@pytest.mark.parametrize("argv", [["score", "in", "-o", "o"], ["enrich", "d"], ["train", "d", "-o", "o"], ["merge", "d"],
                                  ["inspect", "d"], ["report", "d", "-o", "r"]])
def test_every_command_takes_quiet(argv):
    for flag in ("--quiet", "-q"):
        assert build_parser().parse_args([*argv, flag]).quiet is True
