"""Run identity: which share of the work is this process's, how a model pass runs, and what a
rerun must agree with. No torch here: the CLI reads RunConfig to build its help.

    rank, world = env_rank()                  # torchrun's RANK/WORLD_SIZE, or a Slurm array's
    @dataclass
    class ScoreConfig(RunConfig): ...         # score, enrich and eval add what only they take
    changed_keys(on_disk, now)                # what a refused rerun names: ["max_length", "model_hash"]

Defaults live here, in the dataclass, once: the CLI passes only the flags a user gave
(`commands.common.add_run_flags`). rank and world_size default to the launcher's environment.
(A fingerprint of the input records is `records.readers.input_fingerprint`: which files of a
`datasets` directory hold its rows is reader knowledge.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tokensft.core.errors import ConfigError


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
    """How a model pass runs (score, enrich's references and teacher, eval), and which share is ours."""

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


def changed_keys(old: dict, new: dict) -> list[str]:
    """The keys whose values differ between two run identities (what a refusal names), sorted."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
