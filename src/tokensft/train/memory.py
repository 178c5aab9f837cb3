"""The memory budget `tokensft train` prints before step 1, so a run that will not fit is seen before it starts.

    budget = memory_budget(params=1.5e9, trainable=1.5e9, layers=28, hidden=1536, tokens=4 * 4096,
                           activation_bytes=2, checkpointing=True)
    print(budget_line(budget, micro_batch="4 x 4,096 tokens"))

Per process, in GB (1e9 bytes):
    parameters   params x 4            (fp32 weights; bf16 autocast casts per op and keeps fp32 masters;
                                        the actual bytes when some are not fp32, e.g. a bf16 base under LoRA)
    gradients    trainable x 4
    AdamW state  trainable x 8         (exp_avg and exp_avg_sq, fp32)
    activations  per micro-batch, estimated:
        without checkpointing  layers x tokens x hidden x bytes x ACTIVATION_FACTOR
        with checkpointing     layers x tokens x hidden x bytes (each layer's input, kept)
                               + tokens x hidden x bytes x ACTIVATION_FACTOR (one layer recomputed in backward)
tokens: micro-batch size x its padded length (the longest example: the worst micro-batch); bytes: 2
under bf16/fp16 autocast, 4 in fp32. ACTIVATION_FACTOR = 17 values per hidden element per token and
layer: Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
eq. 1) count 34 bytes = 17 half-precision values for a GPT layer without its attention-score term
(s x s per head: absent with SDPA / flash attention, which keep no score matrix). A SwiGLU MLP
(intermediate ~ 2.7-5.4 x hidden) keeps more and dropout-free models less, so it is an estimate,
within about 1.5x either way. Not counted: the chunked loss (chunk x vocab x 4 bytes, a few
chunks: 0.1-0.2 GB at 256 x 152k), the CUDA context and the allocator's fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIVATION_FACTOR = 17  # stored values per hidden element per token per layer (see the docstring)
GB = 1e9


@dataclass
class Budget:
    parameters: float  # bytes
    gradients: float
    optimizer: float
    activations: float  # per micro-batch

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.activations


def memory_budget(params: int, trainable: int, layers: int, hidden: int, tokens: int, activation_bytes: int,
                  checkpointing: bool, parameter_bytes: int | None = None) -> Budget:
    """The Budget in bytes (see the module docstring for each term). parameter_bytes: the weights' actual
    size when they are not all fp32 (a bf16 frozen base under LoRA); default params x 4."""
    per_layer_input = tokens * hidden * activation_bytes
    if checkpointing:
        activations = layers * per_layer_input + ACTIVATION_FACTOR * per_layer_input
    else:
        activations = layers * ACTIVATION_FACTOR * per_layer_input
    return Budget(params * 4 if parameter_bytes is None else parameter_bytes, trainable * 4, trainable * 8, activations)


def budget_line(budget: Budget, micro_batch: str, checkpointing: bool) -> str:
    """One line for the start-up output."""
    def gb(x: float) -> str:
        return f"{x / GB:.2f} GB"

    return (f"memory per process: parameters {gb(budget.parameters)}, gradients {gb(budget.gradients)}, AdamW state "
            f"{gb(budget.optimizer)}, activations ~{gb(budget.activations)} per micro-batch ({micro_batch}, gradient "
            f"checkpointing {'on' if checkpointing else 'off'}): ~{gb(budget.total)}")


def enable_checkpointing(model) -> None:
    """--gradient-checkpointing: each decoder layer's forward recomputed in backward (non-reentrant
    torch.utils.checkpoint; in train mode only, so evaluation is unaffected). The loss's decoder call
    (model.get_decoder()(...)) runs through the same layers, so it checkpoints too (tested)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x's name
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def model_budget(model, batch_size: int, longest: int, activation_bytes: int, checkpointing: bool) -> tuple[Budget, str]:
    """memory_budget for a transformers model and the longest example; the Budget and its line."""
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    budget = memory_budget(params, trainable, config.num_hidden_layers, config.hidden_size, batch_size * longest,
                           activation_bytes, checkpointing, sum(p.numel() * p.element_size() for p in model.parameters()))
    return budget, budget_line(budget, f"{batch_size} x {longest:,} tokens", checkpointing)
