"""Damaged datasets: a truncated or garbled shard is one line naming the file and its repair, exit 2,
for every command; finishing and resuming verify each shard against its record (size, rows,
checksum) and rescore damaged or unverified ones; `inspect --verify` checks a whole dataset."""

from __future__ import annotations

import itertools
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import write_jsonl
from test_score_cli import QA, assert_same_rows, table_of

import tokensft
from tokensft.cli import main
from tokensft.core.errors import ConfigError
from tokensft.core.integrity import record_path
from tokensft.core.locks import RankLock
from tokensft.preprocess import shards as shards_module
from tokensft.preprocess.enrich import assemble

REPAIR = "rerun the `tokensft score` command that wrote it"


@dataclass
class Scored:
    data: Path  # the input
    model: Path
    out: Path  # a finished scored dataset: 7 rows in 3 shards (3, 3, 1)

    def score(self, out: Path, *extra: str, quiet: bool = True) -> int:
        """`tokensft score` of the same input (quiet=False: warnings shown, as without -q)."""
        return main(["score", str(self.data), "--model", str(self.model), "-o", str(out), "--shard-size", "3",
                     *(["-q"] if quiet else []), *extra])

    def copy(self, tmp_path: Path, name: str = "copy") -> Path:
        shutil.copytree(self.out, tmp_path / name)
        return tmp_path / name


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tiny_dirs) -> Scored:
    tmp = tmp_path_factory.mktemp("damaged")
    scored = Scored(write_jsonl(tmp / "data.jsonl", QA), tiny_dirs["bpe"], tmp / "clean")
    assert scored.score(scored.out) == 0
    return scored


def damage(shard: Path, how: str) -> None:
    data = shard.read_bytes()
    if how == "truncated":  # pyarrow: "Expected to be able to read N bytes for message body, got M" (OSError)
        shard.write_bytes(data[: len(data) // 2])
    elif how == "garbled":  # pyarrow: "Invalid flatbuffers message." (OSError)
        shard.write_bytes(data[:8] + b"\xab" * 50 + data[58:])
    else:  # one letter of a message's content changed: pyarrow reads it without complaint
        word = next(w for w in (b"Janet", b"bolts", b"Hello") if w in data)  # in shard 0, 1, 2 of QA
        shard.write_bytes(data.replace(word, word.upper(), 1))


def killed_on_call(n: int, real):
    """`real`, but interrupted (as by a kill) on its n-th call, before doing anything."""
    calls = itertools.count(1)

    def call(*args):
        if next(calls) == n:
            raise KeyboardInterrupt
        return real(*args)
    return call


def one_line(capsys, *expected: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)
    return err


@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_every_reader_names_the_damaged_shard(clean, tmp_path, capsys, how):
    out = clean.copy(tmp_path)
    damage(out / "data-00001.arrow", how)
    name = str(out / "data-00001.arrow")
    with pytest.raises(ConfigError, match="data-00001.arrow: not a readable Arrow shard") as caught:
        tokensft.load(out)
    assert REPAIR in str(caught.value) and "\n" not in str(caught.value)
    commands = {
        "inspect": ["inspect", str(out)],
        "report": ["report", str(out), "-o", str(tmp_path / "report"), "-q"],
        "enrich": ["enrich", str(out), "-q", "--mask", "prob>=0.1"],
        "train": ["train", str(out), "-o", str(tmp_path / "trained"), "--model", str(clean.model), "-q"],
    }
    for command, argv in commands.items():
        assert main(argv) == 2, command
        one_line(capsys, name, "not a readable Arrow shard", REPAIR)
    assert main(["merge", str(out)]) == 2
    one_line(capsys, name, REPAIR, "then merge")
    assert main(["inspect", str(out), "--verify"]) == 2
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].startswith(f"{name}: not a readable Arrow shard") and shown[-1].startswith("damaged: 1 problem")
    assert len(shown) == 2


def test_inspect_verify_passes_a_clean_dataset_and_finds_silent_damage(clean, tmp_path, capsys):
    assert main(["inspect", str(clean.out), "--verify"]) == 0
    assert capsys.readouterr().out.startswith("verified: 3 shards, 7 rows")
    out = clean.copy(tmp_path)
    damage(out / "data-00000.arrow", "flipped")
    assert len(tokensft.load(out)) == len(QA)  # readers cannot tell; the checksum can
    assert main(["inspect", str(out), "--verify"]) == 2
    shown = capsys.readouterr().out
    assert "data-00000.arrow: its bytes differ from those written (checksum mismatch" in shown
    assert main(["merge", str(out)]) == 2
    one_line(capsys, "data-00000.arrow: its bytes differ", REPAIR)


def test_finished_output_missing_a_shard_is_rescored(clean, tmp_path):
    out = clean.copy(tmp_path)
    (out / "data-00002.arrow").unlink()
    assert clean.score(out) == 0
    assert_same_rows(table_of(out), table_of(clean.out))


def test_score_rerun_rescores_only_the_damaged_shard(clean, tmp_path, caplog, monkeypatch):
    out = clean.copy(tmp_path)
    damage(out / "data-00001.arrow", "truncated")
    kept = (out / "data-00000.arrow").stat().st_mtime_ns
    written = []
    real = shards_module.write_record
    monkeypatch.setattr(shards_module, "write_record", lambda shard, rows: (written.append(shard.name), real(shard, rows)))
    with caplog.at_level(logging.WARNING, logger="tokensft"):
        assert clean.score(out, quiet=False) == 0
    assert written == ["data-00001.arrow"]  # nothing else rescored
    assert (out / "data-00000.arrow").stat().st_mtime_ns == kept
    assert "data-00001.arrow: " in caplog.text and "bytes where" in caplog.text and "it will be rescored" in caplog.text
    assert_same_rows(table_of(out), table_of(clean.out))
    assert tokensft.load_metadata(out)["counts"] == tokensft.load_metadata(clean.out)["counts"]
    assert main(["inspect", str(out), "--verify"]) == 0


def test_shard_without_record(clean, tmp_path, monkeypatch, capsys, caplog):
    """Killed between a shard's rename and its record's: resume rescores it; merge refuses it."""
    out = tmp_path / "killed"
    monkeypatch.setattr(shards_module, "write_record", killed_on_call(2, shards_module.write_record))
    assert clean.score(out) == 130
    assert (out / "data-00001.arrow").is_file() and not record_path(out / "data-00001.arrow").exists()
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="tokensft"):
        assert clean.score(out, quiet=False) == 0
    assert "data-00001.arrow: unverified: it has no record" in caplog.text
    assert_same_rows(table_of(out), table_of(clean.out))
    record_path(out / "data-00002.arrow").unlink()  # as a dataset from a tokensft before records
    capsys.readouterr()
    assert main(["merge", str(out)]) == 2
    one_line(capsys, "data-00002.arrow: unverified", REPAIR)
    assert main(["inspect", str(out), "--verify"]) == 2
    assert capsys.readouterr().out.splitlines()[-1].startswith("unverified: 1 shard(s) without a record")


