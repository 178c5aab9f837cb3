"""`tokensft eval`'s settings: one dataclass, its defaults and checks (no torch: the CLI reads it).

The run flags (batch tokens, dtype, device, rank, quiet, ...) are `core.identity.RunConfig`'s,
shared with score and enrich: eval's teacher-forced pass is the same model pass as score's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tokensft.core.errors import ConfigError
from tokensft.evaluate.answers import parse_metric
from tokensft.core.identity import RunConfig
from tokensft.records.formats import FormatSpec


@dataclass
class EvalConfig(RunConfig):
    """Everything `tokensft eval` takes (help text lives in cli.py)."""

    model: str
    input: str | None  # held-out records; None: only the --lm-eval suites
    output: str
    metric: str = "exact"  # exact | numeric | contains | regex:PATTERN | choice | math (see evaluate.answers)
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # nucleus sampling: draw from the smallest set of tokens holding this much probability
    samples: int = 1  # completions per example (avg@N); > 1 needs a temperature
    pass_k: list[int] | None = None  # pass@k for each k (samples > 1); None: 1 and N
    seed: int = 0  # sampling: each (example, sample) draws from its own generator, seeded from this
    format: FormatSpec = field(default_factory=FormatSpec)
    input_format: str | None = None
    template: str = "auto"
    max_length: int | None = None  # prompt + completion fit in it; teacher-forced renders cut at it (None: context)
    shard_size: int = 1000  # input rows per part (the unit of resume)
    teacher_forced: bool = True  # also score the records: held-out mean target p and NLL per token
    resume: bool = True
    lm_eval: str | None = None  # lm-evaluation-harness tasks, comma-separated (DIR/lm_eval.json)
    lm_eval_include: str | None = None  # a directory of local task YAMLs
    lm_eval_limit: int | None = None  # at most this many documents per task (a quick look)

    @property
    def ks(self) -> list[int]:
        """The k of every pass@k reported: --pass-k, else 1 and N (none with one draw)."""
        if self.samples == 1:
            return []
        return sorted(set(self.pass_k)) if self.pass_k else sorted({1, self.samples})

    def validate(self) -> None:
        super().validate()
        if self.input is None and self.lm_eval is None:
            raise ConfigError("give held-out records to evaluate (DATA), or benchmark suites with --lm-eval TASKS")
        if self.lm_eval_limit is not None and self.lm_eval_limit < 1:
            raise ConfigError(f"--lm-eval-limit {self.lm_eval_limit}: must be at least 1")
        parse_metric(self.metric)
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens {self.max_new_tokens}: must be at least 1")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"--temperature {self.temperature}: must be >= 0 (0: greedy)")
        if self.samples < 1:
            raise ConfigError(f"--samples {self.samples}: must be at least 1")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p {self.top_p}: must be in (0, 1] (1: the whole distribution)")
        if self.top_p < 1 and self.temperature == 0:
            raise ConfigError(f"--top-p {self.top_p} has no effect with greedy decoding; add --temperature (e.g. 1)")
        bad = [k for k in self.pass_k or [] if not 1 <= k <= self.samples]
        if bad:
            raise ConfigError(f"--pass-k {','.join(map(str, self.pass_k))}: each k must be between 1 and --samples "
                              f"{self.samples} (pass@k of N draws)")
        if self.samples > 1 and self.temperature == 0:
            raise ConfigError(f"--samples {self.samples} with greedy decoding gives the same completion every time; "
                              "add --temperature (e.g. 0.7)")
        if self.world_size > 1 and not self.resume:  # every rank would wipe the parts the others wrote
            raise ConfigError("--no-resume with several ranks: delete the output directory first instead")
        if self.shard_size < 1:
            raise ConfigError(f"--shard-size {self.shard_size}: must be positive")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"--max-length {self.max_length}: must be at least 2")
