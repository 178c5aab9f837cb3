"""`tokensft enrich --weight SPEC` end to end on tiny models: every weight equals a naive per-token
loop over the stored columns, the excess masks equal a naive Rho-1 top-k / quantile, reruns are
idempotent, a new teacher restales what reads it, a killed run resumes to a clean run's result,
and requests that cannot be computed get one-line errors naming the command that fixes them."""

from __future__ import annotations

import json
import math
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import dies_on_call
from test_enrich import CHATS, enrich_cli, flat, scored, teacher_dir  # noqa: F401  (teacher_dir: a fixture)
from test_score_cli import assert_same_rows, table_of

import tokensft
from tokensft.cli import main
from tokensft.core.dataset import read_table, shard_name
from tokensft.core.schema import CHUNK_KEY, IGNORE_INDEX, SCHEMA_VERSION, WEIGHT
from tokensft.preprocess import output
from tokensft.preprocess.enrich import assemble as enrich_module
from tokensft.preprocess.enrich import jobs
from tokensft.preprocess.shards import write_shard

NAN = float("nan")


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_dirs, teacher_dir) -> Path:  # noqa: F811
    """A scored dataset (3 shards) with a teacher already added; each test works on a copy."""
    out = scored(tmp_path_factory.mktemp("base"), tiny_dirs["bpe"])
    assert enrich_cli(out, "--teacher", str(teacher_dir), "--top-k", "2") == 0
    return out


def copy(base: Path, tmp_path: Path, name: str = "d") -> Path:
    shutil.copytree(base, tmp_path / name)
    return tmp_path / name


def rows(out: Path) -> list[dict]:
    return table_of(out).to_pylist()


def targets(row: dict) -> list[int]:
    return [t for t, y in enumerate(row["labels"]) if y != IGNORE_INDEX]


def naive(row: dict, term, modifiers=()) -> list[float]:
    """A weight by its definition, one token at a time: term(row, t) at each target, then each
    modifier in order (("clip", lo, hi) or ("norm",)); NaN at non-targets."""
    values = {t: term(row, t) for t in targets(row)}
    for m in modifiers:
        if m[0] == "clip":
            values = {t: min(max(v, m[1]), m[2]) for t, v in values.items()}
        else:  # mean 1 over the row's targets; a row summing to 0 keeps its zeros
            total = sum(values.values())
            values = {t: v * len(values) / total if total > 0 else v for t, v in values.items()}
    return [values.get(t, NAN) for t in range(len(row["labels"]))]


def prob(a: float):
    return lambda row, t: math.exp(a * row["logprob"][t])


def excess(row: dict, t: int) -> float:
    return row["teacher_logprob"][t] - row["logprob"][t]


def product(*columns: str):
    return lambda row, t: math.prod(row[c][t] for c in columns)


def column_values(out: Path, column: str) -> list[float]:
    return [v for row in rows(out) for v in row[column]]


def assert_weight(out: Path, column: str, term, modifiers=()) -> None:
    """The stored column equals the naive loop, and its metadata statistics equal the naive ones."""
    expected = [v for row in rows(out) for v in naive(row, term, modifiers)]
    stored = column_values(out, column)
    np.testing.assert_allclose(np.array(stored, dtype=np.float64), expected, rtol=1e-5, atol=1e-7, equal_nan=True,
                               err_msg=column)
    at = [v for v in np.array(stored, dtype=np.float32).tolist() if not math.isnan(v)]
    entry = tokensft.load_metadata(out)["enrichment"]["weights"][column]
    assert entry["targets"] == len(at) == sum(len(targets(r)) for r in rows(out))
    assert entry["mean"] == pytest.approx(sum(at) / len(at), rel=1e-9)
    assert (entry["min"], entry["max"], entry["negative"]) == (min(at), max(at), sum(v < 0 for v in at))
    top = max(abs(v) for v in at)  # effective trained tokens: sum |w| / max |w|, as the report computes it
    assert entry["effective_tokens"] == (pytest.approx(sum(abs(v) for v in at) / top, rel=1e-9) if top > 0 else None)


