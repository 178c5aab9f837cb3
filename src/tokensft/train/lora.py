"""LoRA for `tokensft train` through peft (`pip install tokensft[peft]`): settings, wrap, state, final save.

    validate(config)                       # ConfigErrors naming the flag (no torch, no peft import)
    model = wrap(model, config)            # a PeftModel: only the adapter's parameters train
    register_state_hooks(accelerator)      # checkpoints' accelerate state holds the adapter, not the base
    save_model(model, OUTPUT, merge)       # the adapter in PEFT format; --merge: the merged full model

The loss needs nothing of its own: `micro_batch_loss` calls `model.get_decoder()` and
`LogitHead(model)`, which the PeftModel forwards to the base model, whose projections now hold the
LoRA layers, so the chunked loss runs through the adapters and reaches lm_head unchanged.

Targets (--lora-targets): by default every distinct Linear name of the architecture but the
lm_head (and an MoE router, `gate`/`router`): the attention and MLP projections (q_proj, k_proj,
v_proj, o_proj, gate_proj, up_proj, down_proj for Llama, Qwen, Mistral, Gemma; c_attn, c_proj,
c_fc for GPT-2). peft's own default for Llama is q_proj, v_proj only.

Outputs: without --merge OUTPUT holds the adapter (adapter_config.json, adapter_model.safetensors)
and the tokenizer; it is no full model (no config.json), so `tokensft score` refuses it: train
with --merge for a model to score. With --merge OUTPUT holds the merged model (config.json,
model.safetensors; AutoModelForCausalLM.from_pretrained loads it) and the adapter in OUTPUT/adapter/
(not beside config.json: transformers would then load the base and apply the adapter a second time).
"""

from __future__ import annotations

import importlib.util
import math

from tokensft.core.errors import ConfigError

ADAPTER_DIR = "adapter"  # with --merge: OUTPUT/adapter/ holds the adapter, OUTPUT the merged model
FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "lora_targets", "lora_base_bf16")  # the run identity's lora part
_NOT_TARGETS = ("gate", "router")  # MoE routers (Mixtral, Qwen-MoE): no projection to adapt


def validate(config) -> None:
    """A ConfigError naming the flag for a LoRA setting that would fail or be ignored."""
    if config.lora_r < 0:
        raise ConfigError(f"--lora-r {config.lora_r}: must be >= 0 (0: full fine-tuning, the default)")
    if not config.lora_r:
        given = [flag for flag, on in (("--lora-alpha", config.lora_alpha != _default(config, "lora_alpha")), ("--lora-dropout", config.lora_dropout),
                                       ("--lora-targets", config.lora_targets), ("--lora-base-bf16", config.lora_base_bf16),
                                       ("--merge", config.merge)) if on]
        if given:
            raise ConfigError(f"{given[0]} applies with LoRA only: add --lora-r N (e.g. 16)")
        return
    if importlib.util.find_spec("peft") is None:
        raise ConfigError(f"--lora-r {config.lora_r}: LoRA needs peft: pip install tokensft[peft]")
    if not math.isfinite(config.lora_alpha) or config.lora_alpha <= 0:
        raise ConfigError(f"--lora-alpha {config.lora_alpha}: must be a positive number (the scale is alpha / r)")
    if not 0 <= config.lora_dropout < 1:
        raise ConfigError(f"--lora-dropout {config.lora_dropout}: must be in [0, 1)")
    if config.lora_targets is not None and not targets_of(config.lora_targets):
        raise ConfigError(f"--lora-targets {config.lora_targets!r}: give module names, e.g. q_proj,v_proj")


def _default(config, name: str):
    return type(config).__dataclass_fields__[name].default


def targets_of(spec: str) -> list[str]:
    """--lora-targets "q_proj, v_proj" -> ["q_proj", "v_proj"]."""
    return [name.strip() for name in spec.split(",") if name.strip()]


def linear_names(model) -> list[str]:
    """The distinct leaf names of the model's Linear modules but its lm_head, in order of appearance."""
    import torch

    head = model.get_output_embeddings()
    names: list[str] = []
    for qualified, module in model.named_modules():
        leaf = qualified.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and module is not head and leaf not in names:
            names.append(leaf)
    return names


