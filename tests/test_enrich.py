"""`tokensft enrich` end to end on tiny models: masks equal their definitions on the stored
log-probs, references equal an independent computation in their own tokenizer and template,
teacher top-k equal a naive forward, a killed run resumes to a clean run's result, and bad
requests get one-line errors."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import dies_on_call, make_bpe_tokenizer, make_model, write_jsonl
from test_score_cli import QA, assert_same_rows, table_of
from test_scoring import naive_scores
from transformers import AutoModelForCausalLM, AutoTokenizer

import tokensft
from tokensft.cli import main
from tokensft.preprocess import rescore
from tokensft.preprocess.enrich import assemble as enrich_module
from tokensft.preprocess.enrich import jobs
from tokensft.records.formats import FormatSpec, to_example
from tokensft.core.masks import parse_mask
from tokensft.records.render import Renderer
from tokensft.core.schema import IGNORE_INDEX

CHATS = [
    {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "The answer is 4."},
                  {"role": "user", "content": "And 2 + 1?"}, {"role": "assistant", "content": "So the total is 3."}]},
    *({"messages": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]}
      for r in QA),
]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A second model with the bpe tokenizer (same token fingerprint), other weights."""
    tokenizer = make_bpe_tokenizer()
    path = tmp_path_factory.mktemp("teacher")
    make_model(tokenizer, "bpe", seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def scored(tmp_path: Path, model: Path, *extra: str, records=CHATS, name="scored") -> Path:
    data = write_jsonl(tmp_path / "data.jsonl", records)
    out = tmp_path / name
    assert main(["score", str(data), "--model", str(model), "--output", str(out), "-q", "--shard-size", "3", *extra]) == 0
    return out


def enrich_cli(directory: Path, *args: str) -> int:
    return main(["enrich", str(directory), "-q", *args])


def flat(table, column) -> tuple[np.ndarray, np.ndarray]:
    array = table[column].combine_chunks()
    return array.flatten().to_numpy(zero_copy_only=False), array.offsets.to_numpy()


def test_masks_equal_their_definitions(tmp_path, tiny_dirs):
    out = scored(tmp_path, tiny_dirs["bpe"])
    lp, offsets = flat(table_of(out), "logprob")
    probs = sorted(math.exp(x) for x in lp[~np.isnan(lp)])
    median = probs[len(probs) // 2]
    boundary = float(np.exp(np.float64(lp[~np.isnan(lp)][0])))  # exactly a stored p: must be kept by >=
    specs = [f"prob>={median!r}", f"prob>={boundary!r}", f"prob<={boundary!r}", f"prob-between:{probs[5]!r}:{median!r}",
             "top-frac:0.5", "quantile>=0.3", "random:0.4:7", "prob>=1", "prob>=0"]
    assert enrich_cli(out, *(f"--mask={s}" for s in specs)) == 0
    table, meta = table_of(out), tokensft.load_metadata(out)
    labels, _ = flat(table, "labels")
    target = labels != IGNORE_INDEX
    for spec in specs:
        column = parse_mask(spec).column
        entry = meta["enrichment"]["masks"][column]
        assert entry["spec"] == parse_mask(spec).spec
        mask, mask_offsets = flat(table, column)
        np.testing.assert_array_equal(mask_offsets, offsets)
        assert mask.dtype == np.int8 and not mask[~target].any(), spec
        assert entry["kept_targets"] == int(mask.sum()) and entry["targets"] == int(target.sum())
        p = [math.exp(x) if t else None for x, t in zip(lp, target)]
        if spec.startswith("prob>="):
            t = float(spec[6:])
            expected = [int(v is not None and (v >= t or same(v, t))) for v in p]
        elif spec.startswith("prob<="):
            expected = [int(v is not None and (v <= boundary or same(v, boundary))) for v in p]
        elif spec.startswith("prob-between"):
            expected = [int(v is not None and (probs[5] <= v or same(v, probs[5])) and (v <= median or same(v, median)))
                        for v in p]
        elif spec.startswith("top-frac"):
            expected = _naive_top_frac(lp, target, offsets, 0.5)
        elif spec.startswith("quantile"):
            values = sorted(float(x) for x in lp[target])
            threshold = values[math.floor(0.3 * (len(values) - 1))]
            assert entry["threshold"]["min_logprob"] == pytest.approx(threshold)
            expected = [int(bool(t) and float(x) >= threshold) for x, t in zip(lp, target)]
        else:  # random: the rate only; reproducibility is tested below
            assert abs(mask.sum() / target.sum() - 0.6) < 0.15 and entry["threshold"] == {"drop_fraction": 0.4, "seed": 7}
            continue
        assert mask.tolist() == expected, spec
    assert mask_kept(meta, f"prob>={boundary!r}") >= 1 and mask_kept(meta, "prob>=1") == 0
    assert mask_kept(meta, "prob>=0") == int(target.sum())


def same(a: float, b: float) -> bool:
    """Equal up to the last bits in which exp implementations differ (numpy SIMD vs math.exp)."""
    return math.isclose(a, b, rel_tol=1e-12)


def mask_kept(meta: dict, spec: str) -> int:
    return meta["enrichment"]["masks"][parse_mask(spec).column]["kept_targets"]


def _naive_top_frac(lp, target, offsets, fraction) -> list[int]:
    out = [0] * len(lp)
    for r in range(len(offsets) - 1):
        positions = [t for t in range(offsets[r], offsets[r + 1]) if target[t]]
        keep = math.ceil(fraction * len(positions))
        for t in sorted(positions, key=lambda t: (-lp[t], t))[:keep]:
            out[t] = 1
    return out


def test_random_mask_is_independent_of_sharding(tmp_path, tiny_dirs):
    a = scored(tmp_path, tiny_dirs["bpe"], name="a")
    b = scored(tmp_path, tiny_dirs["bpe"], "--shard-size", "5", name="b")
    for out in (a, b):
        assert enrich_cli(out, "--mask", "random:0.5:3", "--mask", "random:0.5:4") == 0
    ta, tb = table_of(a), table_of(b)
    assert flat(ta, "mask_random_0.5_seed3")[0].tolist() == flat(tb, "mask_random_0.5_seed3")[0].tolist()
    assert flat(ta, "mask_random_0.5_seed3")[0].tolist() != flat(ta, "mask_random_0.5_seed4")[0].tolist()


def naive_mean_logprob(model, rendered) -> float:
    ref = naive_scores(model, rendered.input_ids, rendered.labels, top_k=1)
    return float(np.mean(ref["logprob"]))


def test_reference_equals_its_own_tokenizer_and_template(tmp_path, tiny_dirs):
    """The primary is byte-level BPE + ChatML; the reference is Metaspace + a Llama-2 template."""
    out = scored(tmp_path, tiny_dirs["bpe"])
    assert enrich_cli(out, "--ref", str(tiny_dirs["sp"]), "--ref-name", "llama", "--ref", str(tiny_dirs["bpe"])) == 0
    ds = tokensft.load(out)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["sp"])
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["sp"]).eval()
    renderer = Renderer(tokenizer, "chat")  # built from the source records, not the stored messages
    for record, row in zip(CHATS, ds):
        rendered = renderer(to_example(record, FormatSpec(), "test", "messages"), "test")
        assert row["ref_llama_num_targets"] == sum(label != IGNORE_INDEX for label in rendered.labels)
        assert row["ref_llama_mean_logprob"] == pytest.approx(naive_mean_logprob(model, rendered), abs=1e-4)
        own = f"ref_{rescore.default_ref_name(str(tiny_dirs['bpe']))}"
        assert row[f"{own}_mean_logprob"] == pytest.approx(row["mean_logprob"], abs=1e-4)  # the scorer as its own ref
        assert row["ref_mean_logprob"] == pytest.approx((row["ref_llama_mean_logprob"] + row[f"{own}_mean_logprob"]) / 2)
    refs = tokensft.load_metadata(out)["enrichment"]["refs"]
    assert refs["llama"]["template"] == "chat" and refs["llama"]["counts"]["scored"] == len(CHATS)


