"""A sweep's verdicts: judge_set against a naive per-example computation on synthetic draws, the
held-out set specs, and a sweep with two held-out sets and 3 seeds end to end (intervals, paired
verdicts against nll, transitions against the untrained model, the overlap warning, report --sweep)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_jsonl
from test_enrich import CHATS, scored
from test_sweep import HELDOUT

from tokensft.cli import main
from tokensft.core.errors import ConfigError
from tokensft.evaluate.intervals import mcnemar, paired_bootstrap, verdict
from tokensft.evaluate.sweep_config import HeldOut, parse_heldout
from tokensft.evaluate.verdicts import judge_set


def _draws(matrix: np.ndarray) -> dict[str, list[bool]]:
    return {f"q{i}": [bool(v) for v in row] for i, row in enumerate(matrix)}


def test_judge_set_equals_a_naive_per_example_computation():
    rng = np.random.default_rng(0)
    truth = rng.random(50)  # each question's difficulty, shared by every model
    initial = _draws(rng.random((50, 1)) < truth[:, None] * 0.5)
    arms = {"nll": [_draws(rng.random((50, 1)) < truth[:, None] * 0.8) for _ in range(3)],
            "p": [_draws(rng.random((50, 1)) < np.minimum(1, truth[:, None] * 1.5)) for _ in range(3)],
            "dft": [_draws(rng.random((50, 1)) < truth[:, None] * 0.1) for _ in range(3)]}
    judged = judge_set(arms, initial, "nll", seed=4)
    base = np.array([[arms["nll"][s][f"q{i}"][0] for s in range(3)] for i in range(50)], dtype=float)
    for row in judged["arms"]:
        scores = np.array([[arms[row["arm"]][s][f"q{i}"][0] for s in range(3)] for i in range(50)], dtype=float)
        assert row["accuracy"] == pytest.approx(scores.mean())
        assert row["accuracy_per_seed"] == pytest.approx(list(scores.mean(axis=0)))
        if row["arm"] == "nll":
            assert row["vs_baseline"]["verdict"] == "baseline"
            continue
        naive = paired_bootstrap(scores, base, seed=4)
        assert row["vs_baseline"]["difference"] == pytest.approx((scores.mean(axis=1) - base.mean(axis=1)).mean())
        assert row["vs_baseline"]["interval"] == pytest.approx(naive["interval"])
        assert row["vs_baseline"]["verdict"] == verdict(naive) and row["vs_baseline"]["mcnemar_p"] is None
        before = np.array([initial[f"q{i}"][0] for i in range(50)])
        broke = sum(int(before[i] and not scores[i, s]) for i in range(50) for s in range(3))
        fixed = sum(int(scores[i, s] and not before[i]) for i in range(50) for s in range(3))
        assert (row["transitions"]["broke"], row["transitions"]["fixed"], row["transitions"]["draws"]) == (broke, fixed, 150)
    assert judged["ranking"][0] == "p" and judged["ranking"][-1] == "dft"  # better first, worse last
    assert judged["lead"]["arms"] == ["p", "nll"]


def test_one_greedy_draw_gets_mcnemar_and_degenerate_sets_stay_defined():
    right, wrong = _draws(np.ones((10, 1))), _draws(np.zeros((10, 1)))
    judged = judge_set({"nll": [wrong], "p": [right]}, None, "nll")
    p = next(a for a in judged["arms"] if a["arm"] == "p")
    assert p["vs_baseline"]["mcnemar_p"] == pytest.approx(mcnemar(10, 0)) and p["vs_baseline"]["verdict"] == "better"
    assert p["interval"] == pytest.approx([0.7224672001371107, 1.0]) and p["transitions"] is None
    same = judge_set({"nll": [right], "p": [right]}, right, "nll")
    assert [a["vs_baseline"]["verdict"] for a in same["arms"]] == ["baseline", "not distinguishable"]
    assert same["arms"][1]["transitions"] == {"broke": 0, "fixed": 0, "draws": 10, "broke_per_draw": 0.0,
                                              "fixed_per_draw": 0.0, "examples": 10}
    with pytest.raises(ValueError, match="baseline"):
        judge_set({"p": [right]}, None, "nll")


def test_held_out_specs():
    assert parse_heldout("data/h.jsonl") == HeldOut("h", "data/h.jsonl", None)
    assert parse_heldout("hard=x/y.jsonl") == HeldOut("hard", "x/y.jsonl", None)
    assert parse_heldout("hard=x/y.jsonl:math") == HeldOut("hard", "x/y.jsonl", "math")
    assert parse_heldout("r=a.jsonl:regex:ANSWER: (\\d+)") == HeldOut("r", "a.jsonl", "regex:ANSWER: (\\d+)")
    with pytest.raises(ConfigError):
        parse_heldout("r=a.jsonl:regex:(")


def test_a_sweep_over_two_held_out_sets_with_three_seeds(tmp_path, tiny_dirs, capsys):
    data = scored(tmp_path, tiny_dirs["bpe"])
    heldout = write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)
    seen = write_jsonl(tmp_path / "seen.jsonl", CHATS[1:4])  # three training records: they overlap
    out = tmp_path / "sweep"
    assert main(["sweep", str(data), "--objectives", "nll,p", "--eval", str(heldout), "--eval", f"seen={seen}:contains",
                 "-o", str(out), "--seeds", "0,1,2", "--max-steps", "1", "--batch-size", "4", "--metric", "numeric",
                 "--max-new-tokens", "4", "--model", str(tiny_dirs["bpe"]), "-q"]) == 0
    printed = capsys.readouterr()
    results = json.loads((out / "results.json").read_text())
    assert set(results["sets"]) == {"heldout", "seen"} and results["baseline"] == "nll"
    assert results["sets"]["seen"]["metric"] == "contains" and results["sets"]["heldout"]["metric"] == "numeric"
    assert results["sets"]["seen"]["overlap"] == {"records": 3, "in_training": 3}
    assert results["sets"]["heldout"]["overlap"] == {"records": 4, "in_training": 1}  # "What is 2 + 2?" is a training prompt
    assert "3 of 3 records ask a training prompt" in printed.out  # (-q: the warning line itself is silenced)
    for judged in results["sets"].values():
        p = next(a for a in judged["arms"] if a["arm"] == "p")
        assert len(p["accuracy_per_seed"]) == 3 and p["draws_per_example"] == 3
        assert p["vs_baseline"]["verdict"] in ("better", "worse", "not distinguishable")
        assert p["transitions"]["draws"] == 3 * judged["examples"]
        assert judged["initial"]["accuracy"] is not None
    assert (out / "arms" / "p" / "seed-2" / "eval-seen" / "results.json").is_file()
    assert "seen (contains, 3 examples):" in printed.out and "heldout (numeric, 4 examples):" in printed.out
    assert main(["report", str(data), "-o", str(tmp_path / "report"), "--sweep", str(out), "-q", "-n", "0"]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Every held-out set" in page and "right→wrong" in page and "its 95% interval" in page
    # the advice: one sweep command, our own evidence beside the papers', and the measurement before the heuristic
    assert f"tokensft sweep {data} --objectives nll" in page and "--baseline nll --eval HELDOUT.jsonl" in page
    assert "What our own miniature measured nearest to this data" in page and "reproduced" in page
    assert page.index("Measured: which objective wins") < page.index("its measured verdict")
    assert "Every held-out set" in (out / "index.html").read_text()


def test_a_set_without_shared_examples_is_judged_on_none():
    judged = judge_set({"nll": [{"a": [True]}], "p": [{"b": [False]}]}, None, "nll")
    assert judged["examples"] == 0 and [a["accuracy"] for a in judged["arms"]] == [None, None]
    assert judged["arms"][1]["vs_baseline"]["verdict"] == "not distinguishable"
