"""`tokensft report`: the files, summary.json against an independent computation from the rows,
examples.parquet, --compare, datasets with nothing enriched or a single example, atomic
replacement, one-line errors, and the page in a real headless Chromium (no console errors, every
image loads, tooltips on the heatmap; a screenshot is saved to test-artifacts/)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from conftest import make_bpe_tokenizer, make_model
from naive_analysis import assert_matches, naive_summary
from test_enrich import CHATS, scored
from test_train import enriched  # noqa: F401  (scored with top-k, a mask, a reference and a teacher)
from transformers import AutoTokenizer

from tokensft.analysis import classify_vocab
from tokensft.cli import main

ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def report_cli(*args: str) -> int:
    return main(["report", *map(str, args)])


def naive_targets(directory: Path) -> list[tuple[str, list[float]]]:
    """(id, target probabilities) per example, straight from the rows."""
    rows = datasets.load_from_disk(str(directory))
    return [(row["id"], [float(np.exp(lp)) for lp, y in zip(row["logprob"], row["labels"]) if y != -100]) for row in rows]


@pytest.fixture(scope="module")
def report(enriched, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("report") / "rep"
    assert report_cli(enriched, "--output", out, "--examples", "4") == 0
    return out


def test_summary_json_equals_an_independent_computation(enriched, report, tiny_dirs):  # noqa: F811
    data = json.loads((report / "summary.json").read_text())
    assert {p.name for p in report.iterdir()} == {"index.html", "summary.json", "examples.parquet"}
    per_example = naive_targets(enriched)
    probs = [p for _, ps in per_example for p in ps]
    c = data["continuum"]
    assert c["targets"] == len(probs) == data["overview"]["targets"]
    assert c["mean_p"] == pytest.approx(sum(probs) / len(probs), rel=1e-9)
    assert c["median_p"] == pytest.approx(float(np.median(probs)), rel=1e-9)
    assert c["frac_below_0_1"] == pytest.approx(sum(p < 0.1 for p in probs) / len(probs))
    assert data["overview"]["examples"] == len(CHATS)
    assert data["recommendation"]["regime"] == ("model-weak" if c["mean_p"] < 0.25 else "intermediate"
                                                if c["mean_p"] < 0.65 else "model-strong")
    assert sum(data["histogram"]["linear"]["counts"]) == len(probs)
    assert data["masks"] and data["references"] and data["teacher"]
    # every number of the file equals plain loops over the dataset's rows (test_analysis.naive_summary)
    expected = naive_summary(enriched, classify_vocab(AutoTokenizer.from_pretrained(tiny_dirs["bpe"])))
    expected["recommendation"] = data["recommendation"]  # its wording is tested in test_analysis
    assert_matches({k: v for k, v in data.items() if k != "report"}, json.loads(json.dumps(expected)))


def test_examples_parquet_has_one_row_per_example(enriched, report):  # noqa: F811
    frame = pd.read_parquet(report / "examples.parquet")
    naive = dict(naive_targets(enriched))
    assert sorted(frame["id"]) == sorted(naive)
    for row in frame.itertuples():
        assert row.mean_p == pytest.approx(sum(naive[row.id]) / len(naive[row.id]), rel=1e-9)
    rows = {r["id"]: r for r in datasets.load_from_disk(str(enriched))}
    for record in frame.to_dict("records"):
        r = rows[record["id"]]
        kept = [m for m, y in zip(r["mask_top_frac_0.5"], r["labels"]) if y != -100]
        assert record["mask_top_frac_0.5_kept_fraction"] == pytest.approx(sum(kept) / len(kept))
        assert record["ref_mean_logprob"] == pytest.approx(r["ref_mean_logprob"], rel=1e-6)
    assert {"delta", "poft_weight", "teacher_kl_mean", "teacher_top1_agreement"} <= set(frame.columns)


def test_page_has_every_section_and_the_heatmap(report):
    page = (report / "index.html").read_text()
    for anchor in ("overview", "continuum", "distribution", "position", "masks", "references", "teacher", "examples"):
        assert f'id="{anchor}"' in page
    assert page.count('class="tok"') > 0 and page.count("data-tip=") == page.count('class="tok"')
    assert "http://" not in page and "https://" not in page  # nothing fetched: works offline
    assert page.count("data:image/png;base64,") >= 8


def test_nothing_enriched_and_single_example_still_report(tmp_path, tiny_dirs, capsys):
    plain = scored(tmp_path, tiny_dirs["sp"])
    assert report_cli(plain, "-o", tmp_path / "r1") == 0
    data = json.loads((tmp_path / "r1" / "summary.json").read_text())
    assert data["masks"] is None and data["references"] is None and data["teacher"] is None
    page = (tmp_path / "r1" / "index.html").read_text()
    assert "No masks" in page and "No PoFT references" in page and "No teacher" in page
    single = tmp_path / "single.jsonl"
    single.write_text(json.dumps({"messages": CHATS[0]["messages"]}) + "\n")
    assert main(["score", str(single), "--model", str(tiny_dirs["bpe"]), "-o", str(tmp_path / "one"), "-q"]) == 0
    assert report_cli(tmp_path / "one", "-o", tmp_path / "r2", "--examples", "5") == 0
    data = json.loads((tmp_path / "r2" / "summary.json").read_text())
    assert data["overview"]["examples"] == 1
    assert "report: " in capsys.readouterr().out


def test_compare_two_scorings(tmp_path, tiny_dirs):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = scored(tmp_path / "a", tiny_dirs["bpe"])
    teacher = tmp_path / "other"  # the same tokenizer, other weights: a second scoring of the same examples
    tok = make_bpe_tokenizer()
    make_model(tok, "bpe", seed=5).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    b = scored(tmp_path / "b", teacher)
    assert report_cli(a, "--compare", b, "-o", tmp_path / "r") == 0
    data = json.loads((tmp_path / "r" / "summary.json").read_text())
    pa_, pb_ = naive_targets(a), naive_targets(b)
    flat_a = [p for _, ps in pa_ for p in ps]
    flat_b = [p for _, ps in pb_ for p in ps]
    assert data["compare"]["mean_p_a"] == pytest.approx(np.mean(flat_a), rel=1e-9)
    assert data["compare"]["mean_p_b"] == pytest.approx(np.mean(flat_b), rel=1e-9)
    assert data["compare"]["frac_up"] == pytest.approx(np.mean([y > x for x, y in zip(flat_a, flat_b)]))
    assert 'id="compare"' in (tmp_path / "r" / "index.html").read_text()
    frame = pd.read_parquet(tmp_path / "r" / "examples.parquet")
    by_id = {i: (np.mean(x), np.mean(dict(pb_)[i])) for i, x in pa_}
    changed = data["compare"]["examples_changed"]  # sorted by |change|, each change as computed naively
    assert [abs(e["delta_mean_p"]) for e in changed] == sorted((abs(e["delta_mean_p"]) for e in changed), reverse=True)
    for e in changed:
        assert e["delta_mean_p"] == pytest.approx(by_id[e["id"]][1] - by_id[e["id"]][0], rel=1e-6, abs=1e-12)
    assert data["compare"]["tokens_moved"] and all(t["count"] >= 5 for t in data["compare"]["tokens_moved"])
    for row in frame.itertuples():
        assert row.delta_mean_p == pytest.approx(by_id[row.id][1] - by_id[row.id][0], rel=1e-6, abs=1e-12)


def test_replacing_a_report_is_atomic_and_errors_are_one_line(enriched, tmp_path, monkeypatch, capsys):  # noqa: F811
    out = tmp_path / "rep"
    assert report_cli(enriched, "-o", out, "-n", "0") == 0
    before = (out / "summary.json").read_text()
    from tokensft.reports import build

    def dies(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build.pd.DataFrame, "to_parquet", dies)
    with pytest.raises(KeyboardInterrupt):
        build.write_report(str(enriched), str(out), examples=2)
    monkeypatch.undo()
    assert (out / "summary.json").read_text() == before  # the old report, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rep.lock", "rep"]  # no staging left; its lock stays
    assert report_cli(enriched, "-o", out, "-n", "2") == 0  # a report is replaced
    capsys.readouterr()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    cases = [([tmp_path / "missing", "-o", tmp_path / "x"], "no tokensft.json"),
             ([enriched, "-o", tmp_path / "notes"], "not a tokensft report"),
             ([enriched, "-o", tmp_path / "x", "-n", "-1"], "--examples"),
             ([enriched, "--compare", tmp_path / "missing", "-o", tmp_path / "x"], "no tokensft.json")]
    for args, message in cases:
        assert report_cli(*args) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"


def _browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("TOKENSFT_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing; .ci/run installs Debian's chromium and chromium-driver")
        pytest.skip("no chromium here (apt-get install chromium chromium-driver); .ci/run installs it")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def test_report_renders_in_headless_chromium(report):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = _browser()
    try:
        driver.get((report / "index.html").resolve().as_uri())
        images = driver.execute_script("return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        assert len(images) >= 8 and all(done and width > 0 for _, done, width in images), images
        tokens = driver.find_elements(By.CSS_SELECTOR, ".tok")
        assert tokens
        token = tokens[min(3, len(tokens) - 1)]
        assert driver.execute_script("return getComputedStyle(arguments[0], '::after').content", token) == "none"
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", token)
        ActionChains(driver).move_to_element(token).perform()
        tip = driver.execute_script("return getComputedStyle(arguments[0], '::after').content", token)
        assert "p = " in tip and "rank" in tip and "top:" in tip and "masks:" in tip, tip
        ARTIFACTS.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "report-tooltip.png"))
        logs = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
        assert logs == [], logs
    finally:
        driver.quit()
    shutil.copy(report / "index.html", ARTIFACTS / "report-index.html")


def _copy(enriched: Path, tmp_path: Path, name: str) -> Path:  # noqa: F811
    target = tmp_path / name
    shutil.copytree(enriched, target)
    return target


def test_damaged_data_and_wrong_tokenizers_are_one_line_errors(enriched, tmp_path, tiny_dirs, capsys):  # noqa: F811
    import pyarrow as pa

    truncated = _copy(enriched, tmp_path, "truncated")
    shard = truncated / "data-00000.arrow"
    shard.write_bytes(shard.read_bytes()[:3000])
    nan = _copy(enriched, tmp_path, "nan")
    shard = nan / "data-00000.arrow"
    table = pa.ipc.open_stream(pa.BufferReader(shard.read_bytes())).read_all()  # in memory: the file is rewritten
    rows = table["logprob"].to_pylist()
    first = next(t for t, y in enumerate(table["labels"][0].as_py()) if y != -100)
    rows[0][first] = float("nan")  # a target whose log-prob was lost
    table = table.set_column(table.schema.get_field_index("logprob"), "logprob", pa.array(rows, pa.list_(pa.float32())))
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    nameless = _copy(enriched, tmp_path, "nameless")
    meta = json.loads((nameless / "tokensft.json").read_text())
    del meta["model"]["name"]
    (nameless / "tokensft.json").write_text(json.dumps(meta))
    cases = [([truncated], "data-00000.arrow: not a readable Arrow shard"),
             ([nan], f"data-00000.arrow row 0 (id {table['id'][0].as_py()!r}), field logprob: nan"),
             ([nameless], "field model.name"),
             ([enriched, "--model", tmp_path / "no-such-model"], "--model"),
             ([enriched, "--model", tiny_dirs["sp"]], "token fingerprints differ")]
    for args, message in cases:
        assert report_cli(*args, "-o", tmp_path / "out") == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    unreadable_state = _copy(enriched, tmp_path, "state")
    (unreadable_state / "state.json").write_text("not json")  # the shards are still found from the metadata
    assert report_cli(unreadable_state, "-o", tmp_path / "out") == 0


def test_the_default_tokenizer_is_never_fetched_for_a_report(monkeypatch, tmp_path):
    """A dataset scored by the default model, with nothing in the cache: ids are shown, nothing downloaded."""
    from tokensft.core.dataset import tokenizer_for
    from tokensft.core import models

    def no_download(*args, **kwargs):
        raise AssertionError("a report must not fetch a model")

    monkeypatch.setenv("TOKENSFT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(models, "_pip_download", no_download)
    monkeypatch.setattr(models, "_convert_gguf", no_download)
    assert tokenizer_for({"model": {"name": models.DEFAULT_MODEL}}, None) is None
    gguf = tmp_path / "model.gguf"  # exists, never converted: a report does not convert it
    gguf.write_bytes(b"GGUF not really")
    assert tokenizer_for({"model": {"name": str(gguf)}}, None) is None