def test_teacher_topk_equal_naive_and_mismatch_is_refused(tmp_path, tiny_dirs, teacher_dir, capsys):
    out = scored(tmp_path, tiny_dirs["bpe"])
    assert enrich_cli(out, "--teacher", str(tiny_dirs["sp"])) == 2
    assert "tokenizer differs" in capsys.readouterr().err
    assert enrich_cli(out, "--teacher", str(teacher_dir), "--top-k", "4", "--batch-tokens", "64") == 0
    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    for row in tokensft.load(out):
        ref = naive_scores(model, row["input_ids"], row["labels"], top_k=4)
        np.testing.assert_allclose(np.array(row["teacher_logprob"])[ref["pos"]], ref["logprob"], atol=1e-4)
        assert np.isnan([row["teacher_logprob"][t] for t, y in enumerate(row["labels"]) if y == IGNORE_INDEX]).all()
        np.testing.assert_array_equal([row["teacher_topk_ids"][t] for t in ref["pos"]], ref["topk_ids"])
        np.testing.assert_allclose([row["teacher_topk_logprobs"][t] for t in ref["pos"]], ref["topk_logprobs"], atol=2e-2)
        assert all(row["teacher_topk_ids"][t] == [] for t, y in enumerate(row["labels"]) if y == IGNORE_INDEX)


