"""Loss weights computed from stored columns: what `tokensft enrich --weight SPEC` writes.

    spec = parse_weight("prob^1,clip:0.05:1")                # a term, then modifiers, left to right
    spec.column                                              # "weight_prob_pow_1__clip_0.05_1"
    values = weight_values(spec, flat, offsets, target)      # (N,) float32 over a shard's flat tokens
    weight_column_for("prob^1") == weight_column_for("weight_prob_pow_1")   # what train --weight reads

Terms (p⁰ = exp(logprob), the scorer's stored probability; see ../shared/PAPERS.md §1 and §6):
    prob^A              sg(p⁰)^A: DFT's weight at step 0 (A = 1), and the gradient weight of the
                        power family -p^α (A = α, by the identity ∇(1 - p^α)/α = ∇[sg(p^α)·(-log p)])
    excess              Rho-1's excess loss (-log p⁰) - (-log p_ref) = teacher_logprob - logprob.
                        The scorer plays Rho-1's model in training (its loss at step 0), the teacher
                        (`enrich --teacher REF`, same tokenizer) the reference trained on good data:
                        high where the reference finds a token much easier than the model does.
                        It can be negative: clip it (`excess,clip:0:5`) or train with
                        --allow-negative-weights
    product:A*B[*C]     the product of stored weights and masks, each named by column (`weight`, the
                        data's; weight_<name>; mask_<name>) or by a mask/weight spec already stored
Modifiers, after commas, applied in order:
    clip:LO:HI          clamp to [LO, HI]
    normalize:sequence  scale each sequence's weights to mean 1 over its targets (a sequence of
                        zeros keeps zeros; negative weights are refused: clip first)
Values are NaN where labels = -100 and finite at every target. No Python loop per token.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from tokensft.core.errors import ConfigError
from tokensft.core.masks import _num as number_text, parse_mask
from tokensft.core.schema import (LOGPROB_COLUMNS, MASK_PREFIX, WEIGHT, WEIGHT_PREFIX, is_mask_column, weight_column)

GRAMMAR = ("a term prob^A, excess or product:A*B, optionally followed by modifiers ,clip:LO:HI and "
           ",normalize:sequence (e.g. prob^1,clip:0.05:1)")
_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_PROB = re.compile(rf"^prob\^{_NUMBER}$")
_CLIP = re.compile(rf"^clip:{_NUMBER}:{_NUMBER}$")
_NAME_PROB = re.compile(rf"^prob_pow_{_NUMBER}$")
_NAME_CLIP = re.compile(rf"^clip_{_NUMBER}_{_NUMBER}$")
NORMALIZE_SEQUENCE = "normalize:sequence"


@dataclass(frozen=True)
class WeightSpec:
    term: str  # "prob" | "excess" | "product"
    power: float = 1.0  # prob^A's A
    factors: tuple[str, ...] = ()  # product's columns, in the order given
    modifiers: tuple[tuple, ...] = ()  # ("clip", lo, hi) | ("normalize-sequence",)

    @property
    def spec(self) -> str:
        """The canonical spec string: "prob^1,clip:0.05:1", "product:weight*mask_prob_ge_0.1"."""
        head = {"prob": lambda: f"prob^{number_text(self.power)}", "excess": lambda: "excess",
                "product": lambda: "product:" + "*".join(self.factors)}[self.term]()
        return ",".join([head, *(_modifier_spec(m) for m in self.modifiers)])

    @property
    def name(self) -> str:
        """The canonical name, a plain identifier: "prob_pow_1__clip_0.05_1"."""
        head = {"prob": lambda: f"prob_pow_{number_text(self.power)}", "excess": lambda: "excess",
                # a factor's own modifiers ("__") become "~", so the product's modifiers stay its own:
                # product:weight*weight_a__clip_0_1 and product:weight*weight_a,clip:0:1 differ
                "product": lambda: "product_" + "_x_".join(f.replace("__", "~") for f in self.factors)}[self.term]()
        return "__".join([head, *(_modifier_name(m) for m in self.modifiers)])

    @property
    def column(self) -> str:
        return weight_column(self.name)

    @property
    def reads(self) -> tuple[str, ...]:
        """The stored columns the weight is computed from."""
        if self.term == "prob":
            return (LOGPROB_COLUMNS["scorer"],)
        if self.term == "excess":
            return LOGPROB_COLUMNS["scorer"], LOGPROB_COLUMNS["teacher"]
        return self.factors


def _modifier_spec(m: tuple) -> str:
    return f"clip:{number_text(m[1])}:{number_text(m[2])}" if m[0] == "clip" else NORMALIZE_SEQUENCE


def _modifier_name(m: tuple) -> str:
    return f"clip_{number_text(m[1])}_{number_text(m[2])}" if m[0] == "clip" else "norm_seq"


def parse_weight(text: str) -> WeightSpec:
    """Parse an `enrich --weight` value (a spec, or a stored weight's canonical name or column)."""
    raw = text.strip().replace(" ", "")
    if raw.startswith(WEIGHT_PREFIX) or not any(c in raw for c in ":^,"):  # a name: no spec punctuation
        return _from_name(text, raw.removeprefix(WEIGHT_PREFIX))
    head, *mods = raw.split(",")
    return WeightSpec(*_term(text, head), modifiers=tuple(_modifier(text, m) for m in mods))


def _term(text: str, head: str) -> tuple:
    if match := _PROB.match(head):
        power = float(match.group(1)) + 0.0
        if not (math.isfinite(power) and power >= 0):
            raise ConfigError(f"--weight {text!r}: the power {number_text(power)} must be >= 0 (p^-A grows without bound)")
        return "prob", power, ()
    if head == "excess":
        return "excess", 1.0, ()
    if head.startswith("product:"):
        operands = head[len("product:"):].split("*")
        if len(operands) < 2 or not all(operands):
            raise ConfigError(f"--weight {text!r}: a product needs two or more factors, e.g. product:weight*prob^1 "
                              "(a factor with modifiers goes by its column, e.g. weight_prob_pow_1__clip_0.05_1: "
                              "commas start modifiers)")
        return "product", 1.0, tuple(factor_column(text, o) for o in operands)
    raise ConfigError(f"--weight {text!r}: not a weight spec; use {GRAMMAR}")


def _modifier(text: str, raw: str) -> tuple:
    if match := _CLIP.match(raw):
        lo, hi = (float(g) + 0.0 for g in match.groups())
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ConfigError(f"--weight {text!r}: clip:{raw[5:]} needs finite LO <= HI")
        return "clip", lo, hi
    if raw == NORMALIZE_SEQUENCE:
        return ("normalize-sequence",)
    raise ConfigError(f"--weight {text!r}: {raw!r} is not a modifier; use clip:LO:HI or {NORMALIZE_SEQUENCE}")


def _from_name(text: str, name: str) -> WeightSpec:
    """The inverse of WeightSpec.name (products cannot be read back from a name: give their spec)."""
    head, *mods = name.split("__")
    modifiers = []
    for m in mods:
        if m == "norm_seq":
            modifiers.append(("normalize-sequence",))
        elif match := _NAME_CLIP.match(m):
            modifiers.append(_modifier(text, f"clip:{match.group(1)}:{match.group(2)}"))
        else:
            raise ConfigError(f"--weight {text!r}: not a weight name or spec; use {GRAMMAR}")
    if match := _NAME_PROB.match(head):
        term = _term(text, f"prob^{match.group(1)}")
    elif head == "excess":
        term = _term(text, "excess")
    else:
        raise ConfigError(f"--weight {text!r}: not a weight name or spec; use {GRAMMAR}")
    return WeightSpec(*term, modifiers=tuple(modifiers))


def factor_column(text: str, operand: str) -> str:
    """The column a product factor names: `weight`, weight_<name>, mask_<name>, or a mask/weight spec."""
    if operand == WEIGHT or operand.startswith((WEIGHT_PREFIX, MASK_PREFIX)):
        return operand
    try:
        return parse_mask(operand).column
    except ConfigError:
        pass
    try:
        return parse_weight(operand).column
    except ConfigError:
        raise ConfigError(f"--weight {text!r}: factor {operand!r} names no weight or mask; give a column (weight, "
                          "weight_<name>, mask_<name>) or a mask/weight spec") from None


def weight_column_for(text: str) -> str:
    """The column `tokensft train --weight TEXT` reads: `weight`, a weight_<name>, or a spec's column."""
    raw = text.strip()
    if raw == WEIGHT or raw.startswith(WEIGHT_PREFIX):
        return raw
    return parse_weight(raw).column


def weight_values(spec: WeightSpec, flat: dict, offsets: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The weight over a shard's flat tokens.

    flat:    {column: (N,) array} holding every column of `spec.reads` (log-probs NaN at non-targets,
             masks 0/1, weights NaN at non-targets)
    offsets: (R + 1,) int64, row r owns tokens [offsets[r], offsets[r + 1])
    target:  (N,) bool, labels != -100
    Returns (N,) float32: NaN at non-targets. Raises ConfigError when a target's weight is not finite.
    """
    if spec.term == "prob":
        values = np.exp(spec.power * flat[LOGPROB_COLUMNS["scorer"]].astype(np.float64))  # p^A, exact in float64
    elif spec.term == "excess":
        values = (flat[LOGPROB_COLUMNS["teacher"]].astype(np.float64) - flat[LOGPROB_COLUMNS["scorer"]].astype(np.float64))
    else:
        values = np.ones(len(target), dtype=np.float64)
        for column in spec.factors:
            factor = flat[column].astype(np.float64)
            values *= np.where(target, factor, 1.0) if is_mask_column(column) else factor
    values = np.where(target, values, np.nan)  # (N,)
    for modifier in spec.modifiers:
        if modifier[0] == "clip":
            values = np.clip(values, modifier[1], modifier[2])  # NaN stays NaN
        else:
            values = _normalize_sequence(spec, values, offsets, target)
    out = values.astype(np.float32)
    bad = target & ~np.isfinite(out)
    if bad.any():
        raise ConfigError(f"--weight {spec.spec!r}: {int(bad.sum())} targets get a weight that is not finite (a "
                          "stored log-prob of -inf, or a factor missing at a target); clip it or check the columns")
    return out


def _normalize_sequence(spec: WeightSpec, values: np.ndarray, offsets: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Each row's weights divided by their mean over its targets (rows of zeros stay zeros).
    Negative weights are refused: a mixed-sign row's mean can be ~0 and blow its weights up."""
    rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))  # (N,) row of each token
    at = np.where(target, values, 0.0)
    if (at < 0).any():
        raise ConfigError(f"--weight {spec.spec!r}: normalize:sequence needs non-negative weights; "
                          f"{int((at < 0).sum())} targets have negative ones (clip first, e.g. ,clip:0:5)")
    sums = np.bincount(rows, weights=at, minlength=len(offsets) - 1)  # (R,)
    counts = np.bincount(rows, weights=target.astype(np.float64), minlength=len(offsets) - 1)  # (R,)
    scale = np.divide(counts, sums, out=np.ones_like(sums), where=sums > 0)  # (R,) 1 / mean
    return values * scale[rows]
