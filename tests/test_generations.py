"""Readers during a replacement: every tokensft reader sees one generation of a dataset while an
in-place enrich, a `score --overwrite` or a merge replaces it; a plain `datasets.load_from_disk`
can fail then (as the README says); a `score --overwrite` keeps the old dataset readable until the
new one is swapped in; and the stress test: a reader loading in a loop during a dozen replacements."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import pytest
from conftest import dies_on_call
from test_enrich import enrich_cli, scored

import tokensft
from tokensft.cli import main
from tokensft.core import generations
from tokensft.core.errors import ConfigError
from tokensft.core.fileio import exchange_dirs
from tokensft.core.locks import OutputLock
from tokensft.preprocess import run as run_module


def digest(dataset) -> str:
    """What identifies a generation's content: its columns and every value, in order."""
    table = dataset.data.table
    return hashlib.sha256(json.dumps([table.column_names, table.to_pylist()], default=str).encode()).hexdigest()[:16]


def test_read_whole_reads_again_when_the_directory_is_replaced(tmp_path, caplog):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokensft.json").write_text(name)
    calls = []

    def read():  # the first read is overtaken by an exchange, as an in-place enrich finishing would do
        calls.append((tmp_path / "a" / "tokensft.json").read_text())
        if len(calls) == 1:
            exchange_dirs(tmp_path / "b", tmp_path / "a")
        return calls[-1]

    with caplog.at_level(logging.WARNING, logger="tokensft"):  # (a -q command earlier may have raised its level)
        assert generations.read_whole(tmp_path / "a", read) == "b"
    assert calls == ["a", "b"]
    assert "was replaced while it was being read (an enrich or score finished); reading again" in caplog.text


