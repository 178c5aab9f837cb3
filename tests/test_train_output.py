"""`tokensft train` guards its output: one writer per output (a rank lock), a finished run is complete
or refused (never silently replaced), only an empty directory or a training output is written,
nothing-to-train is refused, a zero-kept step is counted, and a failed checkpoint write is one line
that keeps the previous checkpoint (the rerun resumes exactly)."""

from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from test_enrich import enrich_cli, scored

from tokensft.cli import main
from tokensft.core.errors import ConfigError
from tokensft.core.locks import RankLock
from tokensft.train import checkpoints
from tokensft.train.data import TrainData
from tokensft.train.objectives import parse_objective
from tokensft.train.output import locked

FAST = ["--max-steps", "2", "--batch-size", "4", "--lr", "1e-3", "-q", "--seed", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_dirs) -> Path:
    """CHATS scored by the tiny bpe model, with a mask that keeps nothing (p >= 1 on a random model)."""
    out = scored(tmp_path_factory.mktemp("guard-data"), tiny_dirs["bpe"])
    assert enrich_cli(out, "--mask", "prob>=1") == 0
    return out


def train(data: Path, out: Path, model: Path, *extra: str) -> int:
    return main(["train", str(data), "--output", str(out), "--model", str(model), *FAST, *extra])


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def listing(directory: Path) -> dict[str, int]:
    """Every path under `directory` with its mtime (ns), but the lock files (a holder writes its name there)."""
    paths = [directory, *(p for p in directory.rglob("*") if ".tokensft" not in p.parts)]
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in paths}


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_a_second_trainer_is_refused_and_the_lock_is_released(data, tiny_dirs, tmp_path, capsys):
    out = tmp_path / "ckpt"
    with RankLock(out, 0):  # another `tokensft train` (or its process 0) writing this output
        assert train(data, out, tiny_dirs["bpe"]) == 2
        assert "another tokensft run" in one_line(capsys)
        assert sorted(p.name for p in out.iterdir()) == [".tokensft"]  # nothing of the run written
    assert train(data, out, tiny_dirs["bpe"]) == 0
    with RankLock(out, 0):  # released when the run ended
        pass
    assert (out / ".tokensft").is_dir() and (out / "model.safetensors").is_file()  # the final save left it


class TwoProcesses:
    """Process 1 of a 2-process run whose process 0 was refused its lock (the collective sums the refusals)."""

    process_index, device = 1, "cpu"

    def reduce(self, tensor, reduction):
        return tensor + 1


def test_a_refusal_on_one_process_refuses_every_process(tmp_path):
    with pytest.raises(ConfigError, match="another process of this run was refused"), locked(TwoProcesses(), tmp_path):
        raise AssertionError("entered despite a refused process")
    with RankLock(tmp_path, 1):  # its own lock, taken, was released
        pass


