"""The settings of `tokensft score`, and those it shares with `tokensft enrich`: how a model pass
runs, and which rank. No torch here: the CLI reads these to build its help.

    @dataclass
    class ScoreConfig(RunConfig): ...     # + what only scoring takes (EnrichConfig likewise)
    config.validate()                     # RunConfig.validate checks the shared flags, once

Defaults live here, in the dataclass, once: the CLI passes only the flags a user gave (see
`cli.add_run_flags`). rank and world_size default to the launcher's environment (`env_rank`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from tokensft.core.errors import ConfigError
from tokensft.preprocess.formats import FormatSpec
from tokensft.preprocess.weights import WeightRules


def env_rank() -> tuple[int, int]:
    """(rank, world_size) as torchrun or a Slurm array sets them; (0, 1) otherwise."""
    try:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if "SLURM_ARRAY_TASK_ID" in os.environ and "SLURM_ARRAY_TASK_COUNT" in os.environ:
            # Slurm array ids may start at any value: rank is the offset from the array's minimum.
            offset = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            return int(os.environ["SLURM_ARRAY_TASK_ID"]) - offset, int(os.environ["SLURM_ARRAY_TASK_COUNT"])
    except ValueError:
        pass  # a malformed variable: --rank/--world-size must be given, and validation says so
    return 0, 1


@dataclass(kw_only=True)
class RunConfig:
    """How a scoring pass runs (score, and enrich's references and teacher), and which share is ours."""

    batch_tokens: int | None = None  # padded tokens per forward batch; None: 8192 on CUDA, 1024 on CPU
    chunk_size: int = 256  # target rows per lm_head + log-softmax chunk (memory)
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU; float32, bfloat16, float16
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    rank: int | None = None  # None: from RANK or SLURM_ARRAY_TASK_ID (env_rank), else 0
    world_size: int | None = None  # None: from WORLD_SIZE or SLURM_ARRAY_TASK_COUNT, else 1
    overwrite: bool = False
    skip_invalid: bool = False
    wait: bool = True  # another run holds the output's lock at the start: wait (naming it), or refuse at once
    quiet: bool = False  # no progress bar
    command: str = ""  # the command line, recorded in the metadata

    def __post_init__(self) -> None:
        rank, world = env_rank()
        self.rank = rank if self.rank is None else self.rank
        self.world_size = world if self.world_size is None else self.world_size

    def validate(self) -> None:
        """A ConfigError naming the flag for a shared setting that would fail later."""
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise ConfigError(f"--batch-tokens {self.batch_tokens}: must be positive")
        if self.chunk_size < 1:
            raise ConfigError(f"--chunk-size {self.chunk_size}: must be positive")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"--rank {self.rank} --world-size {self.world_size}: need 0 <= rank < world size")
        if self.world_size > 1 and self.overwrite:
            # every rank would wipe the output, deleting shards the others just wrote
            raise ConfigError("--overwrite with several ranks: delete the output directory first instead")


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
