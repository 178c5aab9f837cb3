"""Per-token scores from final hidden states: the math of the scoring pass, as pure functions.

Never materializes [batch, seq, vocab] logits: the caller gathers the final hidden states at target
positions only (N of them, a fraction of batch*seq), and `score_hidden` runs the lm_head and the
log-softmax over chunks of those N rows, so peak extra memory is about 3 * chunk * vocab floats.

For a target token y with logits z (float32) over the vocabulary:
    logprob = z_y - logsumexp(z)
    entropy = -sum_k p_k log p_k
    rank    = #{k : z_k > z_y}          (0 = argmax; ties go to the target's favour)
    topk    = the K largest log p_k and their ids, descending
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokensft.core.head import LogitHead


@dataclass
class TokenScores:
    """Scores of N target tokens, on CPU."""

    logprob: torch.Tensor  # (N,) float32
    entropy: torch.Tensor  # (N,) float32
    rank: torch.Tensor  # (N,) int32
    topk_ids: torch.Tensor | None  # (N, K) int32, or None without top-k
    topk_logprobs: torch.Tensor | None  # (N, K) float32


def score_logits(logits: torch.Tensor, targets: torch.Tensor, top_k: int) -> TokenScores:
    """Scores from float32 logits (c, V) and target ids (c,). Overwrites `logits` (saves a copy)."""
    target_logit = logits.gather(1, targets[:, None])  # (c, 1)
    rank = (logits > target_logit).sum(dim=-1, dtype=torch.int32)  # (c,)
    log_z = torch.logsumexp(logits, dim=-1, keepdim=True)  # (c, 1)
    logprob_all = logits.sub_(log_z)  # (c, V), in place: logits are not needed again
    logprob = (target_logit - log_z).squeeze(1)  # (c,)
    # xlogy(p, p) is 0 where p == 0, so a -inf logit (masked vocab) gives no 0 * -inf = NaN
    probs = logprob_all.exp()  # (c, V)
    entropy = -torch.special.xlogy(probs, probs).sum(dim=-1)  # (c,)
    del probs
    topk_ids = topk_logprobs = None
    if top_k > 0:
        values, indices = torch.topk(logprob_all, k=min(top_k, logits.shape[-1]), dim=-1)  # (c, K)
        topk_ids, topk_logprobs = indices.to(torch.int32), values
    return TokenScores(logprob, entropy, rank, topk_ids, topk_logprobs)


def score_hidden(
    hidden: torch.Tensor, targets: torch.Tensor, head: LogitHead, top_k: int = 0, chunk_size: int = 512
) -> TokenScores:
    """Scores of N target tokens from their predicting hidden states.

    hidden:  (N, H) final hidden states at the positions *before* each target
    targets: (N,) target token ids
    Returns TokenScores on CPU.
    """
    assert hidden.shape[0] == targets.shape[0], (hidden.shape, targets.shape)
    parts: list[TokenScores] = []
    for start in range(0, hidden.shape[0], chunk_size):
        stop = start + chunk_size
        logits = head(hidden[start:stop])  # (c, V) float32
        part = score_logits(logits, targets[start:stop], top_k)
        parts.append(TokenScores(*(t.cpu() if t is not None else None for t in vars(part).values())))
    if not parts:
        empty_k = (0, top_k) if top_k > 0 else None
        return TokenScores(
            torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.int32),
            torch.empty(empty_k, dtype=torch.int32) if empty_k else None,
            torch.empty(empty_k) if empty_k else None,
        )
    return TokenScores(*(
        torch.cat(column) if column[0] is not None else None
        for column in zip(*(vars(p).values() for p in parts))
    ))
