"""One optimizer step of `tokensft train`, apart from the model: its micro-batches, its counts, the
finite check, its metrics, and the held-out evaluation (the loop in tokensft.train.loop).

    batches = micro_batches(data, drawn, rank, world, batch_size, pad_id, batching)  # the same number on every process
    counts = step_counts(batches, sequence_level)     # (4,) targets, sequences, kept, weight sum: before any forward
    check_finite(step, losses, grad_norm, batches, output)   # TrainingDiverged before the weights move
    row = step_metrics(step, total, totals, lr, grad_norm, seconds, counts)   # one line of metrics.jsonl
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tokensft.core.errors import TokensftError
from tokensft.core.schema import IGNORE_INDEX
from tokensft.train.data import TrainData
from tokensft.train.loss import Denominator, count_batch
from tokensft.train.packing import pack

STAT_KEYS = ("loss", "loss_sum", "nll_sum", "p_sum", "targets", "kept", "poft_weight_sum", "poft_sequences")
COUNT_KEYS = ("targets", "sequences", "kept", "weight_sum")  # step_counts' order


class TrainingDiverged(TokensftError):
    """A non-finite loss or gradient: training stopped, the last good checkpoint kept."""


def micro_batches(data: TrainData, drawn, rank: int, world: int, batch_size: int, pad_id: int,
                  batching: str = "padded") -> list[dict]:
    """This process's micro-batches of the step's examples `drawn`. Every process gets the same number
    (a short last step pads with micro-batches without targets): under DDP, FSDP or DeepSpeed each
    forward and backward is a collective, and a process with one fewer would hang the others.
    grouped (--batching grouped): the step's examples sorted by length first (stable: ties keep the
    drawn order), so each micro-batch holds similar lengths and pads less; the step's set of examples,
    hence its global denominator and gradient (up to float rounding), is the same.
    packed (--batching packed): padded's micro-batches, each one row of its real tokens
    (tokensft.train.packing.pack): the same examples and split, no padding."""
    if batching == "grouped":
        drawn = drawn[data.lengths(drawn).argsort(kind="stable")]
    mine = drawn[rank::world]
    batches = [data.collate(mine[i:i + batch_size], pad_id) for i in range(0, len(mine), batch_size)]
    per_process = math.ceil(math.ceil(len(drawn) / world) / batch_size)
    while len(batches) < per_process:
        filler = data.collate(drawn[:1], pad_id)
        filler["labels"].fill_(IGNORE_INDEX)  # no targets: counts nothing, adds a zero gradient
        batches.append(filler)
    return [pack(b) for b in batches] if batching == "packed" else batches


def step_counts(batches: list[dict], sequence_level: bool = False) -> torch.Tensor:
    """(4,) targets, sequences, kept targets and weight sum of these micro-batches (COUNT_KEYS; before any forward)."""
    counts = [count_batch(b, sequence_level) for b in batches]
    return torch.tensor([[c[k] for k in COUNT_KEYS] for c in counts]).sum(0)


def denominator(counts: list[float], online_kept: bool, micro: int, world: int, rescale: bool) -> Denominator:
    """The step's Denominator from its global counts (step_counts summed over processes)."""
    return Denominator(counts[0], counts[1], None if online_kept else counts[2], micro, world, rescale,
                       weight_sum=counts[3])


def check_finite(step: int, losses: list[torch.Tensor], grad_norm: torch.Tensor, batches: list[dict], output: Path) -> None:
    """Stop before the weights move on a non-finite loss or gradient (one device sync per step)."""
    finite = torch.isfinite(torch.cat([torch.stack(losses).float().reshape(-1), grad_norm.float().reshape(1)]))
    if finite.all():
        return
    bad = int((~finite).nonzero()[0])
    if bad < len(losses):
        what, ids = f"non-finite loss ({losses[bad].item()})", batches[bad]["ids"]
    else:
        what, ids = f"non-finite gradient norm ({grad_norm.item()}) from a finite loss", [i for b in batches for i in b["ids"]]
    raise TrainingDiverged(f"step {step + 1}: {what} on examples {', '.join(ids[:5])}; the last good checkpoint is kept "
                           f"in {output}")


def stack_stats(sums: dict, device) -> torch.Tensor:
    """(len(STAT_KEYS),) float32 on `device`: the step's metric sums (floats or 0-dim tensors)."""
    return torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float32, device=device).reshape(()) for k in STAT_KEYS])


def step_metrics(step, total, s, lr, grad_norm, seconds, counts, weighted: bool = False) -> dict:
    """One line of metrics.jsonl. weighted (--weight): weight_sum, the step's sum |w| (weight-sum's divisor)."""
    out = {"step": step, "total_steps": total, "loss": s["loss"], "lr": lr, "grad_norm": grad_norm,
           "targets_per_s": counts[0] / seconds, "mean_p": s["p_sum"] / max(s["targets"], 1),
           "kept_fraction": s["kept"] / max(s["targets"], 1)}
    if weighted:
        out["weight_sum"] = counts[3]
    if s["poft_sequences"]:
        out["poft_weight_mean"] = s["poft_weight_sum"] / s["poft_sequences"]
    return out


@torch.no_grad()
def evaluate(module, data: TrainData, batch_size: int, accelerator, pad_id: int, batching: str = "padded") -> dict:
    """Objective loss, NLL and mean target p on the held-out split, through the prepared module, in
    the same number of micro-batches on every process (see micro_batches)."""
    module.eval()
    inner = accelerator.unwrap_model(module)  # the ObjectiveModule: its objective and normalize
    batches = micro_batches(data, data.eval_indices, accelerator.process_index, accelerator.num_processes,
                            batch_size, pad_id, batching)
    counts = accelerator.reduce(step_counts(batches, inner.objective.sequence_level).to(accelerator.device),
                                reduction="sum").tolist()
    d = denominator(counts, inner.objective.online_kept, 1, 1, rescale=True)
    sums = torch.zeros(4, device=accelerator.device)  # objective loss, nll sum, p sum, kept
    for batch in batches:
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, stats = module(batch, d)
        sums += torch.stack([torch.as_tensor(x, dtype=torch.float32, device=accelerator.device).reshape(())
                             for x in (loss, stats["nll_sum"], stats["p_sum"], stats["kept"])])
    sums = accelerator.reduce(sums, reduction="sum").tolist()
    online = inner.normalize == "kept-targets" and inner.objective.online_kept  # the loss is a sum: / kept
    return {"eval_loss": sums[0] / max(sums[3], 1.0) if online else sums[0], "eval_nll": sums[1] / max(counts[0], 1),
            "eval_mean_p": sums[2] / max(counts[0], 1)}
