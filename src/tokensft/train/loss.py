"""One micro-batch's loss: backbone -> hidden at targets -> chunked terms -> objective -> normalized.

    hidden = backbone(input_ids)                      # (B, T, H); no lm_head over all positions
    h, y   = hidden[b, t-1], labels[b, t]             # (N, H), (N,) for every target (b, t)
    terms  = target_terms(h, y, head, ...)            # chunked, recomputed in backward
    loss_t, kept = token_loss(objective, terms)       # (N,), (N,)  (or PoFT per sequence)
    loss   = sum(loss_t * mask * weight) / denominator  # denominator: global over accumulation + processes

Normalization (`--normalize`): the denominator is counted over the whole optimizer step -- every
micro-batch of the gradient-accumulation window, on every process -- before the first backward,
so accumulation and data parallelism give the gradient of one big batch:
    all-targets   supervised targets (labels != -100), counted before any masking (ProFit, TRL)
    kept-targets  targets kept by the stored --mask (exact), or, for online thresholds
                  (objective.online_kept), by the current p, known only after the forward: with
                  `rescale` the loss is the plain sum and the caller divides the gradients by the
                  step's global kept count (exact, what `tokensft train` does); without it (DeepSpeed,
                  the Trainer interop) each micro-batch divides by its own kept count and the
                  micro-batches and processes are averaged
    sequences     mean over sequences of each sequence's mean target loss (PoFT)
    weight-sum    with --weight: the sum of |w| over the targets the stored --mask keeps (all targets
                  without one), so the mean weight is 1 (TRL's weighted-SFT proposals, sum w l / sum |w|)

Weights (`--weight`, a stored list<float32> column, batch["weight"] (B, T), 0 off the targets):
each target's loss, after the objective and the stored mask, is multiplied by its weight,
loss_t = w_t * loss_t, so weights all 1 leave every number bit-identical (x * 1.0 == x). The default
normalization does not change with --weight (the objective's own, all-targets for most): a weight
then scales each token's share of ordinary SFT, the learning rate means what it means unweighted,
and `--weight prob^1` with nll, training the scorer, is at step 0 exactly DFT's sum sg(p)(-log p) / N
(p⁰ = p there; DFT's own divisor, TRL's num_items_in_batch, is N too). weight-sum is
opt-in; like all-targets its count is made before the forward from the stored mask, so an online
threshold (objective.online_kept) does not change it (its kept tokens are a subset of what it
counts), and kept-targets still counts tokens, weighted or not. PoFT: each sequence's weight is
the mean of its target weights (the example's weight for per-example data weights), the loss
per sequence loss_s * w_s; sequences divides by the number of sequences, weight-sum by sum |w_s|.

The path without `rescale` and Beyond Log Likelihood's verl trainer (main_verl/trainer/
fsdp_sft_trainer.py) agree in direction: each micro-batch divides its summed loss by its own kept
count (the threshold mask replaces the loss mask before counting). They differ in magnitude: verl
divides by n_micro_batches only after the backward (for the logged loss), so its gradient is the
sum over the micro-batches, n_micro_batches times tokensft's, which averages them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokensft.core.head import LogitHead
from tokensft.core.schema import IGNORE_INDEX
from tokensft.train.chunked import target_terms
from tokensft.train.losses import poft_loss, token_loss
from tokensft.train.objectives import Objective


@dataclass
class Denominator:
    """Counts over one optimizer step (all micro-batches, all processes)."""

    targets: float
    sequences: float
    kept: float | None  # kept targets by the stored mask; None when it depends on the current p
    micro_batches: int  # micro-batches per process in the step
    world_size: int = 1
    rescale: bool = False  # online kept count: return sums, the caller divides gradients by the global count
    weight_sum: float = 0.0  # sum |w| over the stored mask's targets (per sequence for PoFT); for weight-sum


def count_batch(batch: dict, sequence_level: bool = False) -> dict:
    """What a micro-batch contributes to the step's Denominator (before any forward). weight_sum:
    sum |w| over the targets the stored mask keeps, or with sequence_level (PoFT) sum |w_s| over the
    sequences, w_s the mean weight of a sequence's targets; 0 without weights."""
    target = batch["labels"] != IGNORE_INDEX  # (B, T)
    stored = target & batch["mask"].bool() if "mask" in batch else target  # (B, T)
    sequence, n_seq = sequences_of(batch)
    sequence = sequence.reshape(-1)  # (B*T,)
    per_seq_targets = _per_sequence(sequence, target.reshape(-1).float(), n_seq)  # (S,)
    weight_sum = 0.0
    if "weight" in batch:
        w = torch.where(stored, batch["weight"], torch.zeros_like(batch["weight"]))  # (B, T)
        if sequence_level:
            w = _per_sequence(sequence, w.reshape(-1), n_seq) / per_seq_targets.clamp(min=1)  # (S,) mean target weight
        weight_sum = float(w.abs().sum().item())
    return {"targets": float(target.sum().item()), "sequences": float((per_seq_targets > 0).sum().item()),
            "kept": float(stored.sum().item()), "weight_sum": weight_sum}


