"""The settings of `tokensft score`. No torch here: the CLI reads them to build its help.

    @dataclass
    class ScoreConfig(RunConfig): ...     # + what only scoring takes (EnrichConfig likewise)
    config.validate()                     # RunConfig.validate checks the shared flags, once

The run flags (batch tokens, dtype, device, rank, ...) are `core.identity.RunConfig`'s, shared
with enrich and eval. Defaults live in the dataclass, once: the CLI passes only the flags a user gave.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tokensft.core.errors import ConfigError
from tokensft.core.identity import RunConfig
from tokensft.records.formats import FormatSpec
from tokensft.records.weights import WeightRules


@dataclass
class ScoreConfig(RunConfig):
    """Everything `tokensft score` takes (the shared run settings: RunConfig); the CLI fills it from flags."""

    input: str
    output: str
    model: str = "smollm2-135m-instruct"
    format: FormatSpec = field(default_factory=FormatSpec)
    input_format: str | None = None  # jsonl | json | parquet | csv | hf-disk; None = by extension
    template: str = "auto"  # auto: the model's chat template when it has one, else plain text
    max_length: int | None = None  # None: the model's context length
    top_k: int = 0
    shard_size: int = 1000  # input rows per shard (the unit of resume)
    resume: bool = True
    weight_field: str | None = None  # per-example weight field; None: "weight", which no row need have
    prompt_weight: float = 0.0  # != 0: prompt tokens become targets of this weight (WIT)
    allow_negative_weights: bool = False
    read_weights: bool = True  # False: the records' weights are not read at all (eval's teacher-forced pass)

    def validate(self) -> None:
        super().validate()
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"--max-length {self.max_length}: must be at least 2")
        if self.top_k < 0:
            raise ConfigError(f"--top-k {self.top_k}: must be >= 0")
        if self.shard_size < 1:
            raise ConfigError(f"--shard-size {self.shard_size}: must be positive")
        if self.world_size > 1 and not self.resume:
            # every rank would wipe the output, deleting shards the others just wrote
            raise ConfigError("--no-resume with several ranks: delete the output directory first instead")
        if self.weight_field is not None and not self.weight_field.strip():
            raise ConfigError("--weight-field '': give the name of the per-example weight field")
        if not math.isfinite(self.prompt_weight):
            raise ConfigError(f"--prompt-weight {self.prompt_weight}: must be a finite number")
        if self.prompt_weight < 0 and not self.allow_negative_weights:
            raise ConfigError(f"--prompt-weight {self.prompt_weight:g}: negative weights push the model away from "
                              "the prompt; pass --allow-negative-weights if that is meant")

    def weight_rules(self, kind: str) -> WeightRules:
        """How the records' weights are read, for input kind `kind` (a CSV cell holds a number as text)."""
        return WeightRules(field=self.weight_field or "weight", allow_negative=self.allow_negative_weights,
                           text_numbers=kind == "csv")