def default_targets(model) -> list[str]:
    """The architecture's attention and MLP projections: its Linear names but lm_head and routers."""
    return [name for name in linear_names(model) if name not in _NOT_TARGETS]


def wrap(model, config):
    """`model` as a PeftModel with a fresh LoRA adapter (B = 0: the first forward equals the base's);
    the base is frozen, so only the adapter's parameters have requires_grad."""
    from peft import LoraConfig, get_peft_model

    available = linear_names(model)
    if config.lora_targets is None:
        targets = default_targets(model)
    else:
        targets = targets_of(config.lora_targets)
        missing = [name for name in targets if name not in available]
        if missing:
            raise ConfigError(f"--lora-targets: {type(model).__name__} has no Linear named {missing[0]!r}; its Linear "
                              f"modules are {', '.join(available)}")
    if not targets:
        raise ConfigError(f"--lora-r: {type(model).__name__} has no Linear module to adapt; pass --lora-targets")
    settings = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, settings)


def trainable(model) -> list:
    """The parameters the optimizer takes: all of them in full fine-tuning, the adapter's under LoRA."""
    return [p for p in model.parameters() if p.requires_grad]


def parameter_counts(model) -> dict:
    """{"trainable_params": n, "total_params": m} for the log and the final card."""
    return {"trainable_params": sum(p.numel() for p in trainable(model)),
            "total_params": sum(p.numel() for p in model.parameters())}


def register_state_hooks(accelerator) -> None:
    """accelerate's save_state/load_state for a model whose base is frozen: save only the parameters
    that train (the base is reloaded from --model), load them back strictly otherwise (a key the
    file lacks that is not a frozen parameter, or one it has that the model lacks, is an error)."""
    from pathlib import Path

    from safetensors.torch import load_file

    def keep_trainable(models, weights, output_dir):
        for model, state in zip(models, weights):
            names = {name for name, p in model.named_parameters() if p.requires_grad}
            for key in [k for k in state if k not in names]:
                del state[key]

    def load_trainable(models, input_dir):
        for i, model in enumerate(models):
            file = Path(input_dir) / f"model{f'_{i}' if i else ''}.safetensors"
            result = model.load_state_dict(load_file(str(file), device="cpu"), strict=False)
            frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
            frozen |= {name for name, _ in model.named_buffers()}
            missing = [k for k in result.missing_keys if k not in frozen]
            if missing or result.unexpected_keys:
                raise ConfigError(f"{input_dir}: not a checkpoint of this LoRA adapter (missing "
                                  f"{(missing or ['-'])[0]}, unexpected {(result.unexpected_keys or ['-'])[0]})")
        models.clear()  # loaded here: accelerate skips them

    accelerator.register_save_state_pre_hook(keep_trainable)
    accelerator.register_load_state_pre_hook(load_trainable)


def save_model(model, directory, merge: bool) -> None:
    """The final model in `directory`: the adapter (PEFT format), or with `merge` the merged full model
    plus the adapter in directory/adapter/. Merging changes `model` in place: call it last."""
    from pathlib import Path

    directory = Path(directory)
    if not merge:
        model.save_pretrained(directory, safe_serialization=True)
        return
    model.save_pretrained(directory / ADAPTER_DIR, safe_serialization=True)
    merged = model.merge_and_unload()
    merged.save_pretrained(directory, safe_serialization=True)


def is_lora(model) -> bool:
    """Whether `model` is a PeftModel (without importing peft)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", ADAPTER_DIR)
_FULL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


def remove_stale(output, written: set[str]) -> None:
    """Before a final model moves into OUTPUT: remove the model files of the other kind a previous
    (--overwrite) run left there, so an adapter never sits beside a full model (transformers would
    then load the adapter's base instead) and a full model never outlives its replacement adapter."""
    import shutil
    from pathlib import Path

    output = Path(output)
    full = "config.json" in written
    stale = list(_ADAPTER_FILES if full else _FULL_FILES)
    if ADAPTER_DIR in written:  # --merge: the adapter lives in OUTPUT/adapter, not beside config.json
        stale = [name for name in _ADAPTER_FILES if name != ADAPTER_DIR]
    if not full:
        stale += [p.name for p in output.glob("model*.safetensors")]
    for name in stale:
        path = output / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif name not in written:
            path.unlink(missing_ok=True)
