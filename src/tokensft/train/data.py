"""Training data from a scored (and enriched) dataset: checks, split, order, padded micro-batches.

    data = TrainData(DIR, objective, mask, ref, weight=W)  # checks the columns the objective needs
    data.train_indices / data.eval_indices             # held-out split by a hash of the id
    data.step_indices(step, global_batch, seed, budget)  # the examples of one optimizer step
    batch = data.collate(indices, pad_id)              # tensors, padded to the longest

The order depends only on (seed, epoch), and a step's examples are split across processes and
micro-batches after being drawn, so any process count sees the same global batches, and a
resumed run draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from tokensft.core.errors import ConfigError
from tokensft.core.masks import parse_mask
from tokensft.core.dataset import load_with_metadata
from tokensft.core.schema import FROM_PROMPT, IGNORE_INDEX, PRIOR_COLUMNS, ref_column
from tokensft.train.objectives import Objective
from tokensft.train.weighting import NEGATIVE_FIX, check_weights, weight_column, weight_tensor


@dataclass
class Columns:
    mask: str | None = None  # mask_<name>
    prior_ids: str | None = None  # PRIOR_COLUMNS[prior][0]: topk_ids | teacher_topk_ids
    prior_logprobs: str | None = None  # PRIOR_COLUMNS[prior][1]
    ref: str | None = None  # ref_column(name): ref_mean_logprob | ref_<name>_mean_logprob
    weight: str | None = None  # weight | weight_<name>: each target's loss weight


def _missing_prior(directory: str, prior: str) -> str:
    """How to add the sparse top-k a qtarget prior reads."""
    if prior == "scorer":
        return (f"{directory}: qtarget prior=scorer needs the scorer's top-k; re-score with "
                "`tokensft score ... --top-k 20` (or use prior=teacher/self/uniform)")
    return (f"{directory}: qtarget prior=teacher needs a teacher; add one with "
            f"`tokensft enrich {directory} --teacher MODEL --top-k 20`")


def needed_columns(directory: str, objective: Objective, mask: str | None, ref: str | None, names: set[str],
                   weight: str | None = None, meta: dict | None = None) -> Columns:
    """The extra columns an objective (and --mask, --weight) needs, or a ConfigError naming the command that adds them."""
    cols = Columns()
    if weight:
        cols.weight = weight_column(directory, weight, names, meta or {})
    if FROM_PROMPT in names:  # score --prompt-weight: prompt tokens are targets here, at their weight W
        if objective.sequence_level:  # s would average prompt and response, s_ref (references) only the response
            raise ConfigError(f"{directory}: poft compares each response's mean log-prob with the references'; this "
                              "dataset has prompt targets (score --prompt-weight): re-score it without --prompt-weight")
        if not weight:
            raise ConfigError(f"{directory}: this dataset has prompt targets (score --prompt-weight) that only the "
                              "data's weights keep at their prompt weight; pass --weight weight (or a product with it), "
                              "or re-score without --prompt-weight")
    if mask:
        cols.mask = parse_mask(mask).column
        if cols.mask not in names:
            raise ConfigError(f"{directory}: no column {cols.mask}; add it with `tokensft enrich {directory} --mask "
                              f"'{parse_mask(mask).spec}'`")
    if objective.prior in PRIOR_COLUMNS:  # teacher | scorer: a stored sparse top-k
        cols.prior_ids, cols.prior_logprobs = PRIOR_COLUMNS[objective.prior]
        if cols.prior_ids not in names:
            raise ConfigError(_missing_prior(directory, objective.prior))
    if objective.sequence_level:  # poft: the reference's mean target log-prob
        cols.ref = ref_column(ref or None)
        if cols.ref not in names:
            raise ConfigError(f"{directory}: poft needs {cols.ref}; add references with "
                              f"`tokensft enrich {directory} --ref MODEL" + (f" --ref-name {ref}`" if ref else "`"))
    return cols


def _in_eval(example_id: str, fraction: float) -> bool:
    """Held out by a hash of the id alone: the same split whatever the seed, so runs compare on one eval set."""
    digest = hashlib.blake2b(f"tokensft-eval:{example_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


class TrainData:
    def __init__(self, directory: str, objective: Objective, mask: str | None = None, ref: str | None = None,
                 eval_fraction: float = 0.0, skip_invalid: bool = False, weight: str | None = None,
                 allow_negative_weights: bool = False):
        self.directory = directory
        self.dataset, self.meta = load_with_metadata(directory)  # one generation, whatever enrich does meanwhile
        self.table: pa.Table = self.dataset.data.table
        self.columns = needed_columns(directory, objective, mask, ref, set(self.table.column_names), weight, self.meta)
        ids = self.table.column("id").to_pylist()
        self.ids = ids
        self.num_tokens = self.table.column("num_tokens").to_numpy()  # (rows,): read per step by --batching grouped
        usable = np.ones(len(ids), dtype=bool)
        self.skipped = 0
        if self.columns.ref:
            ref_values = self.table.column(self.columns.ref).to_numpy(zero_copy_only=False)
            missing = np.isnan(ref_values)
            if missing.any() and not skip_invalid:
                first = int(np.flatnonzero(missing)[0])
                raise ConfigError(f"{directory}: {int(missing.sum())} examples have no {self.columns.ref} (NaN; the first "
                                  f"is {ids[first]!r}); re-enrich them, or pass --skip-invalid to train without them")
            usable &= ~missing
            self.skipped = int(missing.sum())
        in_eval = np.array([_in_eval(i, eval_fraction) for i in ids], dtype=bool) if eval_fraction > 0 else np.zeros(len(ids), bool)
        self.train_indices = np.flatnonzero(usable & ~in_eval)
        self.eval_indices = np.flatnonzero(usable & in_eval)
        if not ids:
            raise ConfigError(f"{directory}: the dataset is empty (0 examples: every input row was skipped when it was "
                              f"scored, see `tokensft inspect {directory}`); score data that has responses")
        if len(self.train_indices) == 0:
            fix = "lower --eval-fraction" if len(self.eval_indices) else "re-enrich the examples without it"
            raise ConfigError(f"{directory}: no examples left to train on ({len(self.eval_indices)} held out by "
                              f"--eval-fraction {eval_fraction}, {self.skipped} skipped for lack of "
                              f"{self.columns.ref or 'a reference'}); {fix}")
        self._check_targets(mask, eval_fraction)
        if self.columns.weight:
            check_weights(directory, self.table, self.columns.weight, ids,
                          np.concatenate([self.train_indices, self.eval_indices]), self.train_indices, self.columns.mask,
                          None if allow_negative_weights else NEGATIVE_FIX)

    def _check_targets(self, mask: str | None, eval_fraction: float) -> None:
        """A ConfigError when the train split has no supervised target, or none the stored --mask keeps:
        such a run would "train" on nothing (loss 0, the weights moved by weight decay alone)."""
        held_out = f"; {len(self.eval_indices)} held out by --eval-fraction {eval_fraction}" if eval_fraction else ""
        split = f"the train split ({len(self.train_indices)} examples{held_out})"
        targets = int(self.table.column("num_targets").to_numpy()[self.train_indices].sum())
        if targets == 0:
            raise ConfigError(f"{self.directory}: {split} has no supervised targets (every label is -100): nothing to "
                              "train on; check that its examples have responses (not cut off by score --max-length)")
        if self.columns.mask:
            # 1 on kept targets, 0 elsewhere; every row is train or eval (only poft skips rows, and it takes no mask)
            column = self.table.column(self.columns.mask)
            kept = _mask_sum(column) - _mask_sum(column.take(pa.array(self.eval_indices, pa.int64())))
            if kept == 0:
                raise ConfigError(f"{self.directory}: --mask {parse_mask(mask).spec} keeps 0 of the {targets} targets of "
                                  f"{split}: nothing to train on; loosen the mask (tokensft enrich --mask ...)")

    def step_indices(self, step: int, global_batch: int, seed: int, budget: int | None = None) -> np.ndarray:
        """The train examples of optimizer step `step` (0-based): a stream of epochs, each a fresh
        permutation, cut into global batches. budget: examples in the whole run (epochs x N, or
        max_steps x global_batch); the last step takes what is left, so one epoch is each example once."""
        n = len(self.train_indices)
        start = step * global_batch
        size = global_batch if budget is None else max(0, min(global_batch, budget - start))
        out = []
        while len(out) < size:
            epoch, offset = divmod(start + len(out), n)
            order = np.random.default_rng([seed, epoch]).permutation(n)
            take = min(size - len(out), n - offset)
            out.extend(order[offset:offset + take])
        return self.train_indices[np.array(out, dtype=np.int64)]

    def lengths(self, indices) -> np.ndarray:
        """(len(indices),) the rows' token counts (num_tokens)."""
        return self.num_tokens[np.asarray(indices, dtype=np.int64)]

    def longest(self) -> int:
        """The longest train example, in tokens: the padded length of the worst micro-batch."""
        return int(self.lengths(self.train_indices).max())

    def check_context(self, limit: int | None, model: str) -> None:
        """A ConfigError when an example is longer than the model's context (position embeddings would overflow)."""
        if not limit:
            return
        lengths = self.num_tokens
        used = np.concatenate([self.train_indices, self.eval_indices])
        if len(used) and lengths[used].max() > limit:
            row = int(used[np.argmax(lengths[used])])
            raise ConfigError(f"{self.directory}: example {self.ids[row]!r} has {int(lengths[row])} tokens, more than "
                              f"--model {model}'s context of {limit}; re-score the data with --max-length {limit}")

    def collate(self, indices, pad_id: int) -> dict:
        """Tensors for a micro-batch of these rows (see `collate_rows`)."""
        return collate_rows(self.table.take(pa.array(np.asarray(indices, dtype=np.int64))), self.columns, pad_id)