def test_read_whole_raises_a_real_problem_as_it_is_and_gives_up_after_its_attempts(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()

    def broken():
        raise ConfigError("d: not a readable Arrow shard")

    with pytest.raises(ConfigError, match="not a readable Arrow shard"):  # nothing changed: the reader's own error
        generations.read_whole(tmp_path / "d", broken)
    monkeypatch.setattr(generations, "_PAUSE_S", 0.0)
    flips = iter(range(1000))

    def always_replaced():  # every read is overtaken by another write
        (tmp_path / "d" / f"f{next(flips)}").write_text("x")
        raise ValueError("Keys mismatch")

    with pytest.raises(ConfigError, match=r"was replaced 10 times while it was being read"):
        generations.read_whole(tmp_path / "d", always_replaced)


def test_generation_changes_with_every_kind_of_replacement(tmp_path):
    d, other = tmp_path / "d", tmp_path / "other"
    for path in (d, other):
        path.mkdir()
        (path / "tokensft.json").write_text("{}")
        (path / "state.json").write_text("{}")
    seen = [generations.generation(d)]
    exchange_dirs(other, d)  # an in-place enrich
    seen.append(generations.generation(d))
    (d / ".state.json.tmp").write_text("{}")
    os.replace(d / ".state.json.tmp", d / "state.json")  # a merge rewriting its files
    seen.append(generations.generation(d))
    assert len(set(seen)) == 3 and generations.generation(d) == seen[-1]


class SwapOnFirstShard:
    """Replaces `datasets`' per-shard open so that, just before the first shard opens, the dataset
    directory is exchanged for `new` -- an in-place enrich finishing in the middle of a load."""

    def __init__(self, monkeypatch, directory: Path, new: Path):
        self.directory, self.new, self.done = directory, new, False
        original = datasets.table.MemoryMappedTable.from_file
        lock = threading.Lock()

        def from_file(filename, *args, **kwargs):
            with lock:
                if not self.done:
                    self.done = True
                    exchange_dirs(self.new, self.directory)
            return original(filename, *args, **kwargs)

        monkeypatch.setattr(datasets.table.MemoryMappedTable, "from_file", staticmethod(from_file))


def _enriched_copy(source: Path, where: Path, mask: str) -> Path:
    """What an in-place enrichment of `source` will put in its place, made beforehand."""
    shutil.copytree(source, where)
    assert enrich_cli(where, f"--mask={mask}") == 0
    return where


def test_a_plain_load_from_disk_can_fail_during_an_in_place_enrich_and_tokensft_load_never_does(
        tmp_path, tiny_dirs, monkeypatch):
    """The README's statement about third-party readers, and tokensft.load's answer to it."""
    data = scored(tmp_path, tiny_dirs["bpe"])
    before = digest(tokensft.load(data))
    with monkeypatch.context() as patched:
        SwapOnFirstShard(patched, data, _enriched_copy(data, tmp_path / "new", "prob>=0.1"))
        with pytest.raises(ValueError, match="(?i)features|keys|match"):  # old state files, new shards
            datasets.load_from_disk(str(data))
    after = digest(tokensft.load(data))  # the new generation, whole
    assert after != before
    shutil.rmtree(tmp_path / "new")
    with monkeypatch.context() as patched:
        swap = SwapOnFirstShard(patched, data, _enriched_copy(data, tmp_path / "new", "prob>=0.2"))
        loaded = tokensft.load(data)  # overtaken by the same swap: read again
        assert swap.done
    assert "mask_prob_ge_0.2" in loaded.column_names and digest(loaded) == digest(tokensft.load(data))


def test_a_killed_score_overwrite_leaves_the_old_dataset_readable_and_resumes_to_a_clean_run(
        tmp_path, tiny_dirs, monkeypatch):
    data = scored(tmp_path, tiny_dirs["bpe"])
    assert enrich_cli(data, "--mask=prob>=0.1") == 0
    old = digest(tokensft.load(data))
    command = ["score", str(tmp_path / "data.jsonl"), "--model", str(tiny_dirs["bpe"]), "-o", str(data), "-q",
               "--shard-size", "2", "--overwrite"]
    monkeypatch.setattr(run_module, "_score_chunk", dies_on_call(run_module._score_chunk, 2))
    assert main(command) == 130  # interrupted (the CLI's own code for a kill)
    monkeypatch.undo()
    assert digest(tokensft.load(data)) == old  # still the old dataset, masks and all
    assert (tmp_path / ".scored.score").is_dir()  # the new one, half-written, beside it
    assert main(command) == 0  # resumes the staging, then swaps it in
    clean = tmp_path / "clean"
    assert main([*command[:5], str(clean), *command[6:-1]]) == 0
    assert digest(tokensft.load(data)) == digest(tokensft.load(clean))
    assert not (tmp_path / ".scored.score").exists()
    assert tokensft.load_metadata(data)["counts"] == tokensft.load_metadata(clean)["counts"]


def test_a_lock_file_swapped_away_from_its_waiter_is_taken_again_where_it_is_now(tmp_path):
    directory, replacement = tmp_path / "d", tmp_path / "e"
    directory.mkdir()
    replacement.mkdir()
    (replacement / ".tokensft.lock").write_text("")
    held = OutputLock(directory).__enter__()
    waiter, taken = OutputLock(directory), threading.Event()
    thread = threading.Thread(target=lambda: (waiter.__enter__(), taken.set()))
    thread.start()
    time.sleep(0.2)  # the waiter now waits on the old file
    exchange_dirs(replacement, directory)  # a swap: the old lock file now lives at e/
    held.__exit__(None, None, None)
    assert taken.wait(10)
    thread.join()
    assert os.fstat(waiter.file.fileno()).st_ino == os.stat(directory / ".tokensft.lock").st_ino
    waiter.__exit__(None, None, None)


READER = r"""
import hashlib, json, sys, time
from pathlib import Path
import tokensft
path, stop, out = (Path(a) for a in sys.argv[1:4])
loads, failures, seen = 0, [], {}
while not stop.exists():
    try:
        table = tokensft.load(path).data.table
        key = hashlib.sha256(json.dumps([table.column_names, table.to_pylist()], default=str).encode()).hexdigest()[:16]
        seen[key] = seen.get(key, 0) + 1
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {exc}"[:300])
    loads += 1
    if loads == 1:
        (out.parent / "ready").write_text("")
out.write_text(json.dumps({"loads": loads, "failures": failures, "seen": seen}))
"""


def test_stress_a_reader_loads_whole_generations_while_a_writer_replaces_the_dataset(tmp_path, tiny_dirs):
    """Seconds to a minute: 24 in-place enrichments and one score --overwrite while another process
    loads the dataset in a loop; no load fails, and every one is a version the writer wrote (without
    `read_whole` this fails: 2 to 7 failed loads in ~270, "Keys mismatch")."""
    data = scored(tmp_path, tiny_dirs["bpe"])
    versions = {digest(tokensft.load(data))}
    stop, out = tmp_path / "stop", tmp_path / "reader.json"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(data), str(stop), str(out)],
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "ready").exists():
            assert reader.poll() is None and time.monotonic() < deadline, reader.stderr.read()
            time.sleep(0.05)
        masks = [f"--mask=prob>={t}" for t in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)]
        steps = [["enrich", str(data), mask, "-q"] for mask in masks]
        steps.append(["score", str(tmp_path / "data.jsonl"), "--model", str(tiny_dirs["bpe"]), "-o", str(data),
                      "--shard-size", "2", "--overwrite", "-q"])  # the masks go: a version of its own
        steps += [["enrich", str(data), mask, "-q"] for mask in masks]
        for step in steps:
            assert main(step) == 0, step
            versions.add(digest(tokensft.load(data)))
            time.sleep(0.1)  # the reader loads a few times between replacements, too
    finally:
        stop.write_text("")
        reader.wait(timeout=120)
    result = json.loads(out.read_text())
    assert result["failures"] == [], result["failures"][:3]
    assert set(result["seen"]) <= versions, "a load saw something no writer wrote"
    assert len(versions) == 26 and result["loads"] >= 100, (len(versions), result["loads"])