def test_a_finished_run_is_complete_or_refused_unless_overwrite(data, tiny_dirs, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert train(data, out, tiny_dirs["bpe"]) == 0
    assert not any("zero_kept" in row for row in rows(out))
    before = listing(out)
    capsys.readouterr()
    assert train(data, out, tiny_dirs["bpe"]) == 0  # the same settings: nothing to do
    assert "already complete" in capsys.readouterr().out
    assert listing(out) == before  # weights, metrics, config untouched
    assert train(data, out, tiny_dirs["bpe"], "--objective", "p", "--lr", "2e-3") == 2
    err = one_line(capsys)
    assert "finished run with other settings (learning_rate: 0.001 there, 0.002 now; also objective)" in err
    assert "--overwrite" in err and listing(out) == before
    assert train(data, out, tiny_dirs["bpe"], "--lr", "2e-3", "--overwrite") == 0
    assert json.loads((out / "train_config.json").read_text())["learning_rate"] == 2e-3 and len(rows(out)) == 2
    assert json.loads((out / checkpoints.FINISHED_FILE).read_text())["identity"]["learning_rate"] == 2e-3


@pytest.mark.parametrize("what", ["model", "dataset", "foreign", "inside-dataset"])
def test_output_must_be_empty_or_a_training_output(data, tiny_dirs, tmp_path, capsys, what):
    model = tmp_path / "model"
    shutil.copytree(tiny_dirs["bpe"], model)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    out = {"model": model, "dataset": data, "foreign": foreign, "inside-dataset": data / "ckpt"}[what]
    watched = out if out.exists() else data
    before = listing(watched)
    assert main(["train", str(data), "--output", str(out), "--model", str(model), *FAST]) == 2
    err = one_line(capsys)
    assert f"--output {out}: " in err and "choose another --output" in err
    assert {"model": "is the model being trained", "dataset": "is the dataset", "foreign": "found notes.txt",
            "inside-dataset": "is inside the dataset being trained on"}[what] in err
    assert listing(watched) == before  # nothing written there


def test_a_killed_start_is_still_a_training_output(data, tiny_dirs, tmp_path):
    """A run killed right after taking its lock left only .tokensft/lock-rank0 (and a temp config)."""
    out = tmp_path / "ckpt"
    with RankLock(out, 0):
        pass
    (out / ".train_config.json.tmp-0123456789ab").write_text("{")
    assert train(data, out, tiny_dirs["bpe"]) == 0


def test_a_mask_that_keeps_nothing_is_refused_with_the_count(data, tiny_dirs, tmp_path, capsys):
    full = TrainData(str(data), parse_objective("nll"))
    targets = int(full.table.column("num_targets").to_numpy().sum())
    assert train(data, tmp_path / "x", tiny_dirs["bpe"], "--mask", "prob>=1") == 2
    err = one_line(capsys)
    assert f"--mask prob>=1 keeps 0 of the {targets} targets of the train split ({len(full.ids)} examples)" in err
    assert not (tmp_path / "x").exists()
    held = TrainData(str(data), parse_objective("nll"), eval_fraction=0.5)
    train_targets = int(held.table.column("num_targets").to_numpy()[held.train_indices].sum())
    assert 0 < len(held.eval_indices) and train_targets < targets
    assert train(data, tmp_path / "x", tiny_dirs["bpe"], "--mask", "prob>=1", "--eval-fraction", "0.5", "--seed", "0") == 2
    assert (f"keeps 0 of the {train_targets} targets of the train split ({len(held.train_indices)} examples; "
            f"{len(held.eval_indices)} held out by --eval-fraction 0.5)") in one_line(capsys)


def test_a_train_split_without_targets_is_refused(data):
    full = TrainData(str(data), parse_objective("nll"))
    column = full.table.column_names.index("num_targets")
    full.table = full.table.set_column(column, "num_targets", pa.array([0] * full.table.num_rows, pa.int32()))
    with pytest.raises(ConfigError, match=r"the train split \(\d+ examples\) has no supervised targets"):
        full._check_targets(None, 0.0)


def test_a_step_that_keeps_no_target_is_counted(data, tiny_dirs, tmp_path, caplog):
    out = tmp_path / "ckpt"
    args = [a for a in FAST if a != "-q"]
    with caplog.at_level(logging.WARNING, logger="tokensft"):  # (an earlier -q in this process raised the level)
        assert main(["train", str(data), "-o", str(out), "--model", str(tiny_dirs["bpe"]), *args,
                     "--objective", "threshold-nll:0.99"]) == 0  # p >= 0.99: no target of a random model
    assert [(r["zero_kept"], r["zero_kept_steps"]) for r in rows(out)] == [(True, 1), (True, 2)]
    warned = [r.getMessage() for r in caplog.records if "no target kept" in r.getMessage()]
    assert len(warned) == 2 and warned[0].startswith("step 1 of 2: no target kept") and "2 such steps so far" in warned[1]


def test_a_full_disk_during_a_checkpoint_keeps_the_last_one(data, tiny_dirs, tmp_path, monkeypatch, capsys):
    args = ["--max-steps", "3", "--save-every", "1"]
    assert train(data, tmp_path / "clean", tiny_dirs["bpe"], *args) == 0
    out = tmp_path / "full"
    real_save = torch.save

    def disk_full_at_step_2(obj, f, *a, **k):  # accelerate's optimizer.bin, scheduler.bin, RNG state
        if ".step-2.tmp" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", disk_full_at_step_2)
    capsys.readouterr()
    assert train(data, out, tiny_dirs["bpe"], *args) == 2
    monkeypatch.undo()
    err = one_line(capsys)
    assert f"error: {out / 'checkpoints' / 'step-2'}: cannot write checkpoint (No space left on device)" in err
    assert f"the last complete checkpoint, {out / 'checkpoints' / 'step-1'}, is kept" in err
    assert [p.name for p in checkpoints.checkpoints(out)] == ["step-1"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1"]  # the partial one removed
    assert train(data, out, tiny_dirs["bpe"], *args) == 0  # resumes from step 1
    a, b = load_file(tmp_path / "clean" / "model.safetensors"), load_file(out / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)
    assert [r["loss"] for r in rows(out)] == [r["loss"] for r in rows(tmp_path / "clean")]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) for a real ENOSPC")
def test_what_a_full_disk_raises_becomes_one_line(tmp_path):
    """The exceptions measured on a full disk (see train/checkpoints.py), as SaveError; other errors pass."""
    dev_full = tmp_path / "optimizer.bin"
    dev_full.symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.raises(RuntimeError) as raised:
        torch.save({"a": torch.zeros(10_000)}, dev_full)  # what torch.save really raises on ENOSPC
    failures = [raised.value, SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
                OSError(errno.ENOSPC, "No space left on device")]
    for exc in failures:
        with (pytest.raises(checkpoints.SaveError, match=r"^/ckpt/checkpoints/step-2: cannot write checkpoint \(.+\); "),
              checkpoints._writing(Path("/ckpt/checkpoints/step-2"), "checkpoint", tmp_path, None)):
            raise exc
    with pytest.raises(RuntimeError, match="a bug"), checkpoints._writing(Path("/ckpt"), "checkpoint", tmp_path, None):
        raise RuntimeError("a bug")


def test_a_model_inside_the_output_and_an_unfinished_output_are_refused(data, tiny_dirs, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert train(data, out, tiny_dirs["bpe"], "--max-steps", "2", "--save-every", "1") == 0
    step = out / "checkpoints" / "step-1"
    assert train(data, out, step, "--max-steps", "2", "--overwrite") == 2  # it would delete the model it trains
    assert "holds the model being trained" in one_line(capsys) and step.is_dir()
    (out / "tokensft_train.json").unlink()  # as a killed `--overwrite` rerun leaves it: the old model files remain
    (tmp_path / "x.jsonl").write_text('{"question": "What is 2 + 2?", "answer": "4"}\n')
    assert main(["score", str(tmp_path / "x.jsonl"), "--model", str(out), "-o", str(tmp_path / "s"), "-q"]) == 2
    assert "unfinished `tokensft train` output" in one_line(capsys)
