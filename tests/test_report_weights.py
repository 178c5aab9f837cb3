"""Loss weights in analysis, the report and inspect: a scored dataset whose shards are rewritten with
pyarrow to hold `weight` (with ties, zeros and negatives), `from_prompt` and `weight_prob_pow_1`
(with their metadata, records and dataset_info, as score and enrich would write them); every number
of tokensft.analysis.weights against plain loops over the rows (naive_analysis.naive_weights), the
Weights section and the heatmap's tooltips, inspect's provenance lines, and no section without weights."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from naive_analysis import assert_matches, mean, naive_summary, naive_targets, naive_weights, rows_of
from test_enrich import scored
from transformers import AutoTokenizer

import tokensft
from tokensft.analysis import classify_vocab, jsonable, load_targets, summary, weight_provenance, weight_stats
from tokensft.analysis.weights import summarize
from tokensft.cli import main
from tokensft.core.dataset import load_metadata
from tokensft.core.integrity import write_record
from tokensft.reports.inspect import weight_sentence

DATA_WEIGHTS = (-0.5, 0.0, 0.25, 0.5, 1.0, 2.0)  # exact in float32; ties, zeros and a negative one
PROMPT_WEIGHT = 0.25
F32 = pa.list_(pa.float32())


def _rewrite(shard: Path, table: pa.Table) -> None:
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    write_record(shard, table.num_rows)  # as the writer records a shard: `inspect --verify` passes


def add_weights(directory: Path, seed: int = 0) -> Path:
    """`weight` (random DATA_WEIGHTS at targets, PROMPT_WEIGHT at the first two targets of each example,
    which play the prompt tokens --prompt-weight made targets: from_prompt 1) after `rank`, then
    weight_prob_pow_1 = p at the end, NaN at non-targets; tokensft.json, records and dataset_info to match."""
    rng = np.random.default_rng(seed)
    meta = json.loads((directory / "tokensft.json").read_text())
    all_w, all_p, prompt_targets = [], [], 0
    shards = sorted(directory.glob("data-*.arrow"))
    for shard in shards:
        table = pa.ipc.open_stream(pa.BufferReader(shard.read_bytes())).read_all()
        weight, from_prompt, prob = [], [], []
        for labels, logprob in zip(table["labels"].to_pylist(), table["logprob"].to_pylist()):
            w, f, p = [math.nan] * len(labels), [0] * len(labels), [math.nan] * len(labels)
            for k, t in enumerate(i for i, y in enumerate(labels) if y != -100):
                f[t] = int(k < 2)
                w[t] = PROMPT_WEIGHT if f[t] else float(rng.choice(DATA_WEIGHTS))
                p[t] = math.exp(logprob[t])
                all_w.append(w[t])
                all_p.append(float(np.float32(p[t])))
                prompt_targets += f[t]
            weight.append(w), from_prompt.append(f), prob.append(p)
        at = table.schema.get_field_index("rank") + 1
        table = table.add_column(at, pa.field("weight", F32), pa.array(weight, F32))
        table = table.add_column(at + 1, pa.field("from_prompt", pa.list_(pa.int8())), pa.array(from_prompt, pa.list_(pa.int8())))
        table = table.append_column(pa.field("weight_prob_pow_1", F32), pa.array(prob, F32))
        assert b"tokensft" in table.schema.metadata  # the run identity stays in the schema
        _rewrite(shard, table)
    info = json.loads((directory / "dataset_info.json").read_text())
    schema = pa.ipc.open_stream(pa.BufferReader(shards[0].read_bytes())).schema
    info["features"] = datasets.Features.from_arrow_schema(schema).to_dict()
    (directory / "dataset_info.json").write_text(json.dumps(info))
    meta["weights"] = {"column": "weight", "sources": ["example", "turn", "prompt"], "example_field": "weight",
                       "prompt_weight": PROMPT_WEIGHT, "allow_negative": True}
    meta["counts"].update(weighted_targets=len(all_w), weight_sum=sum(all_w), negative_weights=sum(w < 0 for w in all_w),
                          prompt_targets=prompt_targets)
    meta.setdefault("enrichment", {})["weights"] = {"weight_prob_pow_1": {
        "spec": "prob^1", "reads": ["logprob"], "scorer": {"name": meta["model"]["name"], "content_hash": meta["model"]["content_hash"]},
        "teacher": None, "targets": len(all_p), "mean": sum(all_p) / len(all_p), "min": min(all_p), "max": max(all_p),
        "negative": 0, "effective_tokens": sum(all_p) / max(all_p)}}
    (directory / "tokensft.json").write_text(json.dumps(meta))
    return directory


@pytest.fixture(scope="module")
def weighted(tmp_path_factory, tiny_dirs) -> Path:
    return add_weights(scored(tmp_path_factory.mktemp("weighted"), tiny_dirs["bpe"], "--top-k", "4", "--mask", "prob>=0.005"))


@pytest.fixture(scope="module")
def tokenizer(tiny_dirs):
    return AutoTokenizer.from_pretrained(tiny_dirs["bpe"])


@pytest.fixture(scope="module")
def report(weighted, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("weights-report") / "rep"
    assert main(["report", str(weighted), "-o", str(out), "--examples", "4", "-q"]) == 0
    return out


def expected_weights(directory: Path, classes, n: int = 10, tokenizer=None) -> dict:
    rows = rows_of(directory)
    names = datasets.load_from_disk(str(directory)).column_names
    return json.loads(json.dumps(naive_weights(names, rows, naive_targets(rows), load_metadata(directory), classes, n, tokenizer)))


def test_the_dataset_verifies_and_loads_every_weight(weighted, capsys):
    assert main(["inspect", str(weighted), "--verify"]) == 0, capsys.readouterr().out
    t = load_targets(weighted)
    targets = naive_targets(rows_of(weighted))
    assert t.weight_columns == ["weight", "weight_prob_pow_1"]
    for column in t.weight_columns:
        np.testing.assert_array_equal(t.weights[column], [x["weights"][column] for x in targets])
    np.testing.assert_array_equal(t.from_prompt, [bool(x["from_prompt"]) for x in targets])
    assert t.from_prompt.any() and not t.from_prompt.all()


@pytest.mark.parametrize("n", [10, 3])
def test_weight_stats_equal_naive_loops(weighted, tokenizer, n):
    classes = classify_vocab(tokenizer)
    got = jsonable(weight_stats(load_targets(weighted), classes, tokenizer, n=n))
    assert_matches(got, expected_weights(weighted, classes, n, tokenizer), "weights")
    data = {r["column"]: r for r in got["distribution"]}["weight"]
    ws = [x["weights"]["weight"] for x in naive_targets(rows_of(weighted))]
    assert data["negative"] > 0 and 0 < data["frac_zero"] < 1  # the data exercises |w| and zeros
    assert data["effective_tokens"] == pytest.approx(sum(abs(w) for w in ws) / 2.0)  # max |w| = 2
    largest = got["extremes"]["weight"]["largest"]
    assert [r["weight"] for r in largest] == [2.0] * len(largest)  # ties, in dataset order (checked against naive)
    assert got["extremes"]["weight"]["smallest"][0]["weight"] == -0.5 and len(largest) == n


def test_summary_with_weights_equals_naive(weighted, tokenizer):
    classes = classify_vocab(tokenizer)
    got = summary(load_targets(weighted), classes)
    json.dumps(got, allow_nan=False)
    expected = json.loads(json.dumps(naive_summary(weighted, classes)))
    expected["recommendation"] = got["recommendation"]
    assert_matches(got, expected)
    assert got["weights"]["prompt"][0]["part"] == "prompt" and got["weights"]["extremes"]["weight"]["largest"][0]["token"].startswith("#")


def test_summarize_defines_effective_tokens_by_absolute_values():
    s = summarize(np.array([0.5, -1.0, 0.0, 0.5]), np.array([0.2, 0.4, 0.6, 0.8]))
    assert s["effective_tokens"] == 2.0 and s["effective_fraction"] == 0.5 and s["sum"] == 0.0 and s["negative"] == 1
    assert s["weighted_mean_p"] == pytest.approx((0.5 * 0.2 + 1.0 * 0.4 + 0.5 * 0.8) / 2.0)
    assert s["frac_zero"] == 0.25 and s["sd"] == pytest.approx(math.sqrt(mean((w - 0.0) ** 2 for w in [0.5, -1, 0, 0.5])))
    zeros = summarize(np.zeros(3), np.ones(3))
    assert zeros["effective_tokens"] == 0.0 and math.isnan(zeros["weighted_mean_p"])
    assert summarize(np.zeros(0))["targets"] == 0 and math.isnan(summarize(np.zeros(0))["effective_tokens"])


def test_the_report_has_the_section_tooltips_and_numbers(weighted, report, tokenizer):
    data = json.loads((report / "summary.json").read_text())
    assert_matches(data["weights"], expected_weights(weighted, classify_vocab(tokenizer), 10, tokenizer), "weights")
    page = (report / "index.html").read_text()
    assert 'id="weights"' in page and '<a href="#weights">Weights</a>' in page
    model = load_metadata(weighted)["model"]["name"]
    for sentence in ("the data&#x27;s weights, from each example&#x27;s &#x27;weight&#x27; field, per-turn weights, prompt "
                     "tokens at 0.25 (--prompt-weight); negative weights allowed",
                     f"computed by enrich --weight prob^1 from logprob of scorer {html.escape(model, quote=True)}",
                     "Prompt against response", "effective_tokens", "Largest <code>weight_prob_pow_1</code>"):
        assert sentence in page, sentence
    assert page.count('alt="histogram of weight') == 2 and 'alt="weight by position"' in page
    # the tooltips: each rendered example's targets, in order, show each of their weights
    rows, by_id = rows_of(weighted), {}
    for x in naive_targets(rows):
        by_id.setdefault(rows[x["example"]]["id"], []).append(x)
    blocks = page.split('<div class="example">')[1:]
    assert len(blocks) == 4
    for block in blocks:
        tips = [html.unescape(tip) for tip in re.findall(r'data-tip="([^"]*)"', block)]
        targets = by_id[html.unescape(re.match(r"<p><b>(.*?)</b>", block).group(1))]
        assert len(tips) == len(targets)
        for tip, x in zip(tips, targets):
            w = x["weights"]
            assert f"weights: weight {w['weight']:.4g}  weight_prob_pow_1 {w['weight_prob_pow_1']:.4g}" in tip, tip
            assert ("a prompt token" in tip) == bool(x["from_prompt"]), tip
    frame = pd.read_parquet(report / "examples.parquet")
    for record in frame.to_dict("records"):
        xs = by_id[record["id"]]
        for column in ("weight", "weight_prob_pow_1"):
            assert record[f"{column}_mean"] == pytest.approx(mean(x["weights"][column] for x in xs), rel=1e-9)


def test_report_prints_the_weights(weighted, tmp_path, capsys):
    assert main(["report", str(weighted), "-o", str(tmp_path / "r"), "-n", "0", "-q"]) == 0
    out = capsys.readouterr().out
    ws = [x["weights"]["weight"] for x in naive_targets(rows_of(weighted))]
    assert f"weights: weight mean {mean(ws):.3g}, {sum(abs(w) for w in ws) / 2:,.0f} effective of {len(ws):,} targets" in out


def test_inspect_lists_each_weight_with_its_provenance(weighted, capsys):
    assert main(["inspect", str(weighted), "-n", "1"]) == 0
    out = capsys.readouterr().out
    targets = naive_targets(rows_of(weighted))
    block = out.split("\nweights\n")[1].split("\nschema\n")[0]  # the weights, before the schema lists columns again
    lines = {line.split(":")[0].strip(): line for line in block.splitlines()}
    model = load_metadata(weighted)["model"]["name"]
    for column, words in (("weight", "the data's weights, from each example's 'weight' field, per-turn weights"),
                          ("weight_prob_pow_1", f"computed by enrich --weight prob^1 from logprob of scorer {model}")):
        ws = [x["weights"][column] for x in targets]
        numbers = f"mean {mean(ws):.4g}, min {min(ws):.4g}, max {max(ws):.4g} over {len(ws):,} targets"
        assert words in lines[column] and numbers in lines[column], (lines[column], numbers)
    assert "negative weights allowed" in lines["weight"] and set(lines) == {"weight", "weight_prob_pow_1"}
    assert "  weight_prob_pow_1: --weight prob^1 (see weights)" in out  # under enrichment
    first = [x for x in targets if x["example"] == 0]  # the example shown token by token: each target's weights
    assert "  weights: w1 = weight, w2 = weight_prob_pow_1" in out
    shown = [line for line in out.split("\nexamples")[1].splitlines() if re.match(r"^\s+\d+ ", line)]
    assert len(shown) == len(first)
    for line, x in zip(shown, first):
        assert f" {x['weights']['weight']:>8.3g} {x['weights']['weight_prob_pow_1']:>8.3g}" in line, line
        assert line.endswith("(prompt, --prompt-weight)") == bool(x["from_prompt"]), line


def test_provenance_without_metadata_comes_from_the_column_name(weighted, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(weighted, bare)
    meta = json.loads((bare / "tokensft.json").read_text())
    del meta["weights"], meta["enrichment"]["weights"]
    (bare / "tokensft.json").write_text(json.dumps(meta))
    meta = tokensft.load_metadata(bare)
    computed = weight_provenance(meta, "weight_prob_pow_1")
    assert computed["spec"] == "prob^1" and computed["reads"] == ["logprob"] and computed["scorer"] == meta["model"]["name"]
    assert computed["recorded"] == {} and computed["teacher"] is None
    data = weight_provenance(meta, "weight")
    assert data["kind"] == "data" and data["sources"] is None and "sources not recorded" in weight_sentence(data)
    assert weight_provenance(meta, "weight_product_weight_x_mask_prob_ge_0.1")["spec"] is None  # a product: no spec
    assert main(["report", str(bare), "-o", str(tmp_path / "r"), "-n", "1", "-q"]) == 0


def test_a_nan_weight_at_a_target_is_a_one_line_error(weighted, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(weighted, broken)
    shard = broken / "data-00000.arrow"
    table = pa.ipc.open_stream(pa.BufferReader(shard.read_bytes())).read_all()
    rows = table["weight"].to_pylist()
    rows[0][next(t for t, y in enumerate(table["labels"][0].as_py()) if y != -100)] = math.nan
    _rewrite(shard, table.set_column(table.schema.get_field_index("weight"), "weight", pa.array(rows, F32)))
    assert main(["report", str(broken), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"row 0 (id {table['id'][0].as_py()!r}), field weight: nan at a target" in err and err.count("\n") == 1


def test_a_dataset_without_weights_has_no_weights_section(tmp_path, tiny_dirs, capsys):
    plain = scored(tmp_path, tiny_dirs["bpe"])
    assert main(["report", str(plain), "-o", str(tmp_path / "r"), "-n", "2", "-q"]) == 0
    assert "weights:" not in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["weights"] is None
    page = (tmp_path / "r" / "index.html").read_text()
    assert 'id="weights"' not in page and "weights: " not in page
    assert not [c for c in pd.read_parquet(tmp_path / "r" / "examples.parquet").columns if c.endswith("_mean")]
    assert load_targets(plain).weights == {} and load_targets(plain).from_prompt is None
    assert main(["inspect", str(plain), "-n", "0"]) == 0
    assert "weights: none" in capsys.readouterr().out


def test_weights_render_in_headless_chromium(report):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from test_report import ARTIFACTS, _browser

    driver = _browser()
    try:
        driver.get((report / "index.html").resolve().as_uri())
        images = driver.execute_script("return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        weights = [i for i in images if "weight" in i[0]]
        assert len(weights) == 3 and all(done and width > 0 for _, done, width in weights), images
        token = driver.find_elements(By.CSS_SELECTOR, ".tok")[2]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", token)
        ActionChains(driver).move_to_element(token).perform()
        tip = driver.execute_script("return getComputedStyle(arguments[0], '::after').content", token)
        assert "weights: weight " in tip and "weight_prob_pow_1 " in tip, tip
        section = driver.find_element(By.ID, "weights")
        ARTIFACTS.mkdir(exist_ok=True)
        assert section.screenshot(str(ARTIFACTS / "report-weights.png"))
        assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []
    finally:
        driver.quit()
