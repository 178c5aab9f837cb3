"""The rough edges found under faults, each a one-line answer now: a full disk during score, enrich,
report and merge names the file and what was kept; an enrich --output inside its source is refused;
a killed report's staging is cleared by the rerun; a --ref that is no model says so whole; training
on an empty dataset says it is empty; a merge of a finished dataset changes nothing."""

from __future__ import annotations

import builtins
import errno
import os
import shutil
from pathlib import Path

import pytest
from conftest import write_jsonl
from test_enrich import enrich_cli, scored
from test_generations import digest

import tokensft
from tokensft.cli import main
from tokensft.core import fileio

FULL = os.strerror(errno.ENOSPC)  # "No space left on device"


class _Full:
    """A file whose every write fails as on a full disk."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, FULL)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def full_disk(monkeypatch, name: str) -> None:
    """From now on, writing a file whose name contains `name` through an atomic write fails: disk full."""
    def fake_open(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        return _Full(f) if "w" in mode and name in Path(file).name else f

    monkeypatch.setattr(fileio, "open", fake_open, raising=False)


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_full_disk_during_score_names_the_shard_and_a_rerun_resumes(tmp_path, tiny_dirs, monkeypatch, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", [{"text": f"Hello there, number {i}."} for i in range(6)])
    command = ["score", str(data), "--model", str(tiny_dirs["bpe"]), "-o", str(tmp_path / "out"), "-q",
               "--shard-size", "2"]
    full_disk(monkeypatch, "data-00001.arrow")
    assert main(command) == 2
    line = one_error(capsys)
    assert line.startswith(f"error: {tmp_path / 'out' / 'data-00001.arrow'}: cannot write it ({FULL}); the shards "
                           "written so far are kept"), line
    assert "rerun the same command to resume" in line
    monkeypatch.undo()
    assert main(command) == 0
    assert main([*command[:5], str(tmp_path / "clean"), *command[6:]]) == 0
    assert digest(tokensft.load(tmp_path / "out")) == digest(tokensft.load(tmp_path / "clean"))


def test_a_full_disk_during_an_in_place_enrich_leaves_the_dataset_as_it_was(tmp_path, tiny_dirs, monkeypatch, capsys):
    data = scored(tmp_path, tiny_dirs["bpe"])
    before = digest(tokensft.load(data))
    full_disk(monkeypatch, "data-00001.arrow")
    assert enrich_cli(data, "--mask=prob>=0.1") == 2
    line = one_error(capsys)
    assert f".scored.enrich/data-00001.arrow: cannot write it ({FULL}); the dataset is unchanged" in line, line
    assert digest(tokensft.load(data)) == before
    monkeypatch.undo()
    assert enrich_cli(data, "--mask=prob>=0.1") == 0
    assert "mask_prob_ge_0.1" in tokensft.load(data).column_names


def test_a_full_disk_during_a_report_keeps_the_old_report(tmp_path, tiny_dirs, monkeypatch, capsys):
    data = scored(tmp_path, tiny_dirs["bpe"])
    out = tmp_path / "rep"
    assert main(["report", str(data), "-o", str(out), "-q", "-n", "0"]) == 0
    before = (out / "summary.json").read_text()
    capsys.readouterr()
    full_disk(monkeypatch, "summary.json")
    assert main(["report", str(data), "-o", str(out), "-q", "-n", "1"]) == 2
    line = one_error(capsys)
    assert "summary.json: cannot write it" in line and "the report there is unchanged" in line, line
    assert (out / "summary.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".rep")) == [".rep.lock"]


def test_a_full_disk_during_merge_keeps_the_shards(tmp_path, tiny_dirs, monkeypatch, capsys):
    data = scored(tmp_path, tiny_dirs["bpe"])
    for name in ("state.json", "dataset_info.json", "tokensft.json"):  # as left by ranks that never finished it
        (data / name).unlink()
    full_disk(monkeypatch, "tokensft.json")
    assert main(["merge", str(data), "-q"]) == 2
    line = one_error(capsys)
    assert f"{data / 'tokensft.json'}: cannot write it ({FULL}); every shard is kept" in line, line
    monkeypatch.undo()
    assert main(["merge", str(data), "-q"]) == 0
    assert len(tokensft.load(data)) == 8


def test_a_merge_of_a_finished_dataset_changes_nothing(tmp_path, tiny_dirs):
    data = scored(tmp_path, tiny_dirs["bpe"])
    def files():  # every file of the dataset, as bytes and time (the lock file is the merge's own)
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in data.iterdir()
                if p.is_file() and p.name != ".tokensft.lock"}

    before = files()
    assert main(["merge", str(data), "-q"]) == 0
    assert files() == before
    (data / "state.json").write_text("{garbled")  # but a merge still repairs what it writes
    assert main(["merge", str(data), "-q"]) == 0
    assert len(tokensft.load(data)) == 8


def test_enrich_output_inside_the_source_is_refused(tmp_path, tiny_dirs, capsys):
    data = scored(tmp_path, tiny_dirs["bpe"])
    capsys.readouterr()
    assert enrich_cli(data, "--mask=prob>=0.1", "--output", str(data / "sub")) == 2
    assert "is inside the dataset being enriched" in one_error(capsys)
    assert not (data / "sub").exists()
    assert enrich_cli(data, "--mask=prob>=0.1") == 0  # in place still works


def test_a_rerun_report_clears_the_staging_a_killed_one_left(tmp_path, tiny_dirs):
    data = scored(tmp_path, tiny_dirs["bpe"])
    out = tmp_path / "rep"
    assert main(["report", str(data), "-o", str(out), "-q", "-n", "0"]) == 0
    stale = tmp_path / ".rep.tmp-0123456789ab"  # what a report killed mid-write leaves
    stale.mkdir()
    (stale / "index.html").write_text("<html>half")
    mine = tmp_path / ".rep.tmp-notes"  # not a report's staging: left alone
    mine.mkdir()
    (mine / "mine.txt").write_text("keep me")
    assert main(["report", str(data), "-o", str(out), "-q", "-n", "0"]) == 0
    assert not stale.exists() and (mine / "mine.txt").read_text() == "keep me"


def test_a_ref_that_is_not_a_model_says_so_whole(tmp_path, tiny_dirs, capsys):
    data = scored(tmp_path, tiny_dirs["bpe"])
    not_a_model = tmp_path / "config-only"
    not_a_model.mkdir()
    shutil.copy(tiny_dirs["bpe"] / "config.json", not_a_model)
    (not_a_model / "tokenizer_config.json").write_text("{}")  # no tokenizer.json: transformers cannot build one
    capsys.readouterr()
    assert enrich_cli(data, "--ref", str(not_a_model)) == 2
    line = one_error(capsys)
    assert "cannot load the tokenizer" in line and not line.rstrip().endswith(("from one of:", ":")), line
    assert line.endswith("pass a model directory with a fast tokenizer (tokenizer.json, as save_pretrained writes it)")


def test_training_on_an_empty_dataset_says_it_is_empty(tmp_path, tiny_dirs, capsys):
    records = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}]
    data = scored(tmp_path, tiny_dirs["bpe"], "--skip-invalid", records=records)
    assert len(tokensft.load(data)) == 0
    capsys.readouterr()
    assert main(["train", str(data), "-o", str(tmp_path / "m"), "--model", str(tiny_dirs["bpe"]), "-q"]) == 2
    line = one_error(capsys)
    assert "the dataset is empty (0 examples" in line and "--eval-fraction" not in line, line
