"""The tensor math of each objective: pure functions of per-token terms, keyed like OBJECTIVES.

    loss_t, kept = token_loss(objective, terms)     # LOSSES[objective.name](terms, **objective.params)
    loss_s, weight = poft_loss(seq_logprob, ref_logprob, beta, gamma)   # PoFT, per sequence

Every token-level objective maps the current model's log-probability of each target, logprob
(N,) with gradient, plus optional terms computed in the same lm_head chunk (TokenTerms), to a
per-token loss (N,) float32 and a `kept` flag (N,) bool -- which tokens count as trained, for
metrics and the kept-targets normalizer. Thresholds and weights are stop-gradient (sg)
everywhere, as in the sources. The trainer sums the losses and divides by the normalizer (see
tokensft.train.loss); these functions never average. Formulas and sources: the docstrings here,
and the catalogue `tokensft.train.objectives.OBJECTIVES` (which `tokensft train --help` prints).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from tokensft.train.objectives import Objective

LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (terms, **params) -> loss (N,), kept (N,)


@dataclass
class TokenTerms:
    """What an objective may use, for N target tokens (computed chunk by chunk by the trainer)."""

    logprob: torch.Tensor  # (N,) float32, log p(y) under the current model, with gradient
    prior_logprob: torch.Tensor | None = None  # (N, K) log p(k) at the prior's ids, with gradient
    prior_probs: torch.Tensor | None = None  # (N, K) the renormalized prior pi (no gradient; 0 = padding)
    self_ce: torch.Tensor | None = None  # (N,) -sum_v sg(p_v) log p_v (its logit gradient is exactly 0)
    uniform_ce: torch.Tensor | None = None  # (N,) -(1/V) sum_v log p_v, with gradient


def _every(logprob: torch.Tensor) -> torch.Tensor:
    """(N,) bool, all True: an objective that trains every target."""
    return torch.ones_like(logprob, dtype=torch.bool)


def nll_loss(terms: TokenTerms) -> tuple[torch.Tensor, torch.Tensor]:
    """-log p: standard SFT."""
    logprob = terms.logprob.float()  # (N,)
    return -logprob, _every(logprob)


def p_loss(terms: TokenTerms) -> tuple[torch.Tensor, torch.Tensor]:
    """1 - p: BLL's "-p" (its gradient is DFT's)."""
    logprob = terms.logprob.float()
    return 1.0 - logprob.exp(), _every(logprob)


def power_loss(terms: TokenTerms, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 - p^A) / A: BLL's GeneralFamily-A (A -> 0: nll; A = 10: the paper's -p^10)."""
    logprob = terms.logprob.float()
    return -torch.expm1(alpha * logprob) / alpha, _every(logprob)  # expm1: exact as A -> 0


def dft_loss(terms: TokenTerms) -> tuple[torch.Tensor, torch.Tensor]:
    """-sg(p) log p: DFT (Wu et al., arXiv 2508.05629)."""
    logprob = terms.logprob.float()
    return -logprob.detach().exp() * logprob, _every(logprob)


def threshold_loss(terms: TokenTerms, kind: str, q: float, below: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 - p) 1[sg(p) >= Q] (kind "p") or -log p 1[sg(p) >= Q] (kind "nll"); below: 1[sg(p) <= Q].
    BLL's OnlyTopP-Q / OnlyTopLogP-Q (below: OnlyBottomP-Q / OnlyBottomLogP-Q); the boundary is kept."""
    logprob = terms.logprob.float()
    p = logprob.detach().exp()  # sg(p): thresholds never carry gradient
    kept = p <= q if below else p >= q
    loss = 1.0 - logprob.exp() if kind == "p" else -logprob
    return torch.where(kept, loss, torch.zeros_like(loss)), kept


def profit_loss(terms: TokenTerms, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-log p 1[sg(p) >= T]: ProFit (arXiv 2601.09195), its mask from the current p."""
    logprob = terms.logprob.float()
    kept = logprob.detach().exp() >= tau
    return torch.where(kept, -logprob, torch.zeros_like(logprob)), kept


def qtarget_loss(terms: TokenTerms, gamma: tuple, prior: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-g log p(y) - (1 - g) sum_k pi_k log p(k): cross-entropy to Q = g onehot(y) + (1 - g) pi
    (Target-SFT, arXiv 2606.11189). gamma: ("const", c) | ("p", A) for sg(p)^A | ("threshold", T)
    for 1[sg(p) >= T]; prior: "teacher" | "scorer" (terms.prior_*), "self" or "uniform" (terms.*_ce)."""
    p = terms.logprob.float().detach().exp()  # (N,) sg(p)
    how, value = gamma
    if how == "const":
        g = torch.full_like(p, value)
    elif how == "p":
        g = p.pow(value)
    else:
        g = (p >= value).float()
    if prior == "self":
        prior_ce = terms.self_ce
    elif prior == "uniform":
        prior_ce = terms.uniform_ce
    else:
        prior_ce = -(terms.prior_probs * terms.prior_logprob).sum(dim=-1)  # (N,)
        # a target with no stored prior entry (all -inf): pi = onehot(y), so its Q is onehot too (NLL), not mass g
        prior_ce = torch.where(terms.prior_probs.sum(dim=-1) > 0, prior_ce, -terms.logprob)
    return -g * terms.logprob.float() + (1.0 - g) * prior_ce.float(), _every(p)


# every token-level objective of OBJECTIVES, by name; its params are the keyword arguments
LOSSES: dict[str, LossFn] = {"nll": nll_loss, "p": p_loss, "power": power_loss, "dft": dft_loss,
                             "threshold": threshold_loss, "profit": profit_loss, "qtarget": qtarget_loss}


def token_loss(objective: Objective, terms: TokenTerms) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss (N,) float32 and kept (N,) bool for a token-level objective."""
    loss = LOSSES.get(objective.name)
    if loss is None:
        raise AssertionError(f"{objective.name} is not a token-level objective")
    return loss(terms, **objective.params)


def poft_loss(seq_logprob: torch.Tensor, ref_logprob: torch.Tensor, beta: float,
              gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PoFT (arXiv 2412.12865) per sequence: loss (S,) = -log sigmoid(beta (s - s_ref) + gamma) and
    the implied NLL weight beta sigmoid(beta (s_ref - s) - gamma) (S,), reported as a metric.

    seq_logprob: (S,) mean target log-prob of each sequence under the current model, with gradient
    ref_logprob: (S,) the stored reference mean (ref_mean_logprob), no gradient
    """
    margin = beta * (seq_logprob.float() - ref_logprob.float()) + gamma
    weight = beta * torch.sigmoid(-margin.detach())
    return -F.logsigmoid(margin), weight