def _mask_sum(column) -> int:
    """Kept targets in a mask column (list<int8>), without copying it: its flat values summed."""
    return int(pc.sum(pc.list_flatten(column)).as_py() or 0)


def collate_rows(rows: pa.Table, columns: Columns, pad_id: int) -> dict:
    """Tensors for a micro-batch, right-padded to its longest example (labels -100 at padding).

    input_ids, labels, attention_mask (B, T) long; ids: the example ids; with the columns the
    objective needs: mask (B, T) int8, prior_ids / prior_logprobs (B, T, K), ref_logprob (B,), weight (B, T)
    float32 (0 at non-targets and padding).
    """
    input_ids = rows.column("input_ids").to_pylist()
    labels = rows.column("labels").to_pylist()
    width = max(len(x) for x in input_ids)
    batch_size = len(input_ids)
    batch = {
        "input_ids": torch.full((batch_size, width), pad_id, dtype=torch.long),
        "labels": torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long),
        "attention_mask": torch.zeros((batch_size, width), dtype=torch.long),
        "ids": rows.column("id").to_pylist(),
    }
    for b, (ids, lab) in enumerate(zip(input_ids, labels)):
        batch["input_ids"][b, :len(ids)] = torch.tensor(ids)
        batch["labels"][b, :len(lab)] = torch.tensor(lab)
        batch["attention_mask"][b, :len(ids)] = 1
    if columns.mask:
        batch["mask"] = torch.zeros((batch_size, width), dtype=torch.int8)
        for b, m in enumerate(rows.column(columns.mask).to_pylist()):
            batch["mask"][b, :len(m)] = torch.tensor(m, dtype=torch.int8)
    if columns.prior_ids:
        batch["prior_ids"], batch["prior_logprobs"] = _sparse_prior(
            rows.column(columns.prior_ids), rows.column(columns.prior_logprobs), width)
    if columns.weight:
        batch["weight"] = weight_tensor(rows.column(columns.weight), width)
    if columns.ref:
        batch["ref_logprob"] = torch.tensor(rows.column(columns.ref).to_numpy(zero_copy_only=False), dtype=torch.float32)
    return batch