SPECS = {  # spec -> (column, naive term, modifiers)
    "prob^1": ("weight_prob_pow_1", prob(1.0), ()),
    "prob^0.5": ("weight_prob_pow_0.5", prob(0.5), ()),
    "prob^3": ("weight_prob_pow_3", prob(3.0), ()),
    "prob^0": ("weight_prob_pow_0", prob(0.0), ()),
    "excess": ("weight_excess", excess, ()),
    "prob^1,clip:0.05:0.5": ("weight_prob_pow_1__clip_0.05_0.5", prob(1.0), (("clip", 0.05, 0.5),)),
    "prob^1,normalize:sequence": ("weight_prob_pow_1__norm_seq", prob(1.0), (("norm",),)),
    "excess,clip:0:3,normalize:sequence": ("weight_excess__clip_0_3__norm_seq", excess, (("clip", 0, 3), ("norm",))),
    "prob^2,normalize:sequence,clip:0:1.5": ("weight_prob_pow_2__norm_seq__clip_0_1.5", prob(2.0), (("norm",), ("clip", 0, 1.5))),
}


def test_each_weight_spec_equals_a_naive_loop(tmp_path, base, capsys):
    out = copy(base, tmp_path)
    capsys.readouterr()
    assert enrich_cli(out, *(f"--weight={s}" for s in SPECS)) == 0
    printed = capsys.readouterr().out
    meta = tokensft.load_metadata(out)
    weights = meta["enrichment"]["weights"]
    assert list(weights) == sorted(c for c, _, _ in SPECS.values())
    for spec, (column, term, modifiers) in SPECS.items():
        assert weights[column]["spec"] == spec
        assert_weight(out, column, term, modifiers)
        assert f"{column}: {spec} mean " in printed
        reads_teacher = spec.startswith("excess")
        assert weights[column]["reads"] == (["logprob", "teacher_logprob"] if reads_teacher else ["logprob"])
        assert weights[column]["scorer"] == meta["model"]
        assert weights[column]["teacher"] == (meta["enrichment"]["teacher"]["model"] if reads_teacher else None)
    assert weights["weight_excess"]["negative"] > 0  # excess is signed: the teacher finds some tokens harder
    assert meta["enrich_history"][-1]["added"] == [c for c, _, _ in SPECS.values()]
    table = table_of(out)
    assert all(table.schema.field(c).type == pa.list_(pa.float32()) for c, _, _ in SPECS.values())
    np.testing.assert_array_equal(flat(table, "weight_prob_pow_1")[1], flat(table, "labels")[1])


def test_products_of_masks_and_weights_in_any_order(tmp_path, base):
    """A product reads masks and weights of the same call; one given before its factor still follows it."""
    out = copy(base, tmp_path)
    assert enrich_cli(out, "--weight", "product:prob^1*prob>=0.05", "--weight", "prob^1", "--mask", "prob>=0.05",
                      "--weight", "product:excess-top-frac:0.5*prob^1,normalize:sequence", "--mask", "excess-top-frac:0.5") == 0
    meta = tokensft.load_metadata(out)
    mask, top = "mask_prob_ge_0.05", "mask_excess_top_frac_0.5"
    assert_weight(out, "weight_product_weight_prob_pow_1_x_mask_prob_ge_0.05", product("weight_prob_pow_1", mask))
    assert_weight(out, f"weight_product_{top}_x_weight_prob_pow_1__norm_seq", product(top, "weight_prob_pow_1"), (("norm",),))
    assert meta["enrich_history"][-1]["added"] == [mask, top, "weight_prob_pow_1",
                                                   "weight_product_weight_prob_pow_1_x_mask_prob_ge_0.05",
                                                   f"weight_product_{top}_x_weight_prob_pow_1__norm_seq"]
    entry = meta["enrichment"]["weights"][f"weight_product_{top}_x_weight_prob_pow_1__norm_seq"]
    assert entry["teacher"] == meta["enrichment"]["teacher"]["model"]  # through the excess mask it multiplies
    assert meta["enrichment"]["weights"]["weight_product_weight_prob_pow_1_x_mask_prob_ge_0.05"]["teacher"] is None