def sequences_of(batch: dict) -> tuple[torch.Tensor, int]:
    """(B, T) long, the sequence of the micro-batch each position belongs to, and the number of
    sequences S: a row each when padded; a packed batch (tokensft.train.packing) carries `sequence`."""
    labels = batch["labels"]
    if "sequence" in batch:
        return batch["sequence"], len(batch["ids"])
    rows = torch.arange(labels.shape[0], device=labels.device)
    return rows.unsqueeze(1).expand_as(labels), labels.shape[0]


def _per_sequence(sequence: torch.Tensor, values: torch.Tensor, n_seq: int) -> torch.Tensor:
    """(S,) the sum of `values` (N,) by their sequence (N,) (differentiable in values)."""
    return torch.zeros(n_seq, dtype=values.dtype, device=values.device).index_add(0, sequence, values)


def micro_batch_loss(model, batch: dict, objective: Objective, normalize: str, denominator: Denominator,
                     chunk_size: int = 256, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The micro-batch's share of the step loss (backward it as is) and its metrics: sums, kept as
    detached tensors so the hot loop never waits on the device (the caller reduces once per step).

    hidden: (B, T, H) final hidden states when the caller ran the forward itself (a wrapped model,
    as in the Trainer interop); by default the model's decoder runs here.
    """
    labels = batch["labels"]
    if hidden is None:
        hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                     position_ids=batch.get("position_ids"), use_cache=False).last_hidden_state  # (B, T, H)
    rows, cols = torch.nonzero(labels != IGNORE_INDEX, as_tuple=True)  # (N,), (N,); cols >= 1
    sequence, n_seq = sequences_of(batch)
    seq = sequence[rows, cols]  # (N,) each target's sequence: its row, or its place in a packed row
    prior = objective.prior
    prior_ids = prior_logprobs = None
    if prior in ("teacher", "scorer"):
        prior_ids = batch["prior_ids"][rows, cols]  # (N, K)
        prior_logprobs = batch["prior_logprobs"][rows, cols]  # (N, K)
    terms = target_terms(hidden[rows, cols - 1], labels[rows, cols], LogitHead(model), chunk_size,
                         prior_ids=prior_ids, prior_logprobs=prior_logprobs,
                         self_ce=prior == "self", uniform_ce=prior == "uniform")
    per_seq_targets = _per_sequence(seq, torch.ones_like(seq, dtype=torch.float), n_seq)  # (S,)
    logprob = terms.logprob.detach()  # (N,)
    stats = {"p_sum": logprob.exp().sum(), "nll_sum": -logprob.sum(), "targets": float(len(rows))}
    if objective.sequence_level:  # PoFT: s = mean target log-prob of each sequence
        seq_logprob = _per_sequence(seq, terms.logprob, n_seq) / per_seq_targets.clamp(min=1)  # (S,)
        has = per_seq_targets > 0
        loss_seq, weight = poft_loss(seq_logprob[has], batch["ref_logprob"][has], **objective.params)
        if "weight" in batch:  # each sequence's loss times the mean weight of its targets
            w_seq = _per_sequence(seq, batch["weight"][rows, cols], n_seq)  # (S,)
            loss_seq = loss_seq * (w_seq / per_seq_targets.clamp(min=1))[has]
        total = loss_seq.sum()
        stats.update(kept=float(len(rows)), poft_weight_sum=weight.sum(), poft_sequences=has.sum())
    else:
        loss_t, kept = token_loss(objective, terms)  # (N,), (N,)
        if "mask" in batch:
            stored = batch["mask"][rows, cols].bool()  # (N,)
            loss_t = torch.where(stored, loss_t, torch.zeros_like(loss_t))
            kept = kept & stored
        if "weight" in batch:  # after the mask, so weights all 1 are bit-identical to no weights
            loss_t = loss_t * batch["weight"][rows, cols]  # (N,) w_t * loss_t
        stats["kept"] = kept.sum()
        if normalize == "sequences":
            per_seq = _per_sequence(seq, loss_t, n_seq)  # (S,)
            total = (per_seq / per_seq_targets.clamp(min=1)).sum()
        else:
            total = loss_t.sum()
    loss = total / _denominator(normalize, denominator, stats["kept"]) * denominator.world_size
    stats["loss_sum"] = total.detach()
    return loss, stats


def _denominator(normalize: str, d: Denominator, kept_here) -> float | torch.Tensor:
    """The divisor making the sum over micro-batches and processes the step's normalized loss.
    (DDP averages gradients over processes, hence the caller's * world_size.)"""
    if normalize == "all-targets":
        return max(d.targets, 1.0)
    if normalize == "sequences":
        return max(d.sequences, 1.0)
    if normalize == "weight-sum":  # weights may sum below 1; a step whose weights are all 0 has a zero loss
        return d.weight_sum if d.weight_sum > 0 else 1.0
    if d.kept is not None:
        return max(d.kept, 1.0)
    if d.rescale:  # online threshold: the caller divides by the step's global kept count afterwards
        return 1.0
    # online threshold without rescaling: this micro-batch's own kept count; micro-batches and processes averaged
    return torch.as_tensor(kept_here, dtype=torch.float32).clamp(min=1.0) * d.micro_batches * d.world_size
