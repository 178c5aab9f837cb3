"""Token masks from stored probabilities: which targets a training run keeps (ProFit and friends).

    spec = parse_mask("prob>=0.1")                     # ProFit's default: keep p >= 0.1
    spec.column                                        # "mask_prob_ge_0.1"
    values = mask_values(spec, logprob, offsets, ids)  # (N,) int8 over a shard's flat tokens

Specs (p = exp(logprob) of a target under the scorer, or under the teacher with a `teacher:` prefix;
thresholds are compared in log space at the stored float32 precision, so p == T means equal to it):
    prob>=T              keep p >= T (p == T is kept)       ProFit, T = 0.1; thresholded -log p, T = 0.2
    prob<=T              keep p <= T                        ablation: only the hard tokens
    prob-between:A:B     keep A <= p <= B                   ablation: a probability band
    top-frac:F           per sequence, keep the k = ceil(F * n) most probable of its n targets;
                         ties go to the earlier position, so exactly k are kept (F > 0 keeps >= 1)
    quantile>=Q          keep p >= t, t = the dataset-wide Q-quantile of target probabilities,
                         computed exactly: t is the order statistic at index floor(Q * (N - 1)) of
                         the N target probabilities sorted ascending (so about 1 - Q is kept)
    random:F:SEED        drop each target with probability F, independently, from a hash of
                         (SEED, example id, position): the same mask whatever the sharding or order
    excess-top-frac:F    Rho-1 / token cleaning: per sequence, the ceil(F * n) targets of largest
                         excess loss (-log p) - (-log p_ref) = teacher_logprob - logprob, the
                         scorer being the model to train and the teacher the reference trained on
                         good data (`enrich --teacher REF`); ties to the earlier position
    excess-quantile>=Q   keep excess >= the dataset-wide Q-quantile of excess (exact, as quantile>=)
A mask is 1 on kept targets and 0 everywhere else (always 0 where labels == -100). All the math is
vectorized over a shard's flat arrays: no Python loop per token.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from tokensft.core.errors import ConfigError
from tokensft.core.schema import LOGPROB_COLUMNS, MASK_PREFIX, TEACHER_PREFIX, mask_column
MAX_SEED = 2**53  # seeds are stored with the float params: exact below 2^53
GRAMMAR = ("prob>=T, prob<=T, prob-between:A:B, top-frac:F, quantile>=Q or random:F:SEED (optionally teacher:...), "
           "excess-top-frac:F or excess-quantile>=Q")
EXCESS = "excess"  # a mask source: teacher_logprob - logprob (Rho-1's excess loss), not a stored column
EXCESS_RULES = ("top-frac", "quantile>=")  # the rules that read an excess loss (thresholds on p do not apply)
_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_PATTERNS = {
    "prob>=": re.compile(rf"^prob>={_NUMBER}$"),
    "prob<=": re.compile(rf"^prob<={_NUMBER}$"),
    "prob-between": re.compile(rf"^prob-between:{_NUMBER}:{_NUMBER}$"),
    "top-frac": re.compile(rf"^top-frac:{_NUMBER}$"),
    "quantile>=": re.compile(rf"^quantile>={_NUMBER}$"),
    "random": re.compile(rf"^random:{_NUMBER}:([0-9]+)$"),
}
_NAME_PREFIX = {"prob>=": "prob_ge", "prob<=": "prob_le", "prob-between": "prob_between",
                "top-frac": "top_frac", "quantile>=": "quantile_ge", "random": "random"}


def _num(x: float) -> str:
    """Shortest round-tripping positional form: 0.1 -> "0.1", 1.0 -> "1", 1e-05 -> "0.00001"."""
    return np.format_float_positional(float(x), trim="-")


@dataclass(frozen=True)
class MaskSpec:
    rule: str  # a key of _PATTERNS
    params: tuple[float, ...]  # thresholds / fractions; for random, (F, SEED)
    source: str = "scorer"  # "scorer" (logprob), "teacher" (teacher_logprob) or "excess" (their difference)

    @property
    def spec(self) -> str:
        """The canonical spec string, e.g. "prob>=0.1", "teacher:top-frac:0.5"."""
        p = self.params
        body = {
            "prob>=": lambda: f"prob>={_num(p[0])}", "prob<=": lambda: f"prob<={_num(p[0])}",
            "prob-between": lambda: f"prob-between:{_num(p[0])}:{_num(p[1])}",
            "top-frac": lambda: f"top-frac:{_num(p[0])}", "quantile>=": lambda: f"quantile>={_num(p[0])}",
            "random": lambda: f"random:{_num(p[0])}:{int(p[1])}",
        }[self.rule]()
        if self.source == EXCESS:
            return f"excess-{body}"
        return body if self.source == "scorer" else f"{self.source}:{body}"

    @property
    def name(self) -> str:
        """The canonical name, a plain identifier: "prob_ge_0.1", "random_0.3_seed42"."""
        parts = [_NAME_PREFIX[self.rule], *(_num(x) for x in self.params)]
        if self.rule == "random":
            parts[-1] = f"seed{int(self.params[1])}"
        name = "_".join(parts)
        return name if self.source == "scorer" else f"{self.source}_{name}"

    @property
    def column(self) -> str:
        return mask_column(self.name)

    @property
    def logprob_column(self) -> str:
        """The stored column the rule reads; for an excess mask, the teacher's (its scorer side is logprob)."""
        return LOGPROB_COLUMNS["teacher" if self.source == EXCESS else self.source]

    @property
    def reads(self) -> tuple[str, ...]:
        """Every stored column the mask is computed from."""
        if self.source == EXCESS:
            return LOGPROB_COLUMNS["scorer"], LOGPROB_COLUMNS["teacher"]
        return (self.logprob_column,)