def test_no_resume_never_replaces_a_dataset_of_other_settings_without_overwrite(tmp_path, tiny_dirs, capsys):
    data = scored(tmp_path, tiny_dirs["bpe"])
    before = digest(tokensft.load(data))
    other = ["score", str(tmp_path / "data.jsonl"), "--model", str(tiny_dirs["bpe"]), "-o", str(data), "-q",
             "--shard-size", "3", "--max-length", "24", "--no-resume"]
    assert main(other) == 2
    assert "holds a different scoring run (differs in: max_length)" in capsys.readouterr().err
    assert digest(tokensft.load(data)) == before and not (tmp_path / ".scored.score").exists()
    same = ["score", str(tmp_path / "data.jsonl"), "--model", str(tiny_dirs["bpe"]), "-o", str(data), "-q",
            "--shard-size", "3", "--no-resume"]
    assert main(same) == 0 and digest(tokensft.load(data)) == before  # the same settings: scored again, alike


def test_an_old_generation_left_in_staging_by_a_kill_is_never_swapped_back(tmp_path, tiny_dirs):
    data = scored(tmp_path, tiny_dirs["bpe"])
    assert enrich_cli(data, "--mask=prob>=0.1") == 0
    command = ["score", str(tmp_path / "data.jsonl"), "--model", str(tiny_dirs["bpe"]), "-o", str(data), "-q",
               "--shard-size", "3", "--overwrite"]
    clean = tmp_path / "clean"
    assert main([*command[:5], str(clean), *command[6:-1]]) == 0
    original = run_module.output.swap_in

    def killed_after_the_exchange(stage, directory):
        exchange_dirs(stage, directory)  # the new dataset is in place; the old one waits in staging...
        raise KeyboardInterrupt  # ...and the clean-up never runs

    run_module.output.swap_in = killed_after_the_exchange
    try:
        assert main(command) == 130
    finally:
        run_module.output.swap_in = original
    assert (tmp_path / ".scored.score").is_dir()  # the old, enriched generation, finished, same identity
    assert main([*command[:-1]]) == 0  # a rerun (no --overwrite: the dataset there is this run's)
    assert digest(tokensft.load(data)) == digest(tokensft.load(clean))  # not the old masks swapped back
