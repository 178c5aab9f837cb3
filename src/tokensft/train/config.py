"""`tokensft train`'s settings: one dataclass, its defaults and its checks (no torch: the CLI reads it).

    config = TrainConfig(data="scored/", output="ckpt/", objective="p")
    config.validate()          # a ConfigError naming the flag, for anything that would fail or be ignored
    settings_file("run.yaml")  # {field: value} from a JSON or YAML file (`tokensft train --config`)

Precedence: the dataclass defaults, then a --config file, then explicit flags. The help text
lives in cli.py (the objectives' in objectives.objectives_help); the resolved config is saved as
OUTPUT/train_config.json, which --config reads back (its data, output, total_steps and world_size
are ignored: data and output come from the command line, the others are derived).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from tokensft.core.errors import ConfigError
from tokensft.train.objectives import NORMALIZE, parse_objective

DTYPES = ("auto", "float32", "bfloat16", "float16")
BATCHING = ("padded", "grouped", "packed")
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")  # transformers' attn_implementation; auto: the model's default


@dataclass
class TrainConfig:
    """Everything `tokensft train` takes (help text lives in cli.py)."""

    data: str
    output: str
    model: str = "smollm2-135m-instruct"
    objective: str = "nll"
    mask: str | None = None
    weight: str | None = None  # a stored weight column (weight, weight_<name>) or the enrich spec that made it
    allow_negative_weights: bool = False
    ref: str | None = None
    normalize: str | None = None  # None: the objective's own default
    learning_rate: float = 5e-5
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 4  # sequences per micro-batch per process
    grad_accum: int = 1
    warmup: float = 0.1  # fraction of the steps
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    clip: float = 1.0  # 0: no clipping
    seed: int = 0
    chunk_size: int = 256
    eval_fraction: float = 0.0
    eval_every: int = 0
    save_every: int = 0
    keep_checkpoints: int = 2
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    gradient_checkpointing: bool = False  # the backbone's (the chunked loss recomputes its own chunks)
    batching: str = "padded"  # grouped: each step's examples sorted by length first; packed: no padding (train.packing)
    report_to: str = "none"  # an accelerate tracker besides metrics.jsonl
    attn_implementation: str = "auto"  # flash_attention_2 (pip install flash-attn, CUDA): packed batches run varlen
    lora_r: int = 0  # 0: full fine-tuning; > 0: a LoRA adapter of this rank (tokensft.train.lora)
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str | None = None  # comma list; None: the attention and MLP projections
    lora_base_bf16: bool = False  # the frozen base in bf16, the adapter in fp32
    merge: bool = False  # LoRA: the final output is the merged full model (the adapter in OUTPUT/adapter)
    skip_invalid: bool = False
    overwrite: bool = False
    quiet: bool = False

    def validate(self) -> None:
        """A ConfigError naming the flag for every value that would fail later or be silently ignored."""
        objective = parse_objective(self.objective)
        if self.normalize is not None and self.normalize not in NORMALIZE:
            raise ConfigError(f"--normalize {self.normalize!r}: use one of {', '.join(NORMALIZE)}")
        if self.weight is not None:
            from tokensft.core.weights import weight_column_for  # numpy: not on the CLI's import path

            weight_column_for(self.weight)  # a ConfigError naming --weight for a bad spec
        elif self.normalize == "weight-sum" or self.allow_negative_weights:
            flag = "--normalize weight-sum" if self.normalize == "weight-sum" else "--allow-negative-weights"
            raise ConfigError(f"{flag} applies with --weight only: give --weight NAME (a stored weight column or spec)")
        if objective.name == "poft":
            if self.normalize not in (None, "sequences", "weight-sum"):
                raise ConfigError("--objective poft is per sequence: --normalize sequences (the default) or, with "
                                  "--weight, weight-sum")
            if self.mask:  # s and s_ref are means over all response tokens; a mask would compare unlike means
                raise ConfigError("--mask does not apply to --objective poft: PoFT compares the mean log-prob of every "
                                  "response token with the reference's over the same tokens")
        elif self.ref or self.skip_invalid:
            raise ConfigError(f"--ref and --skip-invalid apply to --objective poft only, not {self.objective}")
        floats = {"learning-rate": self.learning_rate, "epochs": self.epochs, "warmup": self.warmup, "clip": self.clip,
                  "weight-decay": self.weight_decay, "eval-fraction": self.eval_fraction}
        for flag, value in floats.items():
            if not math.isfinite(value):
                raise ConfigError(f"--{flag} {value}: must be a finite number")
        for name in ("batch_size", "grad_accum", "chunk_size", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        for name in ("eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 0 (0: never)")
        if not 0 <= self.eval_fraction < 1 or not 0 <= self.warmup <= 1:
            raise ConfigError("--eval-fraction must be in [0, 1) and --warmup in [0, 1]")
        if self.eval_every and not self.eval_fraction:
            raise ConfigError(f"--eval-every {self.eval_every}: there is no held-out split; add --eval-fraction")
        for flag, value in {"learning-rate": self.learning_rate, "epochs": self.epochs, "max-steps": self.max_steps}.items():
            if value is not None and value <= 0:
                raise ConfigError(f"--{flag} {value}: must be positive")
        if self.seed < 0:  # numpy's generators, which draw the data order, take none
            raise ConfigError(f"--seed {self.seed}: must be >= 0")
        if self.clip < 0 or self.weight_decay < 0:
            raise ConfigError("--clip and --weight-decay must be >= 0 (--clip 0: no clipping)")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("the AdamW betas must be in [0, 1)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.batching not in BATCHING:
            raise ConfigError(f"--batching {self.batching!r}: use one of {', '.join(BATCHING)}")
        if self.attn_implementation not in ATTENTION:
            raise ConfigError(f"--attn-implementation {self.attn_implementation!r}: use one of {', '.join(ATTENTION)}")
        if self.report_to not in REPORT_TO:
            raise ConfigError(f"--report-to {self.report_to!r}: use one of {', '.join(REPORT_TO)}")
        from tokensft.train import lora  # no torch at import

        lora.validate(self)


DERIVED = ("data", "output", "total_steps", "world_size")  # in train_config.json; not settings of a --config file
_TYPES = {"str": (str,), "float": (float, int), "int": (int,), "bool": (bool,)}
_WORDS = {"str": "a string", "float": "a number", "int": "an integer", "bool": "true or false"}


def settings_file(path: str) -> dict:
    """{field: value} from a JSON or YAML file of TrainConfig settings; a ConfigError names a bad key or value."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc})") from None
    if file.suffix.lower() in (".yaml", ".yml"):
        import yaml  # a dependency of accelerate

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML ({' '.join(str(exc).split())})") from None
    else:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--config {path}: not valid JSON ({exc}); YAML files end in .yaml or .yml") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings, e.g. {{\"objective\": \"p\", \"epochs\": 2}}")
    known = {f.name: f.type for f in fields(TrainConfig)}
    out = {}
    for key, value in raw.items():
        if key in DERIVED:
            continue
        if key not in known:
            raise ConfigError(f"--config {path}: unknown setting {key!r}; settings are {', '.join(sorted(set(known) - set(DERIVED)))}")
        kind = str(known[key])
        optional = kind.endswith("| None")
        expected = _TYPES[kind.removesuffix(" | None")]
        if value is None and optional:
            out[key] = None
        elif isinstance(value, bool) and bool not in expected or not isinstance(value, expected):
            raise ConfigError(f"--config {path}: setting {key!r} is {value!r}; it takes {_WORDS[kind.removesuffix(' | None')]}"
                              + (" or null" if optional else ""))
        else:
            out[key] = float(value) if expected == _TYPES["float"] else value
    return out