def source_values(spec: MaskSpec, flat: dict) -> np.ndarray:
    """(N,) float32 the rule ranks or thresholds: the source's log-probs, or for an excess mask the
    excess loss teacher_logprob - logprob. flat: {column: (N,) float array} holding `spec.reads`;
    NaN at non-targets either way."""
    if spec.source == EXCESS:
        scorer, teacher = (np.asarray(flat[c], dtype=np.float32) for c in spec.reads)
        return teacher - scorer
    return np.asarray(flat[spec.logprob_column], dtype=np.float32)


def parse_mask(text: str) -> MaskSpec:
    """Parse a --mask value (a spec, or a stored mask's canonical name/column) into a MaskSpec."""
    raw = text.strip().replace(" ", "")
    source = "scorer"
    if raw.startswith("teacher:"):
        source, raw = "teacher", raw[len("teacher:"):]
    elif raw.startswith("excess-"):
        source, raw = EXCESS, raw[len("excess-"):]
    for rule, pattern in _PATTERNS.items():
        match = pattern.match(raw)
        if match:
            params = tuple(float(g) + 0.0 for g in match.groups())  # + 0.0: -0 becomes 0
            _check_params(text, rule, params)
            _check_source(text, rule, source)
            return MaskSpec(rule, params, source)
    by_name = _from_name(raw.removeprefix(MASK_PREFIX), source, text)
    if by_name is not None:
        return by_name
    raise ConfigError(f"--mask {text!r}: not a mask spec; use {GRAMMAR}")


def _from_name(name: str, source: str, text: str) -> MaskSpec | None:
    """The inverse of MaskSpec.name, so `--mask prob_ge_0.1` names the same stored mask."""
    if name.startswith(TEACHER_PREFIX):
        source, name = "teacher", name[len(TEACHER_PREFIX):]
    elif name.startswith(EXCESS + "_"):
        source, name = EXCESS, name[len(EXCESS) + 1:]
    for rule, prefix in _NAME_PREFIX.items():
        if name.startswith(prefix + "_"):
            rest = name[len(prefix) + 1:].split("_")
            try:
                if rule == "random" and len(rest) == 2 and rest[1].startswith("seed"):
                    params = (float(rest[0]), float(int(rest[1][4:])))
                else:
                    params = tuple(float(x) + 0.0 for x in rest)
            except ValueError:
                return None
            if len(params) == (2 if rule in ("prob-between", "random") else 1):
                _check_params(text, rule, params)
                _check_source(text, rule, source)
                return MaskSpec(rule, params, source)
    return None


def _check_source(text: str, rule: str, source: str) -> None:
    if source == EXCESS and rule not in EXCESS_RULES:
        raise ConfigError(f"--mask {text!r}: an excess loss is not a probability; use excess-top-frac:F or "
                          "excess-quantile>=Q")


def _check_params(text: str, rule: str, params: tuple[float, ...]) -> None:
    values = params[:1] if rule == "random" else params
    for value in values:
        if not 0.0 <= value <= 1.0 or math.isnan(value):
            raise ConfigError(f"--mask {text!r}: {_num(value)} is outside [0, 1] (thresholds and fractions are probabilities)")
    if rule == "random" and not (0 <= params[1] < MAX_SEED and params[1] == int(params[1])):
        raise ConfigError(f"--mask {text!r}: the seed must be a whole number in [0, 2^53)")
    if rule == "prob-between" and params[0] > params[1]:
        raise ConfigError(f"--mask {text!r}: the lower bound {_num(params[0])} exceeds the upper {_num(params[1])}")


def quantile_threshold(target_logprobs: np.ndarray, q: float) -> float:
    """The exact Q-quantile (lower order statistic) of target log-probs: index floor(Q * (N - 1)).

    Log is monotone, so this is log of the probability quantile; comparing log-probs to it keeps
    exactly the targets whose probability is >= the quantile. NaN when there are no targets.
    """
    n = len(target_logprobs)
    if n == 0:
        return math.nan
    k = math.floor(_exact(q) * (n - 1))  # exact: float q * (n - 1) can round 3 down to 2.9999999
    return float(np.partition(target_logprobs.astype(np.float32, copy=False), k)[k])


