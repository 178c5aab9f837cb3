"""`tokensft score` end to end on tiny models: the output loads, equals the naive scores, resumes
to exactly a clean run, splits across ranks, refuses conflicts, and reports bad input in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest
from conftest import write_jsonl
from test_scoring import naive_scores
from transformers import AutoModelForCausalLM

import tokensft
from tokensft.cli import main
from tokensft.core.errors import ConfigError
from tokensft.preprocess import run as run_module
from tokensft.core.locks import RankLock
from tokensft.core.schema import IGNORE_INDEX

QA = [
    {"question": "What is 2 + 2?", "answer": "The answer is 4."},
    {"question": "Janet has 16 eggs. She eats 3; how many are left?", "answer": "16 - 3 = 13 eggs.\n#### 13"},
    {"question": "Say hi", "answer": "Hi"},
    {"question": "Tell me a joke about cats.", "answer": "The cat naps, then naps again!"},
    {"question": "Write code", "answer": "def add(a, b):\n    return a + b"},
    {"question": "How many bolts?", "answer": "It takes 2/2=1 bolt, so 3 in total.\n#### 3"},
    {"question": "Hello there!", "answer": "Hello! How can I help you today?"},
]


def score_cli(tmp_path: Path, model_dir: Path, *extra: str, records=QA, name="out") -> tuple[int, Path]:
    data = write_jsonl(tmp_path / "data.jsonl", records)
    out = tmp_path / name
    code = main(["score", str(data), "--model", str(model_dir), "--output", str(out), "--quiet", *extra])
    return code, out


def table_of(out: Path) -> pa.Table:
    return tokensft.load(out).data.table


def assert_same_rows(a: pa.Table, b: pa.Table) -> None:
    """Exactly equal, NaN == NaN (arrow's equals says NaN != NaN), including list structure."""
    assert a.schema.remove_metadata() == b.schema.remove_metadata() and a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a[name].combine_chunks(), b[name].combine_chunks()
        while pa.types.is_list(x.type):
            np.testing.assert_array_equal(x.offsets.to_numpy(), y.offsets.to_numpy(), err_msg=name)
            x, y = x.flatten(), y.flatten()
        np.testing.assert_array_equal(x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False), err_msg=name)


def test_output_loads_and_equals_naive(tmp_path, family, tiny_dirs):
    code, out = score_cli(tmp_path, tiny_dirs[family], "--top-k", "3", "--batch-tokens", "64")
    assert code == 0
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == len(QA)
    assert ds.features["topk_logprobs"].feature.feature.dtype == "float16"
    meta = tokensft.load_metadata(out)
    assert meta["counts"]["read"] == len(QA) and meta["counts"]["written"] == len(QA)
    assert meta["counts"]["targets"] == sum(ds["num_targets"])
    assert meta["top_k"] == 3 and meta["render"]["format"] == "prompt-response"
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[family]).eval()
    for row in ds:
        ref = naive_scores(model, row["input_ids"], row["labels"], top_k=3)
        lp = np.array(row["logprob"], dtype=np.float64)
        np.testing.assert_allclose(lp[ref["pos"]], ref["logprob"], atol=1e-4)
        np.testing.assert_allclose(np.array(row["entropy"])[ref["pos"]], ref["entropy"], atol=1e-4)
        np.testing.assert_array_equal(np.array(row["rank"])[ref["pos"]], ref["rank"])
        topk = np.array([row["topk_logprobs"][t] for t in ref["pos"]], dtype=np.float64)
        np.testing.assert_allclose(topk, ref["topk_logprobs"], atol=2e-2)  # float16 storage
        assert all(row["topk_ids"][t] == [] for t, y in enumerate(row["labels"]) if y == IGNORE_INDEX)
        assert math.isclose(row["mean_logprob"], float(np.mean(ref["logprob"])), abs_tol=1e-4)
        assert row["num_targets"] == len(ref["pos"]) and row["num_tokens"] == len(row["input_ids"])


def test_inspect_shows_tokens(tmp_path, tiny_dirs, capsys):
    code, out = score_cli(tmp_path, tiny_dirs["bpe"], "--top-k", "2")
    capsys.readouterr()
    assert main(["inspect", str(out), "-n", "1"]) == 0
    shown = capsys.readouterr().out
    assert "rows read 7, written 7" in shown and "logprob: list<item: float>" in shown
    assert "The" in shown and "top alternatives" in shown