def _sparse_prior(ids_column, lp_column, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, K) ids and log-probs from list<list<>> columns; non-targets get id 0 and -inf."""
    ids_arr, lp_arr = ids_column.combine_chunks(), lp_column.combine_chunks()
    tokens = ids_arr.flatten()  # ListArray over all tokens of the batch
    k = int(np.max(np.diff(tokens.offsets.to_numpy()), initial=0))
    batch_size = len(ids_arr)
    out_ids = torch.zeros((batch_size, width, max(k, 1)), dtype=torch.long)
    out_lp = torch.full((batch_size, width, max(k, 1)), float("-inf"))
    outer = ids_arr.offsets.to_numpy() - ids_arr.offsets[0].as_py()
    inner = tokens.offsets.to_numpy() - tokens.offsets[0].as_py()
    flat_ids = tokens.flatten().to_numpy()
    flat_lp = lp_arr.flatten().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    counts = np.diff(inner)  # (total tokens,)
    full = np.flatnonzero(counts == k) if k else np.zeros(0, np.int64)  # tokens carrying K entries
    row_of = np.searchsorted(outer, full, side="right") - 1
    pos_of = full - outer[row_of]
    starts = inner[full]
    gather = starts[:, None] + np.arange(k)[None, :]  # (n, K)
    out_ids[row_of, pos_of] = torch.from_numpy(flat_ids[gather].astype(np.int64))
    out_lp[row_of, pos_of] = torch.from_numpy(flat_lp[gather])
    return out_ids, out_lp