def add_data_weights(out: Path, seed: int = 0) -> None:
    """Give a scored dataset a data `weight` column (what `score` writes for weighted records), by hand."""
    rng = np.random.default_rng(seed)
    for k in range(tokensft.load_metadata(out)["num_shards"]):
        table = read_table(out / shard_name(k))
        labels, offsets = flat(table, "labels")
        values = np.where(labels != IGNORE_INDEX, rng.uniform(0.0, 2.0, len(labels)), np.nan).astype(np.float32)
        column = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
        table = table.add_column(table.schema.get_field_index("rank") + 1, pa.field(WEIGHT, pa.list_(pa.float32())), column)
        write_shard(out, k, table, json.loads(table.schema.metadata[CHUNK_KEY]))
    output.finish(out)


def test_product_with_the_data_weight(tmp_path, tiny_dirs):
    out = scored(tmp_path, tiny_dirs["bpe"])
    add_data_weights(out)
    assert enrich_cli(out, "--mask", "top-frac:0.5", "--weight", "prob^1",
                      "--weight", "product:weight*prob^1", "--weight", "product:weight*top-frac:0.5,normalize:sequence",
                      "--weight", "product:weight*mask_top_frac_0.5*weight_prob_pow_1,clip:0:0.3") == 0
    assert_weight(out, "weight_product_weight_x_weight_prob_pow_1", product(WEIGHT, "weight_prob_pow_1"))
    assert_weight(out, "weight_product_weight_x_mask_top_frac_0.5__norm_seq", product(WEIGHT, "mask_top_frac_0.5"), (("norm",),))
    assert_weight(out, "weight_product_weight_x_mask_top_frac_0.5_x_weight_prob_pow_1__clip_0_0.3",
                  product(WEIGHT, "mask_top_frac_0.5", "weight_prob_pow_1"), (("clip", 0, 0.3),))
    assert table_of(out).column_names.count(WEIGHT) == 1  # the data's weights are kept as they are


def naive_excess(row: dict) -> dict[int, float]:
    """Rho-1's score of each target at the stored float32 precision: (-log p_scorer) - (-log p_ref)."""
    return {t: float(np.float32(row["teacher_logprob"][t]) - np.float32(row["logprob"][t])) for t in targets(row)}


def naive_rho1(row: dict, fraction: float) -> list[int]:
    """Rho-1 per sequence: keep the k = ceil(F * n) targets of largest excess loss (ties: earlier first)."""
    scores = naive_excess(row)
    k = math.ceil(Fraction(repr(fraction)) * len(scores))
    kept = {t for t, _ in sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]}
    return [int(t in kept) for t in range(len(row["labels"]))]


def test_excess_masks_equal_a_naive_rho1(tmp_path, base):
    out = copy(base, tmp_path)
    assert enrich_cli(out, "--mask", "excess-top-frac:0.6", "--mask", "excess-top-frac:0.25", "--mask", "excess-quantile>=0.4") == 0
    data, masks = rows(out), tokensft.load_metadata(out)["enrichment"]["masks"]
    for fraction in (0.6, 0.25):
        column = f"mask_excess_top_frac_{fraction}"
        assert [v for row in data for v in row[column]] == [v for row in data for v in naive_rho1(row, fraction)]
        assert masks[column]["threshold"] == {"fraction_per_sequence": fraction}
    scores = sorted(v for row in data for v in naive_excess(row).values())
    threshold = scores[math.floor(0.4 * (len(scores) - 1))]
    expected = [int(t in (e := naive_excess(row)) and e[t] >= threshold) for row in data for t in range(len(row["labels"]))]
    entry = masks["mask_excess_quantile_ge_0.4"]
    assert [v for row in data for v in row["mask_excess_quantile_ge_0.4"]] == expected
    assert entry["threshold"] == {"quantile": 0.4, "min_excess": pytest.approx(threshold)}
    assert entry["kept_targets"] == sum(expected) and entry["targets"] == len(scores)
    assert entry["reads"] == ["logprob", "teacher_logprob"] and entry["source_column"] == "teacher_logprob - logprob"
    assert entry["source"] == "excess" and entry["teacher"] == tokensft.load_metadata(out)["enrichment"]["teacher"]["model"]


