"""Batched teacher-forced scoring of rendered examples under a causal LM.

    batches = plan_batches(lengths, max_tokens)          # sorted by length: little padding
    hidden  = backbone(input_ids)                        # (B, T, H), no lm_head over all positions
    h_tgt   = hidden[b, t-1] for every target (b, t)     # (N, H)
    scores  = score_hidden(h_tgt, labels[b, t])          # chunked lm_head + log-softmax

The first batch is checked once against `model(input_ids).logits` so an architecture whose logits
are not `LogitHead(backbone(x))` fails loudly instead of writing wrong numbers.

One model pass for every stage: score, enrich's references and teacher, eval's teacher-forced
numbers (and `plan_batches` for eval's generation). It scores anything with `input_ids` and
`labels` (`records.render.Rendered`, a row read back from a shard), so it needs no record format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from tokensft.core.errors import ModelError
from tokensft.core.head import LogitHead
from tokensft.core.scoring import score_hidden
from tokensft.core.schema import IGNORE_INDEX


class Rendered(Protocol):
    """What the scorer reads of an example: token ids and labels (IGNORE_INDEX off the targets), length T."""

    input_ids: Sequence[int]
    labels: Sequence[int]


@dataclass
class ScoredExample:
    """One example's scores, aligned with its input_ids (length T)."""

    rendered: Rendered
    logprob: np.ndarray  # (T,) float32, NaN at non-targets
    entropy: np.ndarray  # (T,) float32, NaN at non-targets
    rank: np.ndarray  # (T,) int32, -1 at non-targets
    target_positions: np.ndarray  # (n,) int64 positions t with labels[t] != IGNORE_INDEX
    topk_ids: np.ndarray | None  # (n, K) int32, one row per target position
    topk_logprobs: np.ndarray | None  # (n, K) float32


def default_batch_tokens(device: torch.device) -> int:
    """Padded tokens per batch: large on GPUs (throughput), small on CPUs, where bigger batches
    only add padding and cache misses (measured: 1k-token batches are 1.3x faster than 8k)."""
    return 8192 if device.type == "cuda" else 1024


def plan_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group example indices into batches of at most `max_tokens` padded tokens (B * T_max).

    Longest first, so each batch's first example sets its padded length and neighbours are close
    in length; an example longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * width > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class Scorer:
    """Scores lists of `Rendered` examples with one model; keeps nothing between calls but the check."""

    def __init__(self, model, top_k: int = 0, batch_tokens: int | None = None, chunk_size: int = 256):
        self.model = model
        self.backbone = model.get_decoder()
        self.head = LogitHead(model)
        self.top_k = top_k
        self.device = next(model.parameters()).device
        self.batch_tokens = batch_tokens or default_batch_tokens(self.device)
        self.chunk_size = chunk_size
        self.checked = False

    @torch.inference_mode()
    def score(self, examples: Sequence[Rendered]) -> list[ScoredExample]:
        """Scores in the order given (batching reorders internally and restores the order)."""
        out: list[ScoredExample | None] = [None] * len(examples)
        for batch in plan_batches([len(e.input_ids) for e in examples], self.batch_tokens):
            for i, scored in zip(batch, self._score_batch([examples[i] for i in batch])):
                out[i] = scored
        return out  # type: ignore[return-value]

    def _score_batch(self, batch: list[Rendered]) -> list[ScoredExample]:
        width = max(len(e.input_ids) for e in batch)
        input_ids = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T), right-padded
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
        for b, example in enumerate(batch):
            n = len(example.input_ids)
            input_ids[b, :n] = torch.tensor(example.input_ids)
            labels[b, :n] = torch.tensor(example.labels)
            mask[b, :n] = 1
        padded = bool((mask == 0).any())
        try:
            hidden = self.backbone(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device) if padded else None,  # None keeps SDPA's causal fast path
                use_cache=False,
            ).last_hidden_state  # (B, T, H)
        except torch.OutOfMemoryError:
            raise ModelError(
                f"out of memory on a batch of {len(batch)} x {width} tokens; "
                "lower --batch-tokens (or --max-length)"
            ) from None
        rows, cols = torch.nonzero(labels != IGNORE_INDEX, as_tuple=True)  # (N,), (N,); cols >= 1
        targets = labels[rows, cols].to(self.device)  # (N,)
        h_tgt = hidden[rows.to(self.device), cols.to(self.device) - 1]  # (N, H): state before each target
        scores = score_hidden(h_tgt, targets, self.head, self.top_k, self.chunk_size)
        if not torch.isfinite(scores.logprob).all() or not torch.isfinite(scores.entropy).all():
            raise ModelError(
                f"non-finite log-probs in a batch of {len(batch)} examples (dtype {hidden.dtype}); "
                "the model overflows at this precision: use --dtype float32"
            )
        if not self.checked:
            shortest = min(range(len(batch)), key=lambda b: len(batch[b].input_ids))
            self._check_against_full_forward(batch[shortest], scores.logprob[rows == shortest])
            self.checked = True
        return self._split(batch, rows.numpy(), cols.numpy(), scores)

    def _split(self, batch, rows, cols, scores) -> list[ScoredExample]:
        logprob, entropy, rank = scores.logprob.numpy(), scores.entropy.numpy(), scores.rank.numpy()
        out = []
        bounds = np.searchsorted(rows, np.arange(len(batch) + 1))  # nonzero() yields rows in order
        for b, example in enumerate(batch):
            n = len(example.input_ids)
            sel = slice(bounds[b], bounds[b + 1])
            pos = cols[sel]
            lp = np.full(n, np.nan, dtype=np.float32)
            ent = np.full(n, np.nan, dtype=np.float32)
            rk = np.full(n, -1, dtype=np.int32)
            lp[pos], ent[pos], rk[pos] = logprob[sel], entropy[sel], rank[sel]
            topk_ids = scores.topk_ids.numpy()[sel] if scores.topk_ids is not None else None
            topk_lp = scores.topk_logprobs.numpy()[sel] if scores.topk_logprobs is not None else None
            out.append(ScoredExample(example, lp, ent, rk, pos.astype(np.int64), topk_ids, topk_lp))
        return out

    def _check_against_full_forward(self, example: Rendered, logprob: torch.Tensor, max_len: int = 256) -> None:
        """Compare the gathered-hidden path with `model(input_ids).logits` on the first `max_len`
        tokens of one example (causal: a prefix scores the same), so the check stays small."""
        n = min(len(example.input_ids), max_len)
        ids = torch.tensor([example.input_ids[:n]], device=self.device)
        logits = self.model(input_ids=ids, use_cache=False).logits[0].float()  # (n, V), one short example
        reference = torch.log_softmax(logits[:-1], dim=-1)  # row t-1 predicts token t
        labels = torch.tensor(example.labels[:n], device=self.device)
        pos = torch.nonzero(labels != IGNORE_INDEX).squeeze(1)
        logprob = logprob[: len(pos)]
        expected = reference[pos - 1, labels[pos]].cpu()
        # Batched and padded vs one unpadded sequence: fp32 agrees to ~1e-5, half precision only roughly.
        tolerance = 1e-3 if next(self.model.parameters()).dtype == torch.float32 else 0.25
        diff = (expected - logprob).abs().max().item() if len(pos) else 0.0
        if not diff <= tolerance:
            raise ModelError(
                f"{type(self.model).__name__}: scoring from hidden states does not reproduce the model's own "
                f"logits (max log-prob difference {diff:.3g}); this architecture is not supported yet"
            )
