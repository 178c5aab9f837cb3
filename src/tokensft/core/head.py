"""The model's hidden -> logits map, shared by scoring and training.

    head = LogitHead(model)
    logits = head(hidden)      # hidden (c, H) -> logits (c, V) float32

Both scoring and the training loss run the lm_head themselves, on the final hidden states at
target positions only, so no [batch, seq, vocab] logits are ever built. This is the one place
that knows how a model turns hidden states into logits.
"""

from __future__ import annotations

import torch


class LogitHead:
    """The model's hidden -> logits map: lm_head, then the per-architecture extras.

    Covers a plain lm_head (Llama, Qwen, Mistral, SmolLM), a logit scale (Cohere) and a final
    softcap (Gemma 2/3). The scorer checks it once against the full forward of the model, so an
    architecture with another extra is refused instead of scored wrongly.
    """

    def __init__(self, model):
        self.proj = model.get_output_embeddings()
        if self.proj is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings (lm_head)")
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        scale = getattr(model, "logit_scale", None)
        self.scale = float(scale) if isinstance(scale, (int, float)) else None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.proj(hidden).float()  # (c, V)
        if self.scale is not None:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