@pytest.mark.parametrize("kill_at", ["parts", "assembly"])
def test_killed_enrich_resumes_to_clean_result(tmp_path, tiny_dirs, teacher_dir, monkeypatch, kill_at):
    request = ["--mask", "quantile>=0.5", "--mask", "teacher:prob>=0.001", "--ref", str(tiny_dirs["sp"]),
               "--teacher", str(teacher_dir), "--top-k", "3"]
    clean = scored(tmp_path, tiny_dirs["bpe"], name="clean")
    assert enrich_cli(clean, *request) == 0
    out = scored(tmp_path, tiny_dirs["bpe"], name="killed")
    before = table_of(out)
    module, name = (jobs, "reference_columns") if kill_at == "parts" else (enrich_module, "write_shard")
    original, calls = getattr(module, name), []

    def dies_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, dies_on_second_call)
    assert enrich_cli(out, *request) == 130
    assert_same_rows(table_of(out), before)  # in place: readers still see the whole old dataset
    monkeypatch.undo()
    assert enrich_cli(out, *request) == 0
    assert_same_rows(table_of(out), table_of(clean))
    assert len(datasets.load_from_disk(str(out))) == len(CHATS)
    assert not (out.parent / f".{out.name}.enrich").exists()  # staging swapped in and the old copy removed
    assert tokensft.load_metadata(out)["enrichment"] == tokensft.load_metadata(clean)["enrichment"]


def test_output_copy_two_ranks_and_rerun(tmp_path, tiny_dirs):
    source = scored(tmp_path, tiny_dirs["bpe"])
    before = table_of(source)
    request = ["--mask", "top-frac:0.3", "--ref", str(tiny_dirs["sp"])]
    assert enrich_cli(source, *request, "--output", str(tmp_path / "one")) == 0
    for rank in (1, 0):
        assert enrich_cli(source, *request, "--output", str(tmp_path / "two"), "--rank", str(rank), "--world-size", "2") == 0
    assert_same_rows(table_of(source), before)  # --output leaves the source alone
    assert_same_rows(table_of(tmp_path / "two"), table_of(tmp_path / "one"))
    assert enrich_cli(source, *request, "--output", str(tmp_path / "one")) == 0  # already finished: no work


def test_score_with_enrich_flags_equals_score_then_enrich(tmp_path, tiny_dirs, teacher_dir, capsys):
    request = ["--mask", "prob>=0.001", "--ref", str(tiny_dirs["sp"]), "--teacher", str(teacher_dir)]
    together = scored(tmp_path, tiny_dirs["bpe"], *request, "--teacher-top-k", "2", name="together")
    apart = scored(tmp_path, tiny_dirs["bpe"], name="apart")
    assert enrich_cli(apart, *request, "--top-k", "2") == 0
    assert_same_rows(table_of(together), table_of(apart))
    capsys.readouterr()
    assert enrich_cli(together, *request, "--top-k", "2") == 0  # nothing left to do
    assert "already holds every requested column" in capsys.readouterr().out
    assert main(["inspect", str(together), "-n", "1"]) == 0
    shown = capsys.readouterr().out
    assert "mask_prob_ge_0.001: prob>=0.001 on logprob" in shown and "teacher: " in shown and "top-2" in shown
    assert f"ref_{rescore.default_ref_name(str(tiny_dirs['sp']))}: " in shown and "masks (1 = kept): a = mask_prob_ge_0.001" in shown


def test_bad_requests_get_one_line_errors(tmp_path, tiny_dirs, capsys):
    out = scored(tmp_path, tiny_dirs["bpe"])
    cases = [
        (["--mask", "prob>0.1"], "not a mask spec"),
        (["--mask", "prob>=1.5"], "outside [0, 1]"),
        (["--mask", "teacher:prob>=0.1"], "--teacher MODEL"),
        (["--ref", str(tiny_dirs["sp"]), "--ref", str(tiny_dirs["sp"])], "both be named"),
        (["--ref", str(tiny_dirs["sp"]), "--ref-name", "A-1"], "lowercase letters"),
        (["--ref", str(tmp_path / "nowhere")], "nowhere"),
        ([], "nothing to add"),
    ]
    for args, message in cases:
        assert enrich_cli(out, *args) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
    (out / "tokensft.json").write_text("{not json")
    assert enrich_cli(out, "--mask", "prob>=0.1") == 2
    assert "corrupt" in capsys.readouterr().err