def test_rerun_is_idempotent(tmp_path, base, capsys):
    out = copy(base, tmp_path)
    request = ["--weight", "prob^1,clip:0.05:1", "--weight", "product:weight_prob_pow_1__clip_0.05_1*excess", "--weight", "excess", "--mask", "excess-top-frac:0.5"]
    assert enrich_cli(out, *request) == 0
    before, meta = table_of(out), tokensft.load_metadata(out)
    capsys.readouterr()
    for again in (request, ["--weight", "weight_prob_pow_1__clip_0.05_1", "--weight", "prob^1.0,clip:0.050:1"]):
        assert enrich_cli(out, *again) == 0
        assert "already holds every requested column" in capsys.readouterr().out
    assert_same_rows(table_of(out), before)
    assert tokensft.load_metadata(out) == meta


def test_a_new_teacher_restales_what_reads_it(tmp_path, base, tiny_dirs):
    """A new teacher recomputes the excess weight and mask and the products over them, transitively;
    what reads only the scorer is kept as it was."""
    out = copy(base, tmp_path)
    excess_product = "weight_product_weight_excess_x_weight_prob_pow_1"
    mask_product = "weight_product_weight_product_weight_excess_x_weight_prob_pow_1_x_mask_prob_ge_0.05"
    assert enrich_cli(out, "--mask", "excess-top-frac:0.5", "--mask", "prob>=0.05", "--weight", "prob^1",
                      "--weight", "excess", "--weight", "product:excess*prob^1",
                      "--weight", f"product:{excess_product}*prob>=0.05") == 0
    first = rows(out)
    assert enrich_cli(out, "--teacher", str(tiny_dirs["bpe"]), "--top-k", "2") == 0  # the scorer as its own reference
    second, meta = rows(out), tokensft.load_metadata(out)
    assert meta["enrich_history"][-1]["added"] == ["mask_excess_top_frac_0.5", "weight_excess", excess_product,
                                                   mask_product, "teacher_logprob", "teacher_topk_ids",
                                                   "teacher_topk_logprobs"]
    assert not np.allclose(column_values(out, "teacher_logprob"), [v for r in first for v in r["teacher_logprob"]],
                           equal_nan=True)  # a new teacher indeed
    assert_weight(out, "weight_excess", excess)
    assert_weight(out, excess_product, product("weight_excess", "weight_prob_pow_1"))
    assert_weight(out, mask_product, product(excess_product, "mask_prob_ge_0.05"))
    assert [r["mask_excess_top_frac_0.5"] for r in second] == [naive_rho1(r, 0.5) for r in second]
    for column in ("weight_prob_pow_1", "mask_prob_ge_0.05"):  # read the scorer only: kept as they were
        np.testing.assert_array_equal(column_values(out, column), [v for r in first for v in r[column]])
    teacher = meta["enrichment"]["teacher"]["model"]
    assert all(meta["enrichment"]["weights"][c]["teacher"] == teacher for c in ("weight_excess", excess_product, mask_product))


