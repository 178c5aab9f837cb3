"""`tokensft sweep` on a tiny model: each arm equals `tokensft train` + `tokensft eval` run by hand
(with the commands the sweep records), a killed sweep resumes without retraining finished arms, and
`tokensft report --sweep` puts the measurement beside the guidance."""

from __future__ import annotations

import json
import shlex

import pyarrow.parquet as pq
import pytest
from conftest import dies_on_call, write_jsonl
from test_enrich import scored

from tokensft.cli import main
from tokensft.core.errors import ConfigError
from tokensft.evaluate import run as eval_run
from tokensft.evaluate.sweep import parse_arms

HELDOUT = [{"id": f"h{i}", "question": q, "answer": a} for i, (q, a) in enumerate([
    ("What is 2 + 2?", "#### 4"), ("Janet has 16 eggs and eats 3. How many are left?", "#### 13"),
    ("How many bolts in total does it take?", "#### 3"), ("Hi", "#### 0")])]


def sweep_cli(data, heldout, out, *extra) -> int:
    return main(["sweep", str(data), "--objectives", "nll,p", "--eval", str(heldout), "-o", str(out), "--max-steps", "2",
                 "--batch-size", "4", "--metric", "numeric", "--max-new-tokens", "6", "-q", *map(str, extra)])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_dirs):
    tmp = tmp_path_factory.mktemp("sweep-inputs")
    return scored(tmp, tiny_dirs["bpe"]), write_jsonl(tmp / "heldout.jsonl", HELDOUT)


