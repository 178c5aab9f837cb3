"""The --weight column of a training run: which column, whether it is fit to train on, its tensor.

    column = weight_column(DIR, "prob^1", names, meta)   # "weight_prob_pow_1", or a ConfigError with the fix
    check_weights(DIR, table, column, ids, used, train)  # finite at every target; >= 0 unless allowed
    batch["weight"] = weight_tensor(rows.column(column), width)   # (B, T) float32, 0 off the targets

A weight column (core.schema: the data's `weight`, or an enrich-computed weight_<name>) is
list<float32> aligned with input_ids, NaN where labels = -100. The trainer multiplies each target's
loss by it (tokensft.train.loss); these checks run once, before the model loads, over the rows the
run reads, a record batch at a time (never the whole column in memory).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from tokensft.core.dataset import flat_list
from tokensft.core.errors import ConfigError
from tokensft.core.schema import IGNORE_INDEX, WEIGHT, is_weight_column
from tokensft.core.weights import parse_weight, weight_column_for

NEGATIVE_FIX = "pass --allow-negative-weights to train away from those tokens"


def weight_column(directory: str, text: str, names: set[str], meta: dict) -> str:
    """The column `--weight TEXT` reads; a one-line ConfigError with the fix when the dataset lacks it."""
    column = weight_column_for(text)
    if column in names:
        return column
    has = sorted(n for n in names if is_weight_column(n))
    listed = f" (its weight columns: {', '.join(has)})" if has else " (it has no weight columns)"
    if column == WEIGHT:
        raise ConfigError(f"{directory}: --weight weight: the dataset has no data weights; give its records weights and "
                          f"re-score them with `tokensft score`, or compute one with `tokensft enrich {directory} --weight "
                          f"SPEC`{listed}")
    raise ConfigError(f"{directory}: no column {column}; add it with `tokensft enrich {directory} --weight "
                      f"'{_spec(text, column, meta)}'`{listed}")


def _spec(text: str, column: str, meta: dict) -> str:
    """The enrich spec that makes `column`: as recorded in tokensft.json, else parsed from what was typed."""
    recorded = ((meta.get("enrichment") or {}).get("weights") or {}).get(column)
    if isinstance(recorded, dict) and isinstance(recorded.get("spec"), str):
        return recorded["spec"]
    try:
        return parse_weight(text).spec
    except ConfigError:  # a product's name does not read back: its spec is needed
        return "SPEC"


def check_weights(directory: str, table: pa.Table, column: str, ids: list[str], used: np.ndarray,
                  train: np.ndarray, mask: str | None = None, negative_fix: str = NEGATIVE_FIX) -> None:
    """A ConfigError when a weight the run reads is unusable.

    used:  row indices the run reads (train and held-out); every target there needs a finite weight
           (NaN or inf: named by example id), and a non-negative one unless `negative_fix` is None
    train: row indices trained on; their weights (on the targets the stored `mask` keeps) must not all be 0
    """
    reads = np.zeros(table.num_rows, dtype=bool)
    reads[used] = True
    trains = np.zeros(table.num_rows, dtype=bool)
    trains[train] = True
    names = ["labels", column] + ([mask] if mask else [])
    bad = negative = 0
    first_bad = first_negative = None
    weight_sum, base = 0.0, 0
    for batch in table.select(names).to_batches(max_chunksize=8192):
        labels, offsets = flat_list(batch.column(0))  # (n,), (r + 1,)
        values, _ = flat_list(batch.column(1))
        assert len(values) == len(labels), f"{column} is not aligned with labels"
        row = base + np.repeat(np.arange(batch.num_rows), np.diff(offsets))  # (n,) each token's row
        at = (labels != IGNORE_INDEX) & reads[row]  # (n,) the targets the run reads
        wrong = at & ~np.isfinite(values)
        below = at & (values < 0)
        bad, negative = bad + int(wrong.sum()), negative + int(below.sum())
        if first_bad is None and wrong.any():
            first_bad = int(row[np.argmax(wrong)])
        if first_negative is None and below.any():
            first_negative = int(row[np.argmax(below)])
        kept = at & trains[row] & (flat_list(batch.column(2))[0] > 0 if mask else True)
        weight_sum += float(np.abs(np.where(kept & ~wrong, values, 0.0)).sum())
        base += batch.num_rows
    if bad:
        raise ConfigError(f"{directory}: {column} is not finite (NaN or inf) at {bad} targets, the first in example "
                          f"{ids[first_bad]!r}; every target needs a finite weight: fix the weights (re-score, or "
                          f"re-enrich {column}) or choose another --weight")
    if negative and negative_fix:
        raise ConfigError(f"{directory}: {column} is negative at {negative} targets, the first in example "
                          f"{ids[first_negative]!r}; {negative_fix}, or clip it (`tokensft enrich {directory} --weight "
                          "'SPEC,clip:0:HI'`)")
    if weight_sum == 0:
        raise ConfigError(f"{directory}: {column} is 0 at every target trained on{' that --mask keeps' if mask else ''}: "
                          "nothing to train on; choose another --weight")


def weight_tensor(column, width: int) -> torch.Tensor:
    """(B, T) float32 from a list<float32> column of B rows: the weights, 0 at non-targets (NaN there) and padding."""
    values, offsets = flat_list(column)  # (n,), (B + 1,)
    rows = len(offsets) - 1
    out = np.zeros((rows, width), dtype=np.float32)
    row = np.repeat(np.arange(rows), np.diff(offsets))
    out[row, np.arange(len(values)) - offsets[row]] = np.where(np.isfinite(values), values, 0.0)
    return torch.from_numpy(out)
