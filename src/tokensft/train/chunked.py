"""The per-target terms of the training losses, chunk by chunk, never holding [N, V] logits.

    hidden  (N, H)  final hidden states before each target (gathered by the caller)
    for each chunk of c rows:
        logits = head(hidden[chunk])               # (c, V) float32, recomputed in backward
        logp   = logits[y] - logsumexp(logits)     # (c,)
        + prior_logp (c, K), self_ce (c,), uniform_ce (c,) when the objective needs them

Each chunk runs under activation checkpointing: autograd keeps only the chunk's hidden rows and
recomputes its logits in the backward pass, so peak memory for the loss is a few c x V float32
buffers however long the batch, instead of the [batch, seq, vocab] logits (and their gradient)
of a plain cross-entropy.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch.utils.checkpoint import checkpoint

from tokensft.preprocess.scoring import LogitHead
from tokensft.train.objectives import TokenTerms


_recomputing = 0  # > 0 while checkpoint re-runs a chunk in the backward pass


@contextmanager
def _recompute():
    global _recomputing
    _recomputing += 1
    try:
        yield
    finally:
        _recomputing -= 1


def _contexts():
    """checkpoint's context_fn: nothing on the forward, a flag on the recompute."""
    return nullcontext(), _recompute()


class _LogZWithEntropy(torch.autograd.Function):
    """log Z = logsumexp(logits) (c,) with its usual gradient, plus the entropy of softmax(logits) (c,)
    as a value without gradient, from one exp pass over the (c, V) row instead of two.

    The entropy is the self prior's -sum sg(p) log p, whose logit gradient is exactly 0 (p - p * sum p),
    so it needs no autograd. Saves what logsumexp saves (logits, log Z), so the checkpoint's recompute
    matches the forward; the recompute skips the entropy (its outputs are dropped).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, want_entropy: bool):
        top = logits.amax(dim=-1, keepdim=True)  # (c, 1)
        e = torch.sub(logits, top).exp_()  # (c, V) exp(logit - max)
        total = e.sum(dim=-1)  # (c,)
        log_z = top.squeeze(-1) + total.log()
        # -sum p log p = log Z - sum p * logit, with p = e / total
        entropy = log_z - torch.linalg.vecdot(e, logits) / total if want_entropy else torch.zeros_like(log_z)
        ctx.save_for_backward(logits, log_z)
        ctx.mark_non_differentiable(entropy)
        return log_z, entropy

    @staticmethod
    def backward(ctx, grad_log_z: torch.Tensor, _grad_entropy: torch.Tensor):
        logits, log_z = ctx.saved_tensors
        return grad_log_z[:, None] * torch.exp(logits - log_z[:, None]), None  # d log Z / d logits = softmax


def _chunk_terms(hidden: torch.Tensor, targets: torch.Tensor, prior_ids: torch.Tensor | None,
                 head: LogitHead, self_ce: bool, uniform_ce: bool) -> tuple[torch.Tensor, ...]:
    """The terms of one chunk: hidden (c, H), targets (c,), prior_ids (c, K) or None."""
    logits = head(hidden)  # (c, V) float32
    if self_ce:
        log_z, entropy = _LogZWithEntropy.apply(logits, not _recomputing)  # (c,), (c,)
    else:
        log_z = torch.logsumexp(logits, dim=-1)  # (c,)
    out = [logits.gather(1, targets[:, None]).squeeze(1) - log_z]  # logp (c,)
    if prior_ids is not None:
        out.append(logits.gather(1, prior_ids) - log_z[:, None])  # (c, K)
    if self_ce:
        out.append(entropy)
    if uniform_ce:
        out.append(log_z - logits.mean(dim=-1))  # -(1/V) sum_v log p_v, (c,)
    return tuple(out)


def target_terms(
    hidden: torch.Tensor, targets: torch.Tensor, head: LogitHead, chunk_size: int = 256,
    prior_ids: torch.Tensor | None = None, prior_logprobs: torch.Tensor | None = None,
    self_ce: bool = False, uniform_ce: bool = False, recompute: bool = True,
) -> TokenTerms:
    """TokenTerms for N targets.

    hidden: (N, H); targets: (N,) ids; prior_ids: (N, K) ids of a stored sparse prior with
    prior_logprobs (N, K) their stored log-probs (-inf pads rows with fewer than K entries).
    recompute: checkpoint each chunk (training); False when no gradient is needed.
    """
    use_checkpoint = recompute and torch.is_grad_enabled() and hidden.requires_grad
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, hidden.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        args = (hidden[sl], targets[sl], prior_ids[sl] if prior_ids is not None else None, head, self_ce, uniform_ce)
        parts.append(checkpoint(_chunk_terms, *args, use_reentrant=False, context_fn=_contexts)
                     if use_checkpoint else _chunk_terms(*args))
    if not parts:  # no targets: empty terms that still carry the graph (a zero loss backpropagates)
        parts = [_chunk_terms(hidden[:0], targets[:0], prior_ids[:0] if prior_ids is not None else None,
                              head, self_ce, uniform_ce)]
    columns = [torch.cat(column) for column in zip(*parts)]
    terms = TokenTerms(logp=columns.pop(0))
    if prior_ids is not None:
        terms.prior_logp = columns.pop(0)
        # renormalize the stored top-k to a distribution over its K ids (Target-SFT's pi)
        terms.prior_probs = torch.softmax(prior_logprobs.float(), dim=-1).nan_to_num(0.0)
    if self_ce:
        terms.self_ce = columns.pop(0)
    if uniform_ce:
        terms.uniform_ce = columns.pop(0)
    return terms
