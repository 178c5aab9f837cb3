"""`tokensft eval` end to end on a tiny model: its rows equal a plain render + `model.generate` loop,
its teacher-forced numbers those of a plain forward per record, and a killed run resumes to the clean result."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from conftest import dies_on_call, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

import tokensft
from tokensft.core.errors import ConfigError, InputError
from tokensft.evaluate import run as eval_run
from tokensft.evaluate.answers import parse_metric
from tokensft.evaluate.config import EvalConfig
from tokensft.evaluate.run import evaluate
from tokensft.records.formats import FormatSpec, to_example
from tokensft.records.render import Renderer

RECORDS = [
    {"id": "q0", "question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
    {"id": "q1", "question": "Janet has 16 eggs. She eats 3. How many are left?", "answer": "16 - 3 = 13\n#### 13"},
    {"id": "q2", "question": "Hi", "answer": "Hello there! #### 0"},
    {"id": "q3", "question": "How many bolts in total does it take?", "answer": "It takes 3.\n#### 3"},
    {"id": "q4", "question": "Tell me a joke about cats.", "answer": "The cat naps. #### 1"},
]


def _config(tmp_path, model_dir, **kw):
    data = write_jsonl(tmp_path / "heldout.jsonl", RECORDS)
    settings = dict(model=str(model_dir), input=str(data), output=str(tmp_path / "eval"), metric="numeric",
                    max_new_tokens=10, shard_size=2, quiet=True)
    return EvalConfig(**{**settings, **kw})


def _naive_rows(model_dir, max_new_tokens: int, metric: str) -> list[dict]:
    """Render each prompt as scoring does (up to the answer's first token), then a plain generate loop."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    renderer = Renderer(tokenizer, "auto", 512)
    stops = [tokenizer.eos_token_id]
    rows = []
    for i, record in enumerate(RECORDS):
        example = to_example(record, FormatSpec(), f"line {i + 1}", "prompt-response")
        rendered = renderer(example, "x")
        first = next(t for t, y in enumerate(rendered.labels) if y != -100)
        prompt = rendered.input_ids[:first]
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                             pad_token_id=tokenizer.pad_token_id or 0)
        ids = out[0, len(prompt):].tolist()
        stopped = bool(ids) and ids[-1] in stops
        text = tokenizer.decode(ids[:-1] if stopped else ids, skip_special_tokens=True)
        rows.append({"id": record["id"], "completion": text, "new_tokens": len(ids), "stopped": stopped,
                     "correct": parse_metric(metric).correct(text, record["answer"])})
    return rows


def _rows(directory) -> list[dict]:
    return pq.read_table(directory / "examples.parquet").to_pylist()