def test_reference_that_cannot_render_is_named_or_skipped(tmp_path, tiny_dirs, capsys):
    picky = tmp_path / "picky"
    shutil.copytree(tiny_dirs["sp"], picky)
    tokenizer = AutoTokenizer.from_pretrained(picky)
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                               "{{ raise_exception('System role not supported') }}{% endif %}"
                               "{{ m['content'] + eos_token }}{% endfor %}")
    tokenizer.save_pretrained(picky)
    out = scored(tmp_path, tiny_dirs["bpe"])
    assert enrich_cli(out, "--ref", str(picky)) == 2
    err = capsys.readouterr().err
    assert "System role not supported" in err and "data-00000.arrow: example" in err and err.count("\n") == 1
    assert enrich_cli(out, "--ref", str(picky), "--skip-invalid") == 0
    row = tokensft.load(out)[0]
    assert math.isnan(row["ref_picky_mean_logprob"]) and row["ref_picky_num_targets"] == 0
    assert tokensft.load_metadata(out)["enrichment"]["refs"]["picky"]["counts"]["failed"] == {"template": 1}
    assert torch.isfinite(torch.tensor(tokensft.load(out)[1]["ref_mean_logprob"]))


def test_template_errors_name_the_commands_own_flag(tmp_path, tiny_dirs, capsys):
    """A reference's render error suggests enrich's --ref-template; the scorer's, score's --template."""
    shouting = tmp_path / "shouting"  # a chat template that does not keep the response text verbatim
    shutil.copytree(tiny_dirs["sp"], shouting)
    tokenizer = AutoTokenizer.from_pretrained(shouting)
    tokenizer.chat_template = "{% for m in messages %}{{ (m['content'] | upper) + eos_token }}{% endfor %}"
    tokenizer.save_pretrained(shouting)
    out = scored(tmp_path, tiny_dirs["bpe"])
    assert enrich_cli(out, "--ref", str(shouting)) == 2
    err = capsys.readouterr().err
    assert "--ref-template plain" in err and err.count("\n") == 1, err
    assert main(["score", str(tmp_path / "data.jsonl"), "--model", str(shouting), "-o", str(tmp_path / "s"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "--template plain" in err and "--ref-template" not in err, err


def test_old_copy_left_by_a_kill_after_the_swap_is_removed(tmp_path, tiny_dirs):
    out = scored(tmp_path, tiny_dirs["bpe"])
    staging = out.parent / f".{out.name}.enrich"
    shutil.copytree(out, staging)  # what a kill between the exchange and the clean-up leaves: the old dataset
    assert enrich_cli(out, "--mask", "prob>=0.001") == 0
    assert not staging.exists() and "mask_prob_ge_0.001" in table_of(out).column_names
    shutil.copytree(out, staging)
    assert enrich_cli(out, "--mask", "prob>=0.001") == 0  # nothing to do, but the leftover still goes
    assert not staging.exists()


def test_concurrent_in_place_enrichments_never_lose_the_dataset(tmp_path, tiny_dirs):
    import subprocess
    import sys

    out = scored(tmp_path, tiny_dirs["bpe"])
    runs = [subprocess.Popen([sys.executable, "-m", "tokensft", "enrich", str(out), "-q", "--mask", spec],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for spec in ("prob>=0.001", "top-frac:0.5", "prob>=0.001")]
    codes = [r.wait(timeout=120) for r in runs]
    assert set(codes) <= {0, 2} and 0 in codes, [r.stderr.read() for r in runs]
    table = table_of(out)  # whole and loadable whatever the interleaving
    assert table.num_rows == len(CHATS) and ("mask_prob_ge_0.001" in table.column_names or "mask_top_frac_0.5" in table.column_names)
    assert not (out.parent / f".{out.name}.enrich").exists()


def test_in_place_refuses_foreign_files_and_follows_dot_and_symlinks(tmp_path, tiny_dirs, capsys, monkeypatch):
    out = scored(tmp_path, tiny_dirs["bpe"])
    (out / "NOTES.md").write_text("mine")
    assert enrich_cli(out, "--mask", "prob>=0.001") == 2
    assert "NOTES.md" in capsys.readouterr().err and (out / "NOTES.md").read_text() == "mine"
    (out / "NOTES.md").unlink()
    link = tmp_path / "link"
    link.symlink_to(out)
    assert enrich_cli(link, "--mask", "prob>=0.001") == 0
    assert link.is_symlink() and "mask_prob_ge_0.001" in table_of(out).column_names
    monkeypatch.chdir(out)
    assert main(["enrich", ".", "-q", "--mask", "top-frac:0.5"]) == 0
    assert "mask_top_frac_0.5" in table_of(out).column_names
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".scored.lock"]


def test_kill_between_finish_and_swap_then_score_rerun(tmp_path, tiny_dirs, monkeypatch, capsys):
    out = scored(tmp_path, tiny_dirs["bpe"])

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(enrich_module, "_swap", killed)
    assert enrich_cli(out, "--mask", "prob>=0.001") == 130
    monkeypatch.undo()
    assert "mask_prob_ge_0.001" not in table_of(out).column_names
    assert enrich_cli(out, "--mask", "top-frac:0.5") == 0  # the pending swap is applied first, then this
    assert {"mask_prob_ge_0.001", "mask_top_frac_0.5"} <= set(table_of(out).column_names)
    capsys.readouterr()
    data = tmp_path / "data.jsonl"
    assert main(["score", str(data), "--model", str(tiny_dirs["bpe"]), "-o", str(out), "-q", "--shard-size", "3"]) == 0
    assert "already complete" in capsys.readouterr().out


def test_reference_with_a_new_template_is_rescored(tmp_path, tiny_dirs):
    out = scored(tmp_path, tiny_dirs["bpe"])
    other = tmp_path / "other"
    shutil.copytree(tiny_dirs["sp"], other)
    assert enrich_cli(out, "--ref", str(other), "--ref-name", "x") == 0
    before = tokensft.load(out)["ref_x_mean_logprob"]
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
    tokenizer.save_pretrained(other)
    assert enrich_cli(out, "--ref", str(other), "--ref-name", "x") == 0
    assert tokensft.load(out)["ref_x_mean_logprob"] != before


def test_score_with_enrichment_on_two_ranks(tmp_path, tiny_dirs):
    data = write_jsonl(tmp_path / "data.jsonl", CHATS)
    for rank in (1, 0):
        args = ["score", str(data), "--model", str(tiny_dirs["bpe"]), "-o", str(tmp_path / "out"), "-q",
                "--shard-size", "3", "--rank", str(rank), "--world-size", "2", "--mask", "prob>=0.001", "--ref", str(tiny_dirs["sp"])]
        assert main(args) == 0
    meta = tokensft.load_metadata(tmp_path / "out")
    assert "mask_prob_ge_0.001" in meta["enrichment"]["masks"] and len(meta["enrichment"]["refs"]) == 1


def test_more_bad_input_is_one_line(tmp_path, tiny_dirs, teacher_dir, capsys):
    out = scored(tmp_path, tiny_dirs["bpe"])
    for args, message in [(["--mask", "random_0.5_seed-1"], "seed"), (["--ref", str(tiny_dirs["sp"]), "--chunk-size", "0"], "positive"),
                          (["--teacher", str(teacher_dir), "--top-k", "0"], "K >= 1")]:
        assert enrich_cli(out, *args) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
    data = tmp_path / "data.jsonl"
    assert main(["score", str(data), "--model", str(tiny_dirs["bpe"]), "-o", str(tmp_path / "new"), "-q",
                 "--mask", "teacher:prob>=0.1"]) == 2
    assert "needs a teacher" in capsys.readouterr().err and not (tmp_path / "new").exists()  # refused before scoring
    (out / "tokensft.json").write_text("[]")
    assert enrich_cli(out, "--mask", "prob>=0.1") == 2
    assert "corrupt" in capsys.readouterr().err


def test_a_killed_in_place_enrichment_reuses_its_parts(tmp_path, tiny_dirs, monkeypatch):
    """Resume means resume: the chunks a killed run scored are not scored again."""
    out = scored(tmp_path, tiny_dirs["bpe"])
    original = jobs.reference_columns
    monkeypatch.setattr(jobs, "reference_columns", dies_on_call(original, 2))
    assert enrich_cli(out, "--ref", str(tiny_dirs["sp"])) == 130
    rerun = dies_on_call(original, 0)  # never dies: counts
    monkeypatch.setattr(jobs, "reference_columns", rerun)
    assert enrich_cli(out, "--ref", str(tiny_dirs["sp"])) == 0
    chunks = len([p for p in out.iterdir() if p.name.startswith("data-")])
    assert rerun.calls == chunks - 1  # the chunk finished before the kill was kept
