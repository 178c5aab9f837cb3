"""The objectives of the probability-aware SFT papers: one catalogue, the --objective parser, the help.

    OBJECTIVES["threshold"].online_kept      # facts about each kind of objective, in one table
    objective = parse_objective("threshold-nll:0.2")
    objective.default_normalize              # "kept-targets"; .online_kept, .sequence_level, .prior
    print(objectives_help())                 # the `tokensft train --help` epilog, built from OBJECTIVES

No torch here: the CLI builds the help of every command from this module. The tensor math of each
objective is in `tokensft.train.losses`, keyed by the same names.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from typing import Callable

from tokensft.core.errors import ConfigError

# --normalize: what each divides the summed loss by (the kept count of an online threshold is
# known only after the forward; see tokensft.train.loss)
NORMALIZE_HELP = {
    "all-targets": "divide by every supervised token of the global batch (across accumulation and processes, "
                   "counted before masking: ProFit, TRL); the default with --weight too: each token's loss is w * loss, so a "
                   "weight scales its share of ordinary SFT and the learning rate means what it does unweighted "
                   "(--weight prob^1 with nll on the scorer is DFT at step 0)",
    "kept-targets": "divide by the kept ones (Beyond Log Likelihood); with --weight still a count of tokens",
    "sequences": "mean over sequences of their mean token loss (PoFT)",
    "weight-sum": "with --weight: divide by the sum of |w| over the targets the stored --mask keeps (all targets "
                  "without one; online thresholds do not change it), over the global batch: the mean weight "
                  "becomes 1 (TRL's weighted-SFT proposals); poft: the sum of |w_seq|",
}
NORMALIZE = tuple(NORMALIZE_HELP)
PRIORS = ("teacher", "scorer", "self", "uniform")


@dataclass(frozen=True)
class ObjectiveKind:
    """One kind of objective: how it is typed, what it computes, where it comes from, how it normalizes.

    name:              Objective.name, the key of OBJECTIVES and of tokensft.train.losses.LOSSES
    usage:             the --objective spec as typed (letters are values, [...] is optional)
    formula:           the loss per target token (or per sequence), short
    source:            paper and code it follows
    default_normalize: the --normalize its source uses (one of NORMALIZE)
    online_kept:       which targets count as kept depends on the current p, so their count is
                       known only after the forward pass
    sequence_level:    a loss per sequence (PoFT), not per token
    options:           what the values of `usage` mean, and their defaults
    spelled:           regex of the name as typed before any ":" (default: `name`)
    parse:             (name as typed, text after ":") -> params; None: takes no options
    """

    name: str
    usage: str
    formula: str
    source: str
    default_normalize: str = "all-targets"
    online_kept: bool = False
    sequence_level: bool = False
    options: str = ""
    spelled: str = ""
    parse: Callable[[str, str], dict] | None = None

    def matches(self, typed: str) -> bool:
        return re.fullmatch(self.spelled or re.escape(self.name), typed) is not None


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


def _power(_: str, rest: str) -> dict:
    a = float(rest)
    if not a > 0:
        raise ValueError("A must be > 0 (A -> 0 is nll)")
    return {"alpha": a}


def _threshold(typed: str, rest: str) -> dict:
    return {"kind": typed.split("-")[1].removesuffix("<="), "q": _probability(rest), "below": typed.endswith("<=")}


def _profit(_: str, rest: str) -> dict:
    return {"tau": _probability(rest) if rest else 0.1}


def _poft(_: str, rest: str) -> dict:
    opts = _options(rest, {"beta": 1.0, "gamma": 0.0})
    return {"beta": float(opts["beta"]), "gamma": float(opts["gamma"])}


def _qtarget(_: str, rest: str) -> dict:
    opts = _options(rest, {"gamma": "1", "prior": "scorer"})
    if opts["prior"] not in PRIORS:
        raise ValueError(f"prior {opts['prior']!r} is not one of {', '.join(PRIORS)}")
    return {"gamma": _gamma(opts["gamma"]), "prior": opts["prior"]}


BLL = "Beyond Log Likelihood, arXiv 2510.00526 (code: GaotangLi/Beyond-Log-Likelihood)"
OBJECTIVES: dict[str, ObjectiveKind] = {kind.name: kind for kind in (
    ObjectiveKind("nll", "nll", "-log p", "standard SFT"),
    ObjectiveKind("p", "p", "1 - p   (gradient == dft's)", f'"-p" of {BLL}'),
    ObjectiveKind("power", "power:A", "(1 - p^A) / A   (A -> 0: nll; power:10 is -p^10)", f"GeneralFamily-A of {BLL}",
                  options="A > 0", parse=_power),
    ObjectiveKind("dft", "dft", "-sg(p) log p", "DFT, Wu et al., arXiv 2508.05629 (TRL loss_type='dft')"),
    ObjectiveKind("threshold", "threshold-p:Q, threshold-nll:Q, threshold-p<=:Q, threshold-nll<=:Q",
                  "1 - p (threshold-p) or -log p (threshold-nll) on targets whose current p >= Q (<=: p <= Q)",
                  f"OnlyTopP-Q, OnlyTopLogP-Q (<=: OnlyBottomP-Q, OnlyBottomLogP-Q) of {BLL}",
                  default_normalize="kept-targets", online_kept=True, options="Q in [0, 1], inclusive",
                  spelled=r"threshold-(p|nll)(<=)?", parse=_threshold),
    ObjectiveKind("profit", "profit[:T]", "-log p on targets whose current p >= T, online",
                  "ProFit, arXiv 2601.09195 (code: Utaotao/ProFit)", online_kept=True, options="T in [0, 1], default 0.1",
                  parse=_profit),
    ObjectiveKind("poft", "poft[:beta=B,gamma=G]",
                  "-log sigmoid(B (s - s_ref) + G), s = mean target log p of the sequence, s_ref stored (--ref)",
                  "PoFT, arXiv 2412.12865 (code: Savannah120/alignment-handbook-PoFT)", default_normalize="sequences",
                  sequence_level=True, options="B = 1, G = 0 by default", parse=_poft),
    ObjectiveKind("qtarget", "qtarget[:gamma=G|p|p^A|threshold:T,prior=teacher|scorer|self|uniform]",
                  "-G log p(y) - (1 - G) sum_k prior_k log p(k): CE to Q = G onehot(y) + (1 - G) prior",
                  "Target-SFT, arXiv 2606.11189 (its general family of gamma and prior)",
                  options="G = a constant (default 1), sg(p), sg(p^A) or 1[sg(p) >= T]; prior = teacher | scorer "
                          "(a stored top-k, renormalized; default scorer) | self (sg model) | uniform",
                  parse=_qtarget),
)}
GRAMMAR = ", ".join(kind.usage for kind in OBJECTIVES.values())


@dataclass(frozen=True)
class Objective:
    """A parsed --objective: its name and options; the rest comes from its ObjectiveKind."""

    name: str
    params: dict = field(default_factory=dict)

    @property
    def kind(self) -> ObjectiveKind:
        return OBJECTIVES[self.name]

    @property
    def default_normalize(self) -> str:
        """What each source does: ProFit/TRL divide by all supervised tokens (counted before
        masking), BLL's thresholded objectives by the kept tokens, PoFT averages sequences."""
        return self.kind.default_normalize

    @property
    def online_kept(self) -> bool:
        """Whether the kept targets depend on the current p (known only after the forward)."""
        return self.kind.online_kept

    @property
    def sequence_level(self) -> bool:
        return self.kind.sequence_level

    @property
    def prior(self) -> str | None:
        return self.params.get("prior") if self.name == "qtarget" else None


