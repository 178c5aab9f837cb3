"""The per-target terms of the training losses, chunk by chunk, never holding [N, V] logits.

    hidden  (N, H)  final hidden states before each target (gathered by the caller)
    for each chunk of c rows:
        logits = head(hidden[chunk])               # (c, V) float32, recomputed in backward
        logprob = logits[y] - logsumexp(logits)    # (c,)
        + prior_logprob (c, K), self_ce (c,), uniform_ce (c,) when the objective needs them
    all from one exp pass, with one fused (c, V) gradient (see _ChunkTerms)

Each chunk runs under activation checkpointing: autograd keeps only the chunk's hidden rows and
recomputes its logits in the backward pass, so peak memory for the loss is a few c x V float32
buffers however long the batch, instead of the [batch, seq, vocab] logits (and their gradient)
of a plain cross-entropy.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch.utils.checkpoint import checkpoint

from tokensft.core.head import LogitHead
from tokensft.train.losses import TokenTerms


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


class _ChunkTerms(torch.autograd.Function):
    """Every term of a chunk from its logits (c, V) in one exp pass, with a fused backward.

    forward:  log Z = logsumexp(logits); logprob = logits[y] - log Z (c,); prior_logprob = logits[ids] - log Z
              (c, K); self_ce = -sum_v p_v log p_v (c,), a value only; uniform_ce = log Z - mean(logits) (c,)
    backward: d/d logits = softmax * (g_uniform - g_logprob - sum_k g_prior_k) + scatter(y, g_logprob)
              + scatter(ids, g_prior) - g_uniform / V, built in one (c, V) buffer. self_ce carries no
              gradient: as the self prior's -sum sg(p) log p, its logit gradient is exactly 0 (p - p sum p).
    Autograd's own graph for the same terms would add a (c, V) gradient per term, then sum them.
    Unused terms are empty tensors. Saves (logits, log Z, y, ids) on the forward and on the
    checkpoint's recompute alike; the recompute skips the entropy (its outputs are dropped).
    """

    @staticmethod
    def forward(ctx, logits, targets, prior_ids, want_self: bool, want_uniform: bool):
        top = logits.amax(dim=-1, keepdim=True)  # (c, 1)
        e = torch.sub(logits, top).exp_()  # (c, V) exp(logit - max)
        total = e.sum(dim=-1)  # (c,)
        log_z = top.squeeze(-1) + total.log()  # (c,)
        logprob = logits.gather(1, targets[:, None]).squeeze(1) - log_z
        empty = logits.new_empty(0)
        prior_logprob = logits.gather(1, prior_ids) - log_z[:, None] if prior_ids is not None else empty
        # -sum p log p = log Z - sum p * logit, with p = e / total; skipped on the recompute
        self_ce = (log_z - torch.linalg.vecdot(e, logits) / total if not _recomputing else torch.zeros_like(log_z)) \
            if want_self else empty
        uniform_ce = log_z - logits.mean(dim=-1) if want_uniform else empty
        ctx.save_for_backward(logits, log_z, targets, prior_ids)
        ctx.mark_non_differentiable(self_ce)
        return logprob, prior_logprob, self_ce, uniform_ce

    @staticmethod
    def backward(ctx, g_logprob, g_prior, _g_self, g_uniform):
        logits, log_z, targets, prior_ids = ctx.saved_tensors
        coef = torch.zeros_like(log_z)  # (c,) what multiplies the softmax in each row
        if g_logprob is not None:
            coef -= g_logprob
        if prior_ids is not None and g_prior is not None:
            coef -= g_prior.sum(dim=-1)
        if g_uniform is not None and g_uniform.numel():
            coef += g_uniform
        grad = torch.sub(logits, log_z[:, None]).exp_().mul_(coef[:, None])  # (c, V) softmax * coef
        if g_uniform is not None and g_uniform.numel():
            grad.sub_(g_uniform[:, None] / logits.shape[-1])
        if g_logprob is not None:
            grad.scatter_add_(1, targets[:, None], g_logprob[:, None])
        if prior_ids is not None and g_prior is not None:
            grad.scatter_add_(1, prior_ids, g_prior)
        return grad, None, None, None, None


def _chunk_terms(hidden: torch.Tensor, targets: torch.Tensor, prior_ids: torch.Tensor | None,
                 head: LogitHead, self_ce: bool, uniform_ce: bool) -> tuple[torch.Tensor, ...]:
    """The terms of one chunk: hidden (c, H), targets (c,), prior_ids (c, K) or None."""
    logits = head(hidden)  # (c, V) float32
    logprob, prior_logprob, entropy, uniform = _ChunkTerms.apply(logits, targets, prior_ids, self_ce, uniform_ce)
    out = [logprob]
    if prior_ids is not None:
        out.append(prior_logprob)
    if self_ce:
        out.append(entropy)
    if uniform_ce:
        out.append(uniform)
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
    terms = TokenTerms(logprob=columns.pop(0))
    if prior_ids is not None:
        terms.prior_logprob = columns.pop(0)
        # renormalize the stored top-k to a distribution over its K ids (Target-SFT's pi)
        terms.prior_probs = torch.softmax(prior_logprobs.float(), dim=-1).nan_to_num(0.0)
    if self_ce:
        terms.self_ce = columns.pop(0)
    if uniform_ce:
        terms.uniform_ce = columns.pop(0)
    return terms