def test_missing_columns_name_the_command_that_adds_them(tmp_path, tiny_dirs, capsys):
    out = scored(tmp_path, tiny_dirs["bpe"])
    cases = [
        (["--weight", "excess"], "needs the column teacher_logprob", "--teacher MODEL"),
        (["--mask", "excess-top-frac:0.6"], "needs the column teacher_logprob", f"tokensft enrich {out} --teacher MODEL"),
        (["--weight", "product:weight*prob^1", "--weight", "prob^1"], "has no data weights",
         "give the input records weights and re-score"),
        (["--weight", "product:prob^1*prob>=0.1", "--mask", "prob>=0.1"], "needs the column weight_prob_pow_1",
         f"tokensft enrich {out} --weight prob^1"),
        (["--weight", "product:prob^1*prob>=0.1", "--weight", "prob^1"], "needs the column mask_prob_ge_0.1", "--mask prob>=0.1"),
        (["--weight", "prob^-1"], "must be >= 0", "--weight"),
        (["--weight", "prob"], "not a weight", "prob^A"),
        (["--weight", "prob^1,clip:2:1"], "LO <= HI", "clip"),
        (["--weight", "product:prob^1"], "two or more factors", "product:"),
        (["--weight", "product:prob^1*nonsense"], "names no weight or mask", "nonsense"),
        (["--mask", "excess-prob>=0.1"], "not a probability", "excess-top-frac:F"),
    ]
    for args, problem, fix in cases:
        assert enrich_cli(out, *args) == 2, args
        err = capsys.readouterr().err
        assert problem in err and fix in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    assert enrich_cli(out) == 2
    assert "--weight" in capsys.readouterr().err  # nothing to add names every flag
    assert "weight_prob_pow_1" not in table_of(out).column_names  # refused before any work
    data = tmp_path / "data.jsonl"
    for args, message in [(["--weight", "excess"], "needs a teacher"),
                          (["--weight", "product:prob^1*weight_x"], "a new dataset lacks")]:
        assert main(["score", str(data), "--model", str(tiny_dirs["bpe"]), "-o", str(tmp_path / "new"), "-q", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not (tmp_path / "new").exists()  # refused before scoring


def test_score_with_weights_equals_score_then_enrich(tmp_path, tiny_dirs):
    request = ["--mask", "prob>=0.05", "--weight", "prob^1", "--weight", "product:prob^1*prob>=0.05"]
    together = scored(tmp_path, tiny_dirs["bpe"], *request, name="together")
    apart = scored(tmp_path, tiny_dirs["bpe"], name="apart")
    assert enrich_cli(apart, *request) == 0
    assert_same_rows(table_of(together), table_of(apart))


def test_enriching_a_version_2_dataset_makes_it_the_current_version(tmp_path, tiny_dirs):
    out = scored(tmp_path, tiny_dirs["bpe"])
    meta = json.loads((out / "tokensft.json").read_text())
    (out / "tokensft.json").write_text(json.dumps({**meta, "schema_version": 2}))
    assert enrich_cli(out, "--weight", "prob^1") == 0
    assert tokensft.load_metadata(out)["schema_version"] == SCHEMA_VERSION == 3


@pytest.mark.parametrize("kill_at", ["teacher", "assembly"])
def test_killed_weight_enrichment_resumes_to_clean_result(tmp_path, tiny_dirs, teacher_dir, monkeypatch, kill_at):  # noqa: F811
    request = ["--teacher", str(teacher_dir), "--top-k", "2", "--mask", "excess-quantile>=0.5",
               "--weight", "excess,clip:0:4,normalize:sequence", "--weight", "product:excess-quantile>=0.5*prob^1",
               "--weight", "prob^1"]
    clean = scored(tmp_path, tiny_dirs["bpe"], name="clean")
    assert enrich_cli(clean, *request) == 0
    out = scored(tmp_path, tiny_dirs["bpe"], name="killed")
    before = table_of(out)
    module, name = (jobs, "teacher_columns") if kill_at == "teacher" else (enrich_module, "write_shard")
    monkeypatch.setattr(module, name, dies_on_call(getattr(module, name), 2))
    assert enrich_cli(out, *request) == 130
    assert_same_rows(table_of(out), before)  # in place: readers still see the whole old dataset
    monkeypatch.undo()
    assert enrich_cli(out, *request) == 0
    assert_same_rows(table_of(out), table_of(clean))
    assert tokensft.load_metadata(out)["enrichment"] == tokensft.load_metadata(clean)["enrichment"]
    assert not (out.parent / f".{out.name}.enrich").exists()