def test_each_arm_equals_train_and_eval_by_hand(inputs, tiny_dirs, tmp_path):
    data, heldout = inputs
    out = tmp_path / "sweep"
    assert sweep_cli(data, heldout, out, "--model", tiny_dirs["bpe"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [a["arm"] for a in results["arms"]] == ["nll", "p"] and (out / "index.html").is_file()
    arm = results["arms"][1]  # p, seed 0: rerun by hand from the recorded commands, into other directories
    train_cmd, eval_cmd = (shlex.split(c)[1:] for c in arm["runs"][0]["commands"])
    # held-out prompts are rendered with the template the training data was scored with
    assert eval_cmd[eval_cmd.index("--template") + 1] == json.loads((data / "tokensft.json").read_text())["render"]["template"]
    mine = tmp_path / "by-hand"
    train_cmd[train_cmd.index("-o") + 1] = str(mine / "model")
    eval_cmd[eval_cmd.index("-o") + 1] = str(mine / "eval")
    eval_cmd[1] = str(mine / "model")
    assert main([*train_cmd, "-q"]) == 0 and main([*eval_cmd, "-q"]) == 0
    by_hand = json.loads((mine / "eval" / "results.json").read_text())
    assert by_hand["accuracy"] == arm["runs"][0]["accuracy"] == arm["accuracy"]
    assert by_hand["teacher_forced"]["mean_p"] == pytest.approx(arm["heldout_mean_p"])
    swept = pq.read_table(out / "arms" / "p" / "seed-0" / "eval" / "examples.parquet").to_pylist()
    assert pq.read_table(mine / "eval" / "examples.parquet").to_pylist() == swept
    # the report puts the measured ranking beside its guidance
    assert main(["report", str(data), "-o", str(tmp_path / "report"), "--sweep", str(out), "-q", "-n", "0"]) == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["sweep"]["ranking"] == results["ranking"]
    assert summary["sweep"]["agreement"]["best"] == results["ranking"][0]
    assert "Measured: which objective wins" in (tmp_path / "report" / "index.html").read_text()


def test_a_killed_sweep_resumes_arm_by_arm(inputs, tiny_dirs, tmp_path, monkeypatch):
    data, heldout = inputs
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert sweep_cli(data, heldout, clean, "--model", tiny_dirs["bpe"], "--no-initial") == 0
    monkeypatch.setattr(eval_run, "_finish", dies_on_call(eval_run._finish, 2))  # killed in the second arm's eval
    assert sweep_cli(data, heldout, killed, "--model", tiny_dirs["bpe"], "--no-initial") == 130
    monkeypatch.undo()
    first = killed / "arms" / "nll" / "seed-0" / "model" / "model.safetensors"
    stamp = first.stat().st_mtime_ns
    assert not (killed / "results.json").exists()
    assert sweep_cli(data, heldout, killed, "--model", tiny_dirs["bpe"], "--no-initial") == 0
    assert first.stat().st_mtime_ns == stamp  # the finished arm was not trained again
    a, b = (json.loads((d / "results.json").read_text()) for d in (clean, killed))
    assert [(x["arm"], x["accuracy"], x["heldout_mean_p"]) for x in a["arms"]] == \
        [(x["arm"], x["accuracy"], x["heldout_mean_p"]) for x in b["arms"]]


def test_lora_arms_are_merged_so_eval_can_load_them(inputs, tiny_dirs, tmp_path):
    pytest.importorskip("peft", reason="LoRA needs the optional peft (pip install tokensft[peft])")
    data, heldout = inputs
    out = tmp_path / "lora"
    assert main(["sweep", str(data), "--objectives", "nll", "--eval", str(heldout), "-o", str(out), "--max-steps", "1",
                 "--batch-size", "4", "--max-new-tokens", "2", "--no-initial", "-q", "--model", str(tiny_dirs["bpe"]),
                 "--lora-r", "2"]) == 0
    run = json.loads((out / "results.json").read_text())["arms"][0]["runs"][0]
    assert "--merge" in shlex.split(run["commands"][0]) and (out / "arms" / "nll" / "seed-0" / "model" / "config.json").is_file()


def test_arms_and_bad_sweeps(inputs, tiny_dirs, tmp_path, capsys):
    arms = parse_arms("nll,qtarget:gamma=0.5,prior=uniform,nll@prob>=0.1,threshold-nll:0.2")
    assert [a.spec for a in arms] == ["nll", "qtarget:gamma=0.5,prior=uniform", "nll@prob>=0.1", "threshold-nll:0.2"]
    assert len({a.name for a in arms}) == 4
    for bad in ("nll,nll", "nll,fancy", "nll@prob>=2", ""):
        with pytest.raises(ConfigError):
            parse_arms(bad)
    data, heldout = inputs
    assert sweep_cli(data, heldout, tmp_path / "s", "--seed", "3") == 2
    assert "--seeds 3" in capsys.readouterr().err
    assert sweep_cli(data, heldout, tmp_path / "s", "--seeds", "0,x") == 2


def test_agreement_judges_objective_families_and_masked_arms():
    from tokensft.analysis.continuum import agreement

    def arm(spec, acc, sd, seeds=3):
        return {"arm": spec, "accuracy": acc, "accuracy_sd": sd, "runs": [{}] * seeds}

    strong = {"regime": "model-strong", "objectives": ["p", "threshold-nll:0.2", "dft", "profit:0.1"], "avoid": []}
    weak = {"regime": "model-weak", "objectives": ["nll"], "avoid": ["p", "profit:0.1"]}
    got = agreement([arm("nll", 0.50, 0.01), arm("threshold-nll:0.3", 0.60, 0.02)], strong)
    assert got["best"] == "threshold-nll:0.3" and got["agree"] and not got["contradicts"] and got["within_noise"] is False
    got = agreement([arm("nll", 0.50, 0.05), arm("nll@prob>=0.1", 0.52, 0.04)], weak)  # ProFit's stored mask
    assert got["agree"] is False and got["contradicts"] is True and got["within_noise"] is True
    assert agreement([arm("nll@top-frac:0.5", 0.7, 0.1), arm("p", 0.1, 0.1)], strong)["agree"] is None
    assert agreement([arm("nll", 0.5, None, 1), arm("p", 0.4, None, 1)], strong)["within_noise"] is None
    assert agreement([], strong)["best"] is None


def test_arm_names_never_collide():
    names = [a.name for a in parse_arms("nll@prob>=0.1,nll@prob<=0.1,P")]
    assert len(set(names)) == 3 and names[2] == "p"
    with pytest.raises(ConfigError, match="twice"):
        parse_arms("p,P")


def test_a_sweep_refuses_to_go_on_when_its_data_is_scored_again(tmp_path, tiny_dirs, monkeypatch, capsys):
    """A `score --overwrite` of DATA finishing between two arms (an enrich would change no arm's data)."""
    from tokensft.evaluate import sweep as sweep_module

    data = scored(tmp_path, tiny_dirs["bpe"])
    heldout = write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)
    original = sweep_module.run_job

    def then_rescored(config, directory, arm, seed):
        original(config, directory, arm, seed)
        if arm is None:  # after the baseline: an enrichment (harmless), then a rescore with another cut
            assert main(["enrich", str(data), "--mask=prob>=0.1", "-q"]) == 0
            assert main(["score", str(tmp_path / "data.jsonl"), "--model", str(tiny_dirs["bpe"]), "-o", str(data),
                         "--max-length", "24", "--overwrite", "-q"]) == 0

    monkeypatch.setattr(sweep_module, "run_job", then_rescored)
    assert sweep_cli(data, heldout, tmp_path / "sweep", "--model", tiny_dirs["bpe"]) == 2
    assert "was scored again while this sweep ran" in capsys.readouterr().err