def test_two_ranks_rescore_their_own_damaged_shards(clean, tmp_path, caplog):
    out = tmp_path / "ranks"
    assert clean.score(out, "--rank", "1", "--world-size", "2") == 0
    with RankLock(out, 1):  # rank 1 still live: its last record may be pending, so rank 0 leaves finishing to it
        assert clean.score(out, "--rank", "0", "--world-size", "2") == 0
    assert not (out / "state.json").exists()
    assert main(["merge", str(out), "-q"]) == 0
    damage(out / "data-00001.arrow", "garbled")  # rank 1's
    with caplog.at_level(logging.WARNING, logger="tokensft"):
        assert clean.score(out, "--rank", "0", "--world-size", "2", quiet=False) == 0  # verifies all, rescores none of its own
    assert "it will be rescored by rank 1 (rerun it)" in caplog.text and not (out / "state.json").exists()
    assert clean.score(out, "--rank", "1", "--world-size", "2") == 0
    assert_same_rows(table_of(out), table_of(clean.out))


def test_enriched_dataset_is_not_rescored(clean, tmp_path, capsys):
    out = clean.copy(tmp_path)
    assert main(["enrich", str(out), "-q", "--mask", "prob>=0.1"]) == 0
    assert main(["inspect", str(out), "--verify"]) == 0  # the swapped-in dataset's records match its shards
    capsys.readouterr()
    damage(out / "data-00002.arrow", "truncated")
    assert clean.score(out) == 2  # rescoring the shard would lose its mask column
    one_line(capsys, "data-00002.arrow", "the dataset is enriched", "--overwrite", "enrich_history")
    assert main(["inspect", str(out)]) == 2
    one_line(capsys, "data-00002.arrow: not a readable Arrow shard", "the dataset is enriched")


def test_enrich_rebuilds_a_damaged_final_shard_on_resume(clean, tmp_path, monkeypatch):
    request = ["enrich", str(clean.out), "-q", "--mask", "top-frac:0.5"]
    assert main([*request, "-o", str(tmp_path / "whole")]) == 0
    monkeypatch.setattr(assemble, "write_shard", killed_on_call(3, assemble.write_shard))
    assert main([*request, "-o", str(tmp_path / "killed")]) == 130
    monkeypatch.undo()
    damage(tmp_path / "killed" / "data-00001.arrow", "flipped")
    assert main([*request, "-o", str(tmp_path / "killed")]) == 0
    assert_same_rows(table_of(tmp_path / "killed"), table_of(tmp_path / "whole"))
    assert main(["inspect", str(tmp_path / "killed"), "--verify"]) == 0


def test_damaged_save_to_disk_input_is_named(tmp_path, tiny_dirs, capsys):
    import datasets

    source = tmp_path / "input"
    datasets.Dataset.from_list(QA).save_to_disk(str(source))
    shard = next(source.glob("*.arrow"))
    damage(shard, "truncated")
    capsys.readouterr()
    assert main(["score", str(source), "--model", str(tiny_dirs["bpe"]), "-o", str(tmp_path / "out"), "-q"]) == 2
    one_line(capsys, f"input/{shard.name}: cannot be read as a save_to_disk dataset (Expected to read")
