"""Training objectives of the probability-aware SFT papers, as pure functions of per-token terms.

Every objective maps the current model's log-probability of each target, logp (N,) with
gradient, plus optional terms computed in the same lm_head chunk, to a per-token loss (N,) and
a `kept` flag (N,) -- which tokens count as trained, for metrics and the kept-targets normalizer.
Thresholds and weights are stop-gradient (sg) everywhere, as in the sources. The trainer sums
the losses and divides by the normalizer (see `normalize`); these functions never average.

    name            loss per target                                   source
    nll             -log p                                            standard SFT
    p               1 - p                                             Beyond Log Likelihood (BLL) "-p"
    power:A         (1 - p^A) / A            (A -> 0: nll)            BLL GeneralFamily-A; -p^10 is A = 10
    dft             -sg(p) log p             (gradient == p's)        DFT, Wu et al. 2508.05629
    threshold-p:Q   (1 - p) 1[sg(p) >= Q]                             BLL OnlyTopP-Q   ("<=": OnlyBottomP)
    threshold-nll:Q -log p 1[sg(p) >= Q]                              BLL OnlyTopLogP-Q ("<=": OnlyBottomLogP)
    profit:T        -log p 1[sg(p) >= T]     (T = 0.1 by default)      ProFit 2601.09195, online
    qtarget         -g log p(y) - (1 - g) sum_k pi_k log p(k)         Target-SFT 2606.11189: CE to
                    Q = g onehot(y) + (1 - g) pi;  g constant, sg(p), sg(p^A) or 1[sg(p) >= T];
                    pi = a stored sparse top-k (teacher/scorer, renormalized), sg(model), or uniform
    poft            -log sigmoid(beta (s - s_ref) + gamma), s = mean target log p of the sequence
                                                                      PoFT 2412.12865 (per sequence)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tokensft.errors import ConfigError

NORMALIZE = ("all-targets", "kept-targets", "sequences")
PRIORS = ("teacher", "scorer", "self", "uniform")
GRAMMAR = ("nll, p, power:A, dft, threshold-p:Q, threshold-nll:Q, threshold-p<=:Q, threshold-nll<=:Q, profit[:T], "
           "poft[:beta=B,gamma=G], qtarget[:gamma=G|p|p^A|threshold:T,prior=teacher|scorer|self|uniform]")


@dataclass
class TokenTerms:
    """What an objective may use, for N target tokens (computed chunk by chunk by the trainer)."""

    logp: torch.Tensor  # (N,) float32, log p(y) under the current model, with gradient
    prior_logp: torch.Tensor | None = None  # (N, K) log p(k) at the prior's ids, with gradient
    prior_probs: torch.Tensor | None = None  # (N, K) the renormalized prior pi (no gradient; 0 = padding)
    self_ce: torch.Tensor | None = None  # (N,) -sum_v sg(p_v) log p_v (its logit gradient is exactly 0)
    uniform_ce: torch.Tensor | None = None  # (N,) -(1/V) sum_v log p_v, with gradient


@dataclass(frozen=True)
class Objective:
    """A parsed --objective: its name and options, and what it needs from the data and the chunk."""

    name: str
    params: dict = field(default_factory=dict)

    @property
    def default_normalize(self) -> str:
        """What each source does: ProFit/TRL divide by all supervised tokens (counted before
        masking), BLL's thresholded objectives by the kept tokens, PoFT averages sequences."""
        if self.name.startswith("threshold"):
            return "kept-targets"
        return "sequences" if self.name == "poft" else "all-targets"

    @property
    def prior(self) -> str | None:
        return self.params.get("prior") if self.name == "qtarget" else None

    @property
    def sequence_level(self) -> bool:
        return self.name == "poft"