def parse_objective(text: str) -> Objective:
    """Parse an --objective value; a ConfigError names what is wrong and the grammar."""
    raw = text.strip().lower().replace(" ", "")
    typed, _, rest = raw.partition(":")
    kind = next((k for k in OBJECTIVES.values() if k.matches(typed)), None)
    if kind is not None and (kind.parse is not None or not rest):
        try:
            return Objective(kind.name, kind.parse(typed, rest) if kind.parse else {})
        except ValueError as exc:
            raise ConfigError(f"--objective {text!r}: {exc}; use {GRAMMAR}") from None
    raise ConfigError(f"--objective {text!r}: unknown objective; use {GRAMMAR}")


def objectives_help(width: int = 110) -> str:
    """The epilog of `tokensft train --help`: each objective's usage, formula, default --normalize,
    options and source, then --mask and the --normalize choices (plain text, pre-wrapped)."""
    column = 28
    indent = " " * column

    def block(head: str, text: str) -> list[str]:
        """head in the first column, text wrapped beside it (below it when head is too wide)."""
        lines = [f"  {head}"] if len(head) > column - 3 else []
        first = indent if lines else f"  {head:<{column - 2}}"
        return lines + textwrap.wrap(text, width, initial_indent=first, subsequent_indent=indent,
                                     break_on_hyphens=False)

    lines = ["objectives (default --normalize in brackets):"]
    for kind in OBJECTIVES.values():
        lines += block(kind.usage, f"{kind.formula}  [{kind.default_normalize}]")
        if kind.options:
            lines += block("", kind.options)
        lines += block("", f"from: {kind.source}")
    lines += block("--mask SPEC", "any objective restricted to a stored mask (tokensft enrich --mask), "
                                  "e.g. --objective nll --mask 'prob>=0.1'")
    lines += block("--weight NAME", "any objective times a stored per-token weight, loss_t = w_t * loss_t: the "
                                    "data's `weight`, or a weight_<name> or its spec (tokensft enrich --weight), "
                                    "e.g. --objective nll --weight 'prob^1'; poft: each sequence's loss times the "
                                    "mean weight of its targets. Negative weights need --allow-negative-weights")
    lines.append("normalize:")
    for name, text in NORMALIZE_HELP.items():
        lines += block(name, text)
    return "\n".join(lines)