def test_killed_run_resumes_to_clean_run(tmp_path, tiny_dirs, monkeypatch):
    _, clean = score_cli(tmp_path, tiny_dirs["bpe"], "--shard-size", "2", name="clean")
    real_write = run_module.write_shard
    calls = {"n": 0}

    def crash_after_two(directory, chunk, table, stats):
        if calls["n"] == 2:
            # die mid-write: a temp file is left behind, as after SIGKILL
            (directory / f".data-{chunk:05d}.arrow.tmp-999").write_bytes(b"partial")
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_write(directory, chunk, table, stats)

    monkeypatch.setattr(run_module, "write_shard", crash_after_two)
    code, out = score_cli(tmp_path, tiny_dirs["bpe"], "--shard-size", "2", name="killed")
    assert code == 130 and not (out / "state.json").exists()
    assert len(list(out.glob("data-*.arrow"))) == 2
    monkeypatch.setattr(run_module, "write_shard", real_write)
    code, out = score_cli(tmp_path, tiny_dirs["bpe"], "--shard-size", "2", name="killed")
    assert code == 0
    assert_same_rows(table_of(out), table_of(clean))
    assert tokensft.load_metadata(out)["counts"] == tokensft.load_metadata(clean)["counts"]


def test_two_ranks_equal_one(tmp_path, tiny_dirs, capsys):
    _, single = score_cli(tmp_path, tiny_dirs["sp"], "--shard-size", "2", name="single")
    code, multi = score_cli(tmp_path, tiny_dirs["sp"], "--shard-size", "2", "--rank", "1", "--world-size", "2", name="multi")
    assert code == 0 and "rank 1 done" in capsys.readouterr().out
    assert main(["merge", str(multi)]) == 2  # rank 0's chunks are missing: refused, one line
    assert "chunks not scored yet" in capsys.readouterr().err
    code, _ = score_cli(tmp_path, tiny_dirs["sp"], "--shard-size", "2", "--rank", "0", "--world-size", "2", name="multi")
    assert code == 0 and (multi / "state.json").exists()  # the last rank finished it
    assert_same_rows(table_of(multi), table_of(single))
    assert tokensft.load_metadata(multi)["counts"] == tokensft.load_metadata(single)["counts"]