def parse_objective(text: str) -> Objective:
    """Parse an --objective value; a ConfigError names what is wrong and the grammar."""
    raw = text.strip().lower().replace(" ", "")
    name, _, rest = raw.partition(":")
    try:
        if name in ("nll", "p", "dft") and not rest:
            return Objective(name)
        if name == "power":
            a = float(rest)
            if not a > 0:
                raise ValueError("A must be > 0 (A -> 0 is nll)")
            return Objective(name, {"alpha": a})
        if re.fullmatch(r"threshold-(p|nll)(<=)?", name):
            q = _probability(rest)
            return Objective("threshold", {"kind": name.split("-")[1].removesuffix("<="), "q": q,
                                           "below": name.endswith("<=")})
        if name == "profit":
            return Objective(name, {"tau": _probability(rest) if rest else 0.1})
        if name == "poft":
            opts = _options(rest, {"beta": 1.0, "gamma": 0.0})
            return Objective(name, {"beta": float(opts["beta"]), "gamma": float(opts["gamma"])})
        if name == "qtarget":
            opts = _options(rest, {"gamma": "1", "prior": "scorer"})
            if opts["prior"] not in PRIORS:
                raise ValueError(f"prior {opts['prior']!r} is not one of {', '.join(PRIORS)}")
            return Objective(name, {"gamma": _gamma(opts["gamma"]), "prior": opts["prior"]})
    except ValueError as exc:
        raise ConfigError(f"--objective {text!r}: {exc}; use {GRAMMAR}") from None
    raise ConfigError(f"--objective {text!r}: unknown objective; use {GRAMMAR}")


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{text} is outside [0, 1]")
    return value


def _options(text: str, defaults: dict) -> dict:
    out = dict(defaults)
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise ValueError(f"unknown option {item!r} (options: {', '.join(defaults)})")
        out[key] = value
    return out


def _gamma(text: str) -> tuple:
    """("const", c) | ("p", 1.0) | ("p", A) for p^A | ("threshold", T)."""
    if text == "p":
        return ("p", 1.0)
    if text.startswith("p^"):
        return ("p", float(text[2:]))
    if text.startswith("threshold:"):
        return ("threshold", _probability(text[len("threshold:"):]))
    return ("const", _probability(text))


def token_loss(objective: Objective, terms: TokenTerms) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss (N,) float32 and kept (N,) bool for a token-level objective."""
    logp = terms.logp.float()
    p = logp.detach().exp()  # sg(p): thresholds and weights never carry gradient
    everything = torch.ones_like(logp, dtype=torch.bool)
    name, o = objective.name, objective.params
    if name == "nll":
        return -logp, everything
    if name == "p":
        return 1.0 - logp.exp(), everything
    if name == "power":
        return -torch.expm1(o["alpha"] * logp) / o["alpha"], everything  # expm1: exact as A -> 0
    if name == "dft":
        return -p * logp, everything
    if name == "threshold":
        kept = p <= o["q"] if o["below"] else p >= o["q"]
        loss = 1.0 - logp.exp() if o["kind"] == "p" else -logp
        return torch.where(kept, loss, torch.zeros_like(loss)), kept
    if name == "profit":
        kept = p >= o["tau"]
        return torch.where(kept, -logp, torch.zeros_like(logp)), kept
    if name == "qtarget":
        return qtarget_loss(o["gamma"], o["prior"], terms, p), everything
    raise AssertionError(f"{name} is not a token-level objective")


def qtarget_loss(gamma: tuple, prior: str, terms: TokenTerms, p: torch.Tensor) -> torch.Tensor:
    """-g log p(y) - (1 - g) sum_k pi_k log p(k): cross-entropy to Q = g onehot(y) + (1 - g) pi."""
    kind, value = gamma
    if kind == "const":
        g = torch.full_like(p, value)
    elif kind == "p":
        g = p.pow(value)
    else:
        g = (p >= value).float()
    if prior == "self":
        prior_ce = terms.self_ce
    elif prior == "uniform":
        prior_ce = terms.uniform_ce
    else:
        prior_ce = -(terms.prior_probs * terms.prior_logp).sum(dim=-1)  # (N,)
        # a target with no stored prior entry (all -inf): pi = onehot(y), so its Q is onehot too (NLL), not mass g
        prior_ce = torch.where(terms.prior_probs.sum(dim=-1) > 0, prior_ce, -terms.logp)
    return -g * terms.logp.float() + (1.0 - g) * prior_ce.float()


def poft_loss(seq_logp: torch.Tensor, ref_logp: torch.Tensor, beta: float, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PoFT per sequence: loss (S,) = -log sigmoid(beta (s - s_ref) + gamma) and the implied
    NLL weight beta sigmoid(beta (s_ref - s) - gamma) (S,), reported as a metric.

    seq_logp: (S,) mean target log-prob of each sequence under the current model, with gradient
    ref_logp: (S,) the stored reference mean (ref_mean_logprob), no gradient
    """
    margin = beta * (seq_logp.float() - ref_logp.float()) + gamma
    weight = beta * torch.sigmoid(-margin.detach())
    return -F.logsigmoid(margin), weight


def needs_full_row(objective: Objective) -> bool:
    """Whether the chunk must compute a term over the whole vocabulary row (self/uniform priors)."""
    return objective.prior in ("self", "uniform")

