"""tokensft objectives inside `transformers.Trainer` and TRL's `SFTTrainer`.

Two ways in, by what the objective needs:

    data = trainer_dataset("scored/", objective="nll", mask="prob>=0.1", weight="prob^1")  # datasets.Dataset
    collator = TokenSFTCollator(tokenizer.pad_token_id)                   # keeps the extra columns

1. `TokenSFTTrainer` (or `TokenSFTMixin` in front of any Trainer subclass, TRL's SFTTrainer
   included) runs every objective, stored masks and weights, PoFT references and sparse priors, with the
   memory-lean chunked loss (never [B, T, V] logits) and the normalization of `tokensft train`,
   counted over the whole gradient-accumulation window and every process:

       trainer = TokenSFTTrainer(model=model, args=TrainingArguments(..., remove_unused_columns=False),
                                 train_dataset=data, data_collator=collator, objective="nll")
       class MySFT(TokenSFTMixin, trl.SFTTrainer): pass   # SFTConfig(..., remove_unused_columns=False,
                                                          #   dataset_kwargs={"skip_prepare_dataset": True})

2. `TokenSFTLoss(objective)` as `compute_loss_func=` of an unmodified Trainer or SFTTrainer, for
   the objectives that need nothing stored (nll, p, power, dft, threshold-*, profit, qtarget with
   prior self or uniform). It sees only the model's outputs and the labels, so it works on the full
   logits the model made and divides by the Trainer's `num_items_in_batch` (all supervised
   targets of the step, TRL's normalization). It takes no weights: use the mixin for --weight.

Why the extra columns travel in one `tokensft` entry of the batch: Trainer passes every batch key
to `model(**inputs)`, and TRL's collator drops columns it does not know; the mixin pops the entry
before the forward, and the collator emits it only when the dataset has such columns.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from tokensft.core.errors import ConfigError
from tokensft.core.dataset import load_with_metadata
from tokensft.core.schema import IGNORE_INDEX, TOPK_IDS_TYPE
from tokensft.train.chunked import target_terms
from tokensft.train.data import Columns, collate_rows, needed_columns
from tokensft.train.loss import Denominator, micro_batch_loss
from tokensft.train.losses import token_loss
from tokensft.train.objectives import Objective, parse_objective
from tokensft.train.step import denominator, step_counts
from tokensft.train.weighting import check_weights

EXTRA = "tokensft"  # the batch entry carrying mask / prior / reference tensors and the example ids
# dataset column -> collate_rows' Columns field, for the renamed columns of trainer_dataset
RENAMED = {"tokensft_mask": "mask", "tokensft_prior_ids": "prior_ids", "tokensft_prior_logprobs": "prior_logprobs",
           "tokensft_ref_logprob": "ref", "tokensft_weight": "weight"}
STAT_NAMES = ("p_sum", "targets", "kept", "poft_weight_sum", "poft_sequences")


def _objective(objective: str | Objective) -> Objective:
    return parse_objective(objective) if isinstance(objective, str) else objective


def trainer_dataset(directory: str, objective: str | Objective = "nll", mask: str | None = None,
                    ref: str | None = None, tokenizer=None, weight: str | None = None,
                    allow_negative_weights: bool = False):
    """The scored dataset as a `datasets.Dataset` holding only what training reads.

    Columns: id, input_ids, labels and, when the objective, `mask` or `weight` needs them,
    tokensft_mask, tokensft_prior_ids / tokensft_prior_logprobs (qtarget prior=teacher|scorer),
    tokensft_ref_logprob (poft) and tokensft_weight (`weight`: a stored weight column or its
    spec, as `tokensft train --weight`; checked finite at every target, and non-negative unless
    allow_negative_weights). A missing column is a ConfigError naming the enrich command; with
    `tokenizer`, its token fingerprint must equal the dataset's.
    """
    from tokensft.core.models import tokenizer_fingerprint

    dataset, meta = load_with_metadata(directory)
    if tokenizer is not None and tokenizer_fingerprint(tokenizer, chat_template=False) != meta.get("token_fingerprint"):
        raise ConfigError(f"{directory}: the tokenizer differs from the one the dataset was scored with "
                          "(token fingerprints differ); train a model that shares the scorer's tokenizer")
    cols = needed_columns(directory, _objective(objective), mask, ref, set(dataset.column_names), weight, meta)
    keep = {"id": "id", "input_ids": "input_ids", "labels": "labels"}
    for new, field in RENAMED.items():
        if getattr(cols, field):
            keep[getattr(cols, field)] = new
    if cols.ref:  # PoFT cannot train on an example without its reference likelihood
        missing = int(np.isnan(dataset.data.table.column(cols.ref).to_numpy(zero_copy_only=False)).sum())
        if missing:
            raise ConfigError(f"{directory}: {missing} examples have no {cols.ref} (NaN); re-enrich them, or filter "
                              "them out of the returned dataset before training")
    if cols.weight:
        table, every = dataset.data.table, np.arange(len(dataset))
        check_weights(directory, table, cols.weight, table.column("id").to_pylist(), every, every, cols.mask,
                      None if allow_negative_weights else "pass allow_negative_weights=True to train away from them")
    return dataset.select_columns(list(keep)).rename_columns({k: v for k, v in keep.items() if k != v})


class TokenSFTCollator:
    """Pads rows of `trainer_dataset` into a batch: input_ids, attention_mask, labels (B, T) and,
    when the rows carry extra columns, `tokensft`: {ids, mask (B, T), prior_ids / prior_logprobs
    (B, T, K), ref_logprob (B,), weight (B, T)} -- the keys `micro_batch_loss` reads."""

    def __init__(self, pad_id: int | None):
        self.pad_id = 0 if pad_id is None else pad_id

    def __call__(self, features: list[dict]) -> dict:
        names = set(features[0])
        cols = Columns(**{field: column for column, field in RENAMED.items() if column in names})
        fields = [pa.field("id", pa.string()), pa.field("input_ids", pa.list_(pa.int32())),
                  pa.field("labels", pa.list_(pa.int32()))]
        types = {"tokensft_mask": pa.list_(pa.int8()), "tokensft_prior_ids": TOPK_IDS_TYPE,
                 "tokensft_prior_logprobs": pa.list_(pa.list_(pa.float32())), "tokensft_ref_logprob": pa.float32(),
                 "tokensft_weight": pa.list_(pa.float32())}
        fields += [pa.field(name, kind) for name, kind in types.items() if name in names]
        rows = pa.Table.from_pylist([{f.name: row.get(f.name) for f in fields} for row in features],
                                    schema=pa.schema(fields))
        batch = collate_rows(rows, cols, self.pad_id)
        out = {key: batch.pop(key) for key in ("input_ids", "attention_mask", "labels")}
        if len(batch) > 1:  # more than the ids: the loss needs the extras
            out[EXTRA] = batch
        return out


class TokenSFTLoss:
    """A `compute_loss_func` for an unmodified Trainer / SFTTrainer: loss(outputs, labels, num_items_in_batch).

    outputs.logits (B, T, V) predict labels (B, T) shifted by one, as transformers does. The sum of
    the per-target losses is divided by num_items_in_batch (the Trainer's count of supervised
    targets over the accumulation window and, by default, all processes), or by this batch's
    count when it is None (evaluation). It takes no weights (compute_loss_func sees only the outputs
    and the labels): for weighted training use TokenSFTMixin with trainer_dataset(..., weight=NAME).
    """

    def __init__(self, objective: str | Objective, normalize: str | None = None, chunk_size: int = 256):
        self.objective = _objective(objective)
        if self.objective.sequence_level or self.objective.prior in ("teacher", "scorer"):
            raise ConfigError(f"objective {self.objective.name} needs stored columns that compute_loss_func never "
                              "sees; use TokenSFTTrainer (or TokenSFTMixin with SFTTrainer) and TokenSFTCollator")
        normalize = normalize or self.objective.default_normalize
        if normalize != "all-targets":
            raise ConfigError(f"normalize={normalize} (the default of {self.objective.name}) needs counts the Trainer "
                              "does not pass to compute_loss_func; use TokenSFTTrainer, or pass normalize='all-targets'")
        self.chunk_size = chunk_size

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]  # (B, T, V)
        rows, cols = torch.nonzero(labels[:, 1:] != IGNORE_INDEX, as_tuple=True)  # logits at cols predict cols + 1
        prior = self.objective.prior
        terms = target_terms(logits[rows, cols], labels[rows, cols + 1], _float_logits, self.chunk_size,
                             self_ce=prior == "self", uniform_ce=prior == "uniform", recompute=False)
        loss_t, _ = token_loss(self.objective, terms)  # (N,)
        count = num_items_in_batch if num_items_in_batch is not None else len(rows)
        return loss_t.sum() / torch.as_tensor(count, dtype=loss_t.dtype, device=loss_t.device).clamp(min=1)


def _float_logits(logits: torch.Tensor) -> torch.Tensor:
    """The 'head' of logits the model already made: float32, as LogitHead returns."""
    return logits.float()


class TokenSFTMixin:
    """Put in front of `transformers.Trainer` or a subclass (TRL's SFTTrainer): tokensft's loss.

    Keyword arguments: objective (spec or Objective), normalize (default: the objective's own, with
    or without weights; "weight-sum" takes a weighted dataset), chunk_size. Weights (trainer_dataset(..., weight=NAME))
    multiply each target's loss as in `tokensft train --weight`. The batch comes from
    TokenSFTCollator; the rest is the Trainer's (optimizer, schedule, checkpoints, logging). The
    logged `loss` is the normalized step loss; `mean_p` and `kept_fraction` (and `poft_weight`) are
    added to each training log, from this process's batches.
    """

    loss_is_scaled_for_ga = True  # micro_batch_loss already divides by the whole step's count

    def __init__(self, *args, objective: str | Objective = "nll", normalize: str | None = None,
                 chunk_size: int = 256, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokensft_objective = _objective(objective)
        self.tokensft_normalize = normalize or self.tokensft_objective.default_normalize
        self.tokensft_chunk_size = chunk_size
        self._tokensft_sums: dict[str, torch.Tensor | float] = {}
        if getattr(self.args, "remove_unused_columns", False):
            raise ConfigError("TokenSFTMixin: set remove_unused_columns=False in the training arguments; otherwise "
                              "the Trainer drops the mask, prior and reference columns before the collator")
        if getattr(self, "_skip_prepare_dataset", True) is False:  # TRL would re-tokenize and truncate the rows
            raise ConfigError("TokenSFTMixin with SFTTrainer: pass dataset_kwargs={'skip_prepare_dataset': True} in "
                              "SFTConfig; the rows are already tokenized and their per-token columns must stay aligned")

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The step's micro-batches, with the step's Denominator in place of num_items_in_batch."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        obj, world = self.tokensft_objective, self.accelerator.num_processes
        counts = step_counts([{"labels": b["labels"], **b.get(EXTRA, {})} for b in batch_samples], obj.sequence_level)
        if world > 1:
            counts = self.accelerator.reduce(counts.to(self.accelerator.device), reduction="sum").cpu()
        return batch_samples, denominator(counts.tolist(), obj.online_kept, len(batch_samples), world, rescale=False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        extras = inputs.pop(EXTRA, {})
        batch = {"input_ids": inputs["input_ids"], "attention_mask": inputs.get("attention_mask"),
                 "labels": inputs["labels"], **extras}
        if self.tokensft_normalize == "weight-sum" and "weight" not in batch:
            raise ConfigError("TokenSFTMixin: normalize='weight-sum' needs weights in the batch; build the dataset with "
                              "trainer_dataset(..., weight=NAME)")
        step_denominator = num_items_in_batch
        if not isinstance(step_denominator, Denominator):  # evaluation (or a caller of its own): this batch alone
            obj = self.tokensft_objective
            step_denominator = denominator(step_counts([batch], obj.sequence_level).tolist(), obj.online_kept, 1, 1,
                                           rescale=False)
        # the forward goes through the (possibly DDP-wrapped) model, so gradient sync works; it
        # returns the final hidden states and logits for one position only (logits_to_keep=1)
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        output_hidden_states=True, logits_to_keep=1, use_cache=False)
        loss, stats = micro_batch_loss(self.accelerator.unwrap_model(model), batch, self.tokensft_objective,
                                       self.tokensft_normalize, step_denominator, self.tokensft_chunk_size,
                                       hidden=outputs.hidden_states[-1])
        if model.training:
            for key in STAT_NAMES:
                if key in stats:
                    self._tokensft_sums[key] = self._tokensft_sums.get(key, 0.0) + stats[key]
        return (loss, {"loss": loss.detach()}) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        sums = {k: float(v) for k, v in self._tokensft_sums.items()}
        if "loss" in logs and sums.get("targets"):
            logs["mean_p"] = sums["p_sum"] / sums["targets"]
            logs["kept_fraction"] = sums["kept"] / sums["targets"]
            if sums.get("poft_sequences"):
                logs["poft_weight"] = sums["poft_weight_sum"] / sums["poft_sequences"]
            self._tokensft_sums = {}
        super().log(logs, *args, **kwargs)


def _trainer_class():
    from transformers import Trainer

    return type("TokenSFTTrainer", (TokenSFTMixin, Trainer), {"__doc__": "transformers.Trainer with tokensft's loss "
                                                                         "(see TokenSFTMixin)."})


def __getattr__(name: str):
    # TokenSFTTrainer is built on first use: importing transformers.Trainer costs seconds
    if name == "TokenSFTTrainer":
        cls = _trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
