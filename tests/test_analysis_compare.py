"""tokensft.analysis.compare against a naive computation: two scorings of the same examples under
different tiny models, matched by id with plain Python loops; a dataset against itself; subsets;
repeated ids; and datasets that cannot be compared (other tokenizer, no shared ids)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import make_bpe_tokenizer, make_model
from naive_analysis import mean, median, naive_targets, rows_of
from test_analysis import score
from test_enrich import CHATS

from tokensft.analysis import compare, load_targets
from tokensft.core.errors import ConfigError


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_dirs) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    other = root / "other-model"
    tokenizer = make_bpe_tokenizer()
    make_model(tokenizer, "bpe", seed=2).save_pretrained(other)
    tokenizer.save_pretrained(other)
    named = [{"id": f"ex{i}", **r} for i, r in enumerate(CHATS)]
    return {
        "a": score(root, "a", tiny_dirs["bpe"], named),
        "b": score(root, "b", other, named, "--top-k", "2"),
        "subset": score(root, "subset", other, named[2:6]),
        "sp": score(root, "sp", tiny_dirs["sp"], named),
        "renamed": score(root, "renamed", other, [{**r, "id": "other-" + r["id"]} for r in named]),
        "duplicates": score(root, "duplicates", other, [named[0], named[0], named[1]]),
    }


def naive_compare(dir_a: Path, dir_b: Path, n: int = 20, min_count: int = 5) -> dict:
    rows_a, rows_b = rows_of(dir_a), rows_of(dir_b)
    by_id = {r["id"]: i for i, r in enumerate(rows_b)}
    ta, tb = naive_targets(rows_a), naive_targets(rows_b)
    per_b = {}
    for x in tb:
        per_b.setdefault(x["example"], []).append(x)
    pairs = []  # (target in a, target in b) of the shared examples, in a's order
    per_a = {}
    for x in ta:
        per_a.setdefault(x["example"], []).append(x)
    for e, row in enumerate(rows_a):
        if row["id"] in by_id:
            pairs += list(zip(per_a.get(e, []), per_b.get(by_id[row["id"]], [])))
    deltas = [y["p"] - x["p"] for x, y in pairs]
    shared = [r for r in rows_a if r["id"] in by_id]
    summary = {
        "examples": len(shared), "targets": len(pairs), "only_in_a": len(rows_a) - len(shared), "only_in_b": len(rows_b) - len(shared),
        "mean_p_a": mean(x["p"] for x, _ in pairs), "mean_p_b": mean(y["p"] for _, y in pairs), "shift": mean(deltas),
        "median_delta_p": median(deltas), "mean_delta_logprob": mean(y["lp"] - x["lp"] for x, y in pairs),
        "frac_up": mean(float(d > 0) for d in deltas), "frac_down": mean(float(d < 0) for d in deltas),
        "frac_unchanged": mean(float(d == 0) for d in deltas),
    }
    tokens = {}
    for x, y in pairs:
        tokens.setdefault(x["token"], []).append((x, y))
    moved = [{"token_id": tok, "count": len(ps), "mean_p_a": mean(x["p"] for x, _ in ps), "mean_p_b": mean(y["p"] for _, y in ps),
              "mean_delta_p": mean(y["p"] - x["p"] for x, y in ps), "mean_delta_logprob": mean(y["lp"] - x["lp"] for x, y in ps)}
             for tok, ps in sorted(tokens.items()) if len(ps) >= min_count]
    moved.sort(key=lambda r: -abs(r["mean_delta_p"]))
    top = sorted(range(len(pairs)), key=lambda i: -abs(deltas[i]))[:n]
    targets = [{"id": rows_a[pairs[i][0]["example"]]["id"], "position": pairs[i][0]["position"], "token_id": pairs[i][0]["token"],
                "p_a": pairs[i][0]["p"], "p_b": pairs[i][1]["p"], "delta_p": deltas[i]} for i in top]
    examples = []
    for e, row in enumerate(rows_a):
        if row["id"] in by_id:
            pa_ = mean(x["p"] for x in per_a.get(e, []))
            pb_ = mean(y["p"] for y in per_b.get(by_id[row["id"]], []))
            examples.append({"id": row["id"], "num_targets": len(per_a.get(e, [])), "mean_p_a": pa_, "mean_p_b": pb_,
                             "delta_mean_p": pb_ - pa_})
    examples.sort(key=lambda r: -abs(r["delta_mean_p"]))
    by_pos = []
    for b in range(10):
        sel = [(x, y) for x, y in pairs if min(math.floor(x["rel"] * 10), 9) == b]
        ma, mb = mean(x["p"] for x, _ in sel), mean(y["p"] for _, y in sel)
        by_pos.append({"bin": b, "count": len(sel), "mean_p_a": ma, "mean_p_b": mb,
                       "mean_delta_p": mb - ma if sel else None})
    return {"summary": summary, "tokens_moved": moved, "targets_moved": targets, "examples_changed": examples,
            "by_position": by_pos, "deltas": deltas}


def records(frame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in frame.to_dict(orient="records")]


def assert_rows(actual: list[dict], expected: list[dict], keys=None) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        for key in keys or e:
            if isinstance(e[key], float):
                assert a[key] == pytest.approx(e[key], rel=1e-9, abs=1e-12), (key, a, e)
            else:
                assert a[key] == e[key], (key, a, e)


@pytest.mark.parametrize("pair", [("a", "b"), ("a", "subset"), ("subset", "a"), ("b", "a")])
def test_compare_equals_naive(scored, pair):
    dir_a, dir_b = scored[pair[0]], scored[pair[1]]
    got = compare(load_targets(dir_a), load_targets(dir_b), n=15, min_count=3)
    expected = naive_compare(dir_a, dir_b, n=15, min_count=3)
    assert got["summary"]["a"] == str(dir_a) and got["summary"]["b"] == str(dir_b)
    assert_rows([got["summary"]], [expected["summary"]])
    assert_rows(records(got["tokens_moved"]), expected["tokens_moved"])
    assert_rows(records(got["targets_moved"]), expected["targets_moved"])
    assert_rows(records(got["examples_changed"]), expected["examples_changed"])
    assert_rows(records(got["by_position"]), expected["by_position"])
    counts = [0] * 20
    for d in expected["deltas"]:
        counts[min(max(math.floor((d + 1) / 2 * 20), 0), 19)] += 1
    assert got["delta_histogram"]["count"].tolist() == counts
    if "subset" in pair:
        only = (got["summary"]["only_in_a"], got["summary"]["only_in_b"])
        assert only == ((4, 0) if pair[1] == "subset" else (0, 4)) and got["summary"]["examples"] == 4


def test_compare_with_itself_is_zero(scored):
    t = load_targets(scored["a"])
    got = compare(t, t)
    s = got["summary"]
    assert s["shift"] == 0.0 and s["frac_unchanged"] == 1.0 and s["frac_up"] == 0.0 and s["mean_delta_logprob"] == 0.0
    assert s["targets"] == t.num_targets and s["examples"] == t.num_examples and s["only_in_a"] == s["only_in_b"] == 0
    assert (got["tokens_moved"]["mean_delta_p"] == 0).all() and (got["examples_changed"]["delta_mean_p"] == 0).all()
    assert got["delta_histogram"]["count"].sum() == t.num_targets


def test_repeated_ids_match_in_dataset_order(scored):
    """Repeated records (the same content id): the k-th occurrence matches the other side's k-th."""
    a, dup = load_targets(scored["a"]), load_targets(scored["duplicates"])  # dup: ex0, ex0, ex1
    got = compare(a, dup)
    s = got["summary"]
    assert (s["examples"], s["only_in_a"], s["only_in_b"]) == (2, len(CHATS) - 2, 1)
    changed = got["examples_changed"].set_index("id")
    for key in ("ex0", "ex1"):  # B's first ex0 (row 0) and its ex1 (row 2)
        row_a = a.examples.index[a.examples["id"] == key][0]
        row_b = 0 if key == "ex0" else 2
        assert changed.loc[key, "delta_mean_p"] == pytest.approx(dup.examples["mean_p"][row_b] - a.examples["mean_p"][row_a])
    itself = compare(dup, dup)["summary"]
    assert itself["examples"] == 3 and itself["shift"] == 0.0 and itself["only_in_a"] == itself["only_in_b"] == 0