def test_rank_from_environment(monkeypatch):
    from tokensft.core.identity import env_rank as _env_rank

    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")
    assert _env_rank() == (2, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _env_rank() == (1, 2)


def test_different_config_refused_then_overwritten(tmp_path, tiny_dirs, capsys):
    score_cli(tmp_path, tiny_dirs["bpe"])
    code, out = score_cli(tmp_path, tiny_dirs["bpe"], "--top-k", "2")
    err = capsys.readouterr().err
    assert code == 2 and "differs in: top_k" in err and "--overwrite" in err
    code, out = score_cli(tmp_path, tiny_dirs["bpe"], "--top-k", "2", "--overwrite")
    assert code == 0 and tokensft.load_metadata(out)["top_k"] == 2
    code, _ = score_cli(tmp_path, tiny_dirs["bpe"], "--top-k", "2")  # same config, finished: nothing to do
    assert code == 0


def test_lock_refuses_second_writer(tmp_path, tiny_dirs):
    out = tmp_path / "out"
    out.mkdir()
    with RankLock(out, 0):
        with pytest.raises(ConfigError, match="another tokensft run"):
            with RankLock(out, 0):
                pass
        with RankLock(out, 1):  # other ranks are free
            pass


def test_truncation_and_no_target_rows_are_counted(tmp_path, tiny_dirs, capsys):
    code, out = score_cli(tmp_path, tiny_dirs["bpe"], "--max-length", "24")
    meta = tokensft.load_metadata(out)
    counts = meta["counts"]
    assert code == 0 and counts["read"] == len(QA)
    assert counts["written"] + sum(counts["skipped"].values()) == len(QA)
    assert counts["skipped"].get("no_targets_after_truncation", 0) >= 1  # the long question leaves no room
    ds = tokensft.load(out)
    # truncated counts the rows cut, written or then skipped for want of targets
    assert counts["truncated"] == sum(ds["truncated"]) + counts["skipped"]["no_targets_after_truncation"]
    assert sum(ds["truncated"]) >= 1
    assert all(n <= 24 for n in ds["num_tokens"])


BAD_INPUTS = {
    "malformed-json": ('{"question": "a", "answer": "b"}\n{"question": oops}\n', "data.jsonl line 2"),
    "missing-field": ('{"question": "a", "answer": "b"}\n{"question": "c"}\n', "data.jsonl line 2, field 'answer'"),
    "empty-field": ('{"question": "a", "answer": "b"}\n{"question": "c", "answer": ""}\n', "field 'answer'"),
    "wrong-type": ('{"question": "a", "answer": "b"}\n{"question": "c", "answer": 5}\n', "field 'answer'"),
    "unknown-role": ('{"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}\n', "unknown role 'bot'"),
    "empty-file": ("", "no records"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_exit_2(tmp_path, tiny_dirs, capsys, case):
    content, expected = BAD_INPUTS[case]
    (tmp_path / "data.jsonl").write_text(content, encoding="utf-8")
    code = main(["score", str(tmp_path / "data.jsonl"), "--model", str(tiny_dirs["bpe"]), "-o", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "data.jsonl" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_non_utf8_and_skip_invalid_counts(tmp_path, tiny_dirs, capsys):
    data = tmp_path / "data.jsonl"
    good = json.dumps(QA[0]) + "\n"
    data.write_bytes(good.encode() + b'{"question": "caf\xe9", "answer": "x"}\n' + good.encode()
                     + b'{"question": "c"}\n')
    args = ["score", str(data), "--model", str(tiny_dirs["bpe"]), "-o", str(tmp_path / "o"), "-q"]
    assert main(args) == 2
    assert "line 2" in capsys.readouterr().err
    assert main([*args, "--skip-invalid"]) == 0
    counts = tokensft.load_metadata(tmp_path / "o")["counts"]
    assert counts["written"] == 2 and counts["skipped"] == {"encoding": 1, "missing_field": 1}


def test_chunk_without_rows_still_finishes(tmp_path, tiny_dirs):
    """A line the row count sees but the reader drops (only an ideographic space) leaves a chunk
    with no rows: it gets an empty shard, and the output finishes."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in QA[:3]) + "\u3000\n", encoding="utf-8")
    code = main(["score", str(data), "--model", str(tiny_dirs["bpe"]), "-o", str(tmp_path / "o"), "-q", "--shard-size", "3"])
    assert code == 0 and len(tokensft.load(tmp_path / "o")) == 3


def test_output_that_is_a_file_is_one_line(tmp_path, tiny_dirs, capsys):
    (tmp_path / "taken").write_text("x")
    code, _ = score_cli(tmp_path, tiny_dirs["bpe"], name="taken")
    err = capsys.readouterr().err
    assert code == 2 and "taken" in err and err.count("\n") == 1 and "Traceback" not in err


def test_several_ranks_refuse_overwrite(tmp_path, tiny_dirs, capsys):
    code, _ = score_cli(tmp_path, tiny_dirs["bpe"], "--rank", "0", "--world-size", "2", "--overwrite")
    assert code == 2 and "delete the output directory first" in capsys.readouterr().err


def test_default_max_length_is_the_model_context(tmp_path, tiny_dirs):
    long = {"question": "Write a lot.", "answer": "The cat naps, then naps again! " * 200}
    code, out = score_cli(tmp_path, tiny_dirs["bpe"], records=[QA[0], long])
    meta = tokensft.load_metadata(out)
    ds = tokensft.load(out)
    assert code == 0 and meta["max_length"] == 512  # the tiny model's max_position_embeddings
    assert ds["num_tokens"][1] == 512 and ds["truncated"] == [False, True] and meta["counts"]["truncated"] == 1


def test_resume_keeps_temp_files_of_a_live_writer(tmp_path):
    from tokensft.core.locks import OutputLock
    from tokensft.preprocess.output import prepare

    run = {"identity": {"x": 1}, "metadata": {}, "num_chunks": 1, "fingerprint": "f"}
    out = tmp_path / "out"
    with OutputLock(out):
        assert prepare(out, run, overwrite=False) == "new"
    tmp = out / ".data-00000.arrow.tmp-abc"
    tmp.write_bytes(b"being written")
    with RankLock(out, 1):  # another process writing rank 1 right now
        with OutputLock(out):
            assert prepare(out, run, overwrite=False) == "resume"
        assert tmp.exists()
    with OutputLock(out):
        assert prepare(out, run, overwrite=False) == "resume"
    assert not tmp.exists()  # nobody writing: a leftover, removed