def _exact(x: float) -> Fraction:
    """The decimal the user wrote: 0.6 is 3/5, not the float just below it."""
    return Fraction(repr(float(x)))


def _ceil_fraction(fraction: float, counts: np.ndarray) -> np.ndarray:
    """ceil(fraction * n) for each n, in exact rational arithmetic (one Python op per distinct n)."""
    f = _exact(fraction)
    values, inverse = np.unique(counts, return_inverse=True)
    k = np.array([math.ceil(f * int(n)) for n in values], dtype=np.int64)
    return k[inverse].reshape(counts.shape)


def id_hashes(ids: list[str]) -> np.ndarray:
    """(R,) uint64: a stable 64-bit hash per example id (one Python call per row, not per token)."""
    return np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") for i in ids],
                    dtype=np.uint64)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, a bijective mix of uint64 (arithmetic wraps mod 2^64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform_hash(seed: int, row_hash: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(N,) float64 in [0, 1): a uniform per (seed, example, position), reproducible anywhere."""
    with np.errstate(over="ignore"):
        x = row_hash ^ _splitmix64(np.full(len(row_hash), seed, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        x = _splitmix64(x + positions.astype(np.uint64) * np.uint64(0xD1B54A32D192ED03))
        x = _splitmix64(x)
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def mask_values(
    spec: MaskSpec, logprob: np.ndarray, offsets: np.ndarray, ids: list[str], threshold: float | None = None,
) -> np.ndarray:
    """The mask over a shard's flat tokens.

    logprob: (N,) float32, the source column flattened; NaN marks non-targets (where labels = -100).
    offsets: (R + 1,) int64, row r owns logprob[offsets[r]:offsets[r + 1]].
    ids:     R example ids (random masks hash them).
    threshold: for quantile>=, the dataset-wide log-prob threshold (see quantile_threshold).
    Returns (N,) int8, 1 = keep.
    """
    target = ~np.isnan(logprob)  # (N,)
    rule, p = spec.rule, spec.params
    if rule == "prob>=":
        keep = logprob >= log_threshold(p[0])  # NaN at non-targets compares False
    elif rule == "prob<=":
        keep = logprob <= log_threshold(p[0])
    elif rule == "prob-between":
        keep = (logprob >= log_threshold(p[0])) & (logprob <= log_threshold(p[1]))
    elif rule == "quantile>=":
        assert threshold is not None, "quantile masks need the dataset-wide threshold"
        keep = logprob >= np.float32(threshold)  # NaN threshold (no targets): keeps nothing
    elif rule == "top-frac":
        keep = _top_fraction(logprob, target, offsets, p[0])
    elif rule == "random":
        rows = np.repeat(np.arange(len(ids)), np.diff(offsets))  # (N,) row of each token
        positions = np.arange(len(logprob)) - offsets[rows]  # (N,) position within its row
        keep = uniform_hash(int(p[1]), id_hashes(ids)[rows], positions) >= p[0]
    else:
        raise AssertionError(rule)
    return (keep & target).astype(np.int8)


def log_threshold(prob: float) -> np.float32:
    """log(prob) at the stored float32 precision of the log-probs (-inf for prob 0).

    Comparing log-probs to it, rather than exp(logprob) to prob, keeps a token whose p equals the
    threshold however the caller computed that p: exp implementations (numpy's SIMD loops,
    math.exp, torch) disagree in the last bit, but all round back to the same float32 log-prob.
    """
    return np.float32(math.log(prob)) if prob > 0 else np.float32(-np.inf)


def _top_fraction(logprob: np.ndarray, target: np.ndarray, offsets: np.ndarray, fraction: float) -> np.ndarray:
    """Per row, the ceil(fraction * n) most probable targets; ties to the earlier position.

    One stable argsort of a uint64 key: the row in the high 32 bits, -logprob's float32 bits mapped
    to an order-preserving unsigned form in the low 32 (4-7x faster than a three-key lexsort)."""
    idx = np.flatnonzero(target)  # (n,) flat positions of targets, ascending
    rows = np.searchsorted(offsets, idx, side="right") - 1  # (n,) row of each target, ascending
    n_per_row = np.bincount(rows, minlength=len(offsets) - 1)  # (R,)
    k_per_row = _ceil_fraction(fraction, n_per_row)  # (R,) exact: 0.6 * 10 is 6, not 7
    bits = (np.float32(0.0) - logprob[idx].astype(np.float32, copy=False)).view(np.uint32)  # 0 - x: -0.0 -> +0.0
    low = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))  # float order as unsigned order
    order = np.argsort((rows.astype(np.uint64) << np.uint64(32)) | low, kind="stable")  # ties keep position order
    starts = np.cumsum(n_per_row) - n_per_row  # (R,) first sorted slot of each row
    ranks = np.arange(len(idx)) - starts[rows]  # (n,) slot within its row (sorting moves nothing across rows)
    keep = np.zeros(len(logprob), dtype=bool)
    keep[idx[order[ranks < k_per_row[rows]]]] = True
    return keep