def test_incomparable_datasets_are_refused(scored):
    a = load_targets(scored["a"])
    cases = [("sp", "targets in "), ("renamed", "share no example ids")]
    for name, message in cases:
        with pytest.raises(ConfigError, match=message) as error:
            compare(a, load_targets(scored[name]))
        text = str(error.value)
        assert "\n" not in text and str(scored[name]) in text and str(scored["a"]) in text
    edited = load_targets(scored["a"])
    edited.token_id[5] += 1  # same counts, one target token differs
    with pytest.raises(ConfigError, match=rf"example '{a.examples['id'][a.example[5]]}' has different target tokens"):
        compare(a, edited)


def test_mask_drift_equals_a_naive_loop(scored, tmp_path):
    import shutil

    from test_enrich import enrich_cli

    from tokensft.analysis.drift import mask_drift

    a = tmp_path / "a"
    shutil.copytree(scored["a"], a)
    # tiny random models give p around 1e-3: thresholds there, so targets do cross them
    assert enrich_cli(a, "--mask", "prob>=0.0005", "--mask", "prob<=0.002", "--mask", "top-frac:0.5") == 0
    drift = mask_drift(load_targets(a), load_targets(scored["b"]), thresholds=(0.0001, 0.1), bins=4)
    rows_a, rows_b = rows_of(a), rows_of(scored["b"])
    ta, tb = naive_targets(rows_a), naive_targets(rows_b)
    pairs = list(zip(ta, tb))  # the same examples in the same order: target i of a is target i of b
    assert all(x["token"] == y["token"] for x, y in pairs)
    specs = {"prob>=0.0005": lambda p: p >= 0.0005, "prob<=0.002": lambda p: p <= 0.002,
             "prob>=0.0001": lambda p: p >= 0.0001, "prob>=0.1": lambda p: p >= 0.1}  # stored (by column), then given
    assert drift["masks"]["spec"].tolist() == list(specs)
    for (_, row), (spec, keep) in zip(drift["masks"].iterrows(), specs.items()):
        in_a = [keep(x["p"]) for x, _ in pairs]
        in_b = [keep(y["p"]) for _, y in pairs]
        assert row["targets"] == len(pairs)
        assert row["kept_a"] == pytest.approx(mean(in_a)) and row["kept_b"] == pytest.approx(mean(in_b))
        assert row["flipped"] == pytest.approx(mean(u != v for u, v in zip(in_a, in_b)))
        assert row["dropped"] == pytest.approx(mean(u and not v for u, v in zip(in_a, in_b)))
        positions = drift["by_position"][drift["by_position"]["spec"] == spec]
        for _, cell in positions.iterrows():
            inside = [(u != v) for (x, _), u, v in zip(pairs, in_a, in_b)
                      if min(int(x["rel"] * 4), 3) == cell["bin"]]
            assert cell["count"] == len(inside)
            assert (math.isnan(cell["flipped"]) and not inside) or cell["flipped"] == pytest.approx(mean(inside))
    assert drift["masks"]["flipped"].max() > 0  # the two tiny models disagree somewhere: the test can fail