def _naive_target_logprobs(model_dir) -> list[float]:
    """log p of every target token of RECORDS, rendered as score renders them, from one unbatched forward each."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    renderer = Renderer(tokenizer, "auto", model.config.max_position_embeddings)
    out = []
    for i, record in enumerate(RECORDS):
        rendered = renderer(to_example(record, FormatSpec(), f"line {i + 1}", "prompt-response"), "x")
        with torch.no_grad():
            logprob = torch.log_softmax(model(torch.tensor([rendered.input_ids])).logits[0].float(), dim=-1)
        out += [logprob[t - 1, y].item() for t, y in enumerate(rendered.labels) if y != -100]
    return out


def test_eval_equals_a_plain_generate_loop(tmp_path, tiny_dirs, family):
    config = _config(tmp_path, tiny_dirs[family])
    summary = evaluate(config)
    assert summary["status"] == "finished"
    rows = _rows(tmp_path / "eval")
    naive = _naive_rows(tiny_dirs[family], 10, "numeric")
    assert [{k: r[k] for k in naive[0]} for r in rows] == naive
    assert [r["reference"] for r in rows] == [r["answer"] for r in RECORDS]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["accuracy"] == pytest.approx(sum(r["correct"] for r in naive) / len(naive))
    assert results["counts"] == {"read": 5, "evaluated": 5, "skipped": {}}
    # teacher-forced numbers: every target of every record under a plain full-logits forward
    logprobs = _naive_target_logprobs(tiny_dirs[family])
    tf = results["teacher_forced"]
    assert tf["targets"] == len(logprobs)
    assert tf["mean_p"] == pytest.approx(sum(torch.tensor(logprobs).exp().tolist()) / len(logprobs), rel=1e-6)
    assert tf["nll"] == pytest.approx(-sum(logprobs) / len(logprobs), rel=1e-6)
    assert evaluate(config)["status"] == "already-finished"


def test_killed_eval_resumes_to_the_clean_result(tmp_path, tiny_dirs, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    evaluate(_config(tmp_path / "a", tiny_dirs["bpe"], temperature=0.8, samples=2, teacher_forced=False))
    killed = _config(tmp_path / "b", tiny_dirs["bpe"], temperature=0.8, samples=2, teacher_forced=False)
    monkeypatch.setattr(eval_run, "_write_part", dies_on_call(eval_run._write_part, 2))
    with pytest.raises(KeyboardInterrupt):
        evaluate(killed)
    monkeypatch.undo()
    assert not (tmp_path / "b" / "eval" / "results.json").exists()
    assert evaluate(killed)["status"] == "finished"
    assert _rows(tmp_path / "b" / "eval") == _rows(tmp_path / "a" / "eval")  # seeded per (example, sample)
    a, b = (json.loads((tmp_path / d / "eval" / "results.json").read_text()) for d in "ab")
    assert a["accuracy_per_sample"] == b["accuracy_per_sample"] and len(a["accuracy_per_sample"]) == 2


def test_other_settings_over_an_eval_are_refused(tmp_path, tiny_dirs):
    evaluate(_config(tmp_path, tiny_dirs["bpe"], teacher_forced=False))
    with pytest.raises(ConfigError, match="differs in: max_new_tokens"):
        evaluate(_config(tmp_path, tiny_dirs["bpe"], teacher_forced=False, max_new_tokens=5))
    assert evaluate(_config(tmp_path, tiny_dirs["bpe"], teacher_forced=False, max_new_tokens=5,
                            overwrite=True))["status"] == "finished"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty directory"):
        evaluate(_config(tmp_path, tiny_dirs["bpe"], output=str(tmp_path / "elsewhere")))
    with pytest.raises(ConfigError, match="--samples 3 with greedy"):
        _config(tmp_path, tiny_dirs["bpe"], samples=3).validate()


def test_multi_turn_prompts_stop_before_the_last_answer_and_too_long_ones_are_skipped(tmp_path, tiny_dirs):
    chats = [{"id": "m0", "messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"},
                                       {"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "content": "#### 6"}]},
             {"id": "m1", "messages": [{"role": "user", "content": "Hi " * 40}, {"role": "assistant", "content": "#### 1"}]}]
    data = write_jsonl(tmp_path / "chats.jsonl", chats)
    config = EvalConfig(model=str(tiny_dirs["bpe"]), input=str(data), output=str(tmp_path / "eval"), metric="numeric",
                        max_new_tokens=8, max_length=60, skip_invalid=True, teacher_forced=False, quiet=True)
    evaluate(config)
    rows = _rows(tmp_path / "eval")
    assert [r["id"] for r in rows] == ["m0"] and rows[0]["reference"] == "#### 6"
    assert rows[0]["prompt"].endswith("And 3 + 3?<|im_end|>\n<|im_start|>assistant\n") and "4<|im_end|>" in rows[0]["prompt"]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["counts"] == {"read": 2, "evaluated": 1, "skipped": {"prompt_too_long": 1}}
    with pytest.raises(InputError, match="prompt has .* tokens"):
        evaluate(EvalConfig(**{**config.__dict__, "skip_invalid": False, "output": str(tmp_path / "strict")}))


def test_stops_include_the_templates_end_of_turn_and_the_generation_eos(tiny_dirs):
    from tokensft.evaluate.run import stop_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["bpe"])
    tokenizer.eos_token = "<|endoftext|>"  # a base model's eos, not the turn's end: the template's end must still stop
    renderer = Renderer(tokenizer, "auto", None)
    end_of_turn, eos = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id
    assert end_of_turn != eos and {end_of_turn, eos} == stop_ids(tokenizer, renderer)
    assert {end_of_turn, eos, 7, 9} == stop_ids(tokenizer, renderer, [7, 9])


def test_a_damaged_part_is_generated_again_on_resume(tmp_path, tiny_dirs):
    config = _config(tmp_path, tiny_dirs["bpe"], teacher_forced=False)
    evaluate(config)
    clean = _rows(tmp_path / "eval")
    part = tmp_path / "eval" / ".tokensft" / "parts" / "eval-00001.parquet"
    part.write_bytes(part.read_bytes()[:20])  # cut short after it was written
    (tmp_path / "eval" / "results.json").unlink()
    assert evaluate(config)["status"] == "finished"
    assert _rows(tmp_path / "eval") == clean


def test_report_sweep_refuses_an_eval_directory(tmp_path, tiny_dirs, capsys):
    from test_enrich import scored

    from tokensft.cli import main

    evaluate(_config(tmp_path, tiny_dirs["bpe"], teacher_forced=False))
    data = scored(tmp_path, tiny_dirs["bpe"])
    assert main(["report", str(data), "-o", str(tmp_path / "r"), "--sweep", str(tmp_path / "eval"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "not a `tokensft sweep` result" in err and err.count("\n") == 1


def test_sampled_eval_reports_avg_pass_and_majority_with_intervals(tmp_path, tiny_dirs):
    evaluate(_config(tmp_path, tiny_dirs["bpe"], temperature=1.0, top_p=0.9, samples=3, pass_k=[1, 2],
                     teacher_forced=False))
    rows = _rows(tmp_path / "eval")
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    correct = [[r["correct"] for r in rows if r["id"] == i] for i in dict.fromkeys(r["id"] for r in rows)]
    assert results["avg@3"]["value"] == pytest.approx(sum(map(sum, correct)) / (3 * len(correct))) == results["accuracy"]
    assert set(results) >= {"pass@1", "pass@2", "maj@3", "interval", "outcomes"} and "pass@3" not in results
    lo, hi = results["interval"]
    assert lo <= results["accuracy"] <= hi and results["interval_method"].startswith("bootstrap over examples")
    assert results["decoding"] == {"max_new_tokens": 10, "temperature": 1.0, "top_p": 0.9, "samples": 3, "seed": 0,
                                   "pass_k": [1, 2]}
    assert {r["verdict"] for r in rows} <= {"right", "wrong", "no_answer"}
    no_answer = sum(r["verdict"] == "no_answer" for r in rows)
    assert results["outcomes"]["no_answer"] == no_answer and all(not r["correct"] for r in rows if r["verdict"] == "no_answer")
    with pytest.raises(ConfigError, match="--pass-k"):
        _config(tmp_path, tiny_dirs["bpe"], temperature=1.0, samples=2, pass_k=[3]).validate()
    with pytest.raises(ConfigError, match="--top-p"):
        _config(tmp_path, tiny_dirs["bpe"], top_p=0.5).validate()


def test_a_record_whose_render_fails_is_skipped_by_the_teacher_forced_pass_too(tmp_path, tiny_dirs, monkeypatch):
    """--skip-invalid: a record the renderer refuses is skipped by generation and by the teacher-forced pass alike."""
    from tokensft.records import render

    original = render.Renderer.__call__

    def refuses_q2(self, example, where):
        if example.id == "q2":
            raise InputError(where, "messages", "the template refuses it", fix="-", reason="template_error")
        return original(self, example, where)

    monkeypatch.setattr(render.Renderer, "__call__", refuses_q2)
    evaluate(_config(tmp_path, tiny_dirs["bpe"], skip_invalid=True))
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["counts"] == {"read": 5, "evaluated": 4, "skipped": {"template_error": 1}}
    assert results["teacher_forced"]["examples"] == 4
