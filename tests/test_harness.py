"""`tokensft eval --lm-eval`: lm-evaluation-harness on the model tokensft loaded, offline, over a
local custom task (a YAML over a JSON file); its accuracy equals a naive log-likelihood comparison
of the choices, and a rerun reads the stored results back."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokensft.cli import main

pytest.importorskip("lm_eval", reason="the harness is the optional lm-eval extra (pip install tokensft[lm-eval])")

DOCS = [{"question": "What is 2 + 2?", "choices": ["3", "4", "5"], "answer": 1},
        {"question": "What color is the sky?", "choices": ["blue", "green"], "answer": 0},
        {"question": "Hello there!", "choices": ["Hi", "Bye", "Tell me a joke"], "answer": 0},
        {"question": "How many bolts in total does it take?", "choices": ["3", "2"], "answer": 1}]
TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def _naive_accuracy(model_dir) -> float:
    """Each choice's summed log-prob after the question (" " + choice, as the harness joins them); the argmax."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    right = 0
    for doc in DOCS:
        context = f"Question: {doc['question']}\nAnswer:"
        scores = []
        for choice in doc["choices"]:
            ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
            whole = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logprob = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
            scores.append(sum(logprob[t - 1, whole[t]].item() for t in range(len(ctx), len(whole))))
        right += max(range(len(scores)), key=scores.__getitem__) == doc["answer"]
    return right / len(DOCS)


def test_a_local_task_runs_offline_on_our_model_and_equals_a_naive_loglikelihood(tmp_path, tiny_dirs, capsys):
    data = write_jsonl(tmp_path / "tiny.jsonl", DOCS)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_choice.yaml").write_text(TASK.format(data=data))
    command = ["eval", str(tiny_dirs["bpe"]), "--lm-eval", "tiny_choice", "--lm-eval-include", str(tasks),
               "-o", str(tmp_path / "out"), "-q"]
    assert main(command) == 0
    stored = json.loads((tmp_path / "out" / "lm_eval.json").read_text())
    assert stored["results"]["tiny_choice"]["acc,none"] == pytest.approx(_naive_accuracy(tiny_dirs["bpe"]))
    assert stored["n-samples"]["tiny_choice"]["effective"] == len(DOCS) and stored["identity"]["tasks"] == ["tiny_choice"]
    assert "lm-eval tiny_choice: acc,none" in capsys.readouterr().out
    before = (tmp_path / "out" / "lm_eval.json").stat().st_mtime_ns
    assert main(command) == 0 and (tmp_path / "out" / "lm_eval.json").stat().st_mtime_ns == before  # read back


def test_harness_errors_are_one_line(tmp_path, tiny_dirs, capsys, monkeypatch):
    assert main(["eval", str(tiny_dirs["bpe"]), "--lm-eval", "no_such_task_xyz", "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "no task named 'no_such_task_xyz'" in capsys.readouterr().err
    assert main(["eval", str(tiny_dirs["bpe"]), "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "give held-out records to evaluate (DATA), or benchmark suites with --lm-eval" in capsys.readouterr().err
    from tokensft.evaluate import harness

    monkeypatch.setattr(harness, "available", lambda: False)
    assert main(["eval", str(tiny_dirs["bpe"]), "--lm-eval", "x", "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "pip install 'tokensft[lm-eval]'" in capsys.readouterr().err


def test_suites_asked_for_after_an_eval_finished_land_beside_it(tmp_path, tiny_dirs):
    data = write_jsonl(tmp_path / "tiny.jsonl", DOCS)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_choice.yaml").write_text(TASK.format(data=data))
    heldout = write_jsonl(tmp_path / "heldout.jsonl", [{"question": "What is 2 + 2?", "answer": "#### 4"}])
    command = ["eval", str(tiny_dirs["bpe"]), str(heldout), "-o", str(tmp_path / "out"), "--max-new-tokens", "2", "-q"]
    assert main(command) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["lm_eval"] is None
    assert main([*command, "--lm-eval", "tiny_choice", "--lm-eval-include", str(tasks)]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["lm_eval"]["results"]["tiny_choice"]["acc,none"] == pytest.approx(_naive_accuracy(tiny_dirs["bpe"]))
    assert results["accuracy"] is not None  # our own numbers kept beside
