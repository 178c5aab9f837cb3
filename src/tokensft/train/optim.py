"""`tokensft train`'s AdamW, in the fastest implementation the parameters' device has.

    optimizer, impl = adamw(params, accelerator.device, lr=..., betas=..., weight_decay=...)  # fused | foreach | single-tensor

torch picks AdamW's implementation itself (torch.optim.optimizer._default_to_fused_or_foreach) but
never fused by default, and foreach only on CUDA-like devices: on CUDA that default (foreach) makes
per-step temporaries the size of the largest parameters (the tied embedding: about 0.3-0.4 GB at
SmolLM2's 49,152 x 576), where fused AdamW (TRL's default) updates in place in one kernel. So:
fused when the parameters are floating point and will live on CUDA (`device`: the accelerator's; the
model is moved there by accelerator.prepare, after the optimizer is built), else foreach where torch supports it,
else torch's own default, which on CPU is the single-tensor loop -- exactly what `tokensft train`
ran before, so CPU runs (and their bit-exact resume) are unchanged.
"""

from __future__ import annotations

import torch


def implementation(params: list[torch.Tensor], device) -> str:
    """fused | foreach | single-tensor: what `adamw` uses for these parameters on `device`."""
    from torch.optim.optimizer import _get_foreach_kernels_supported_devices

    kind = torch.device(device).type
    if kind == "cuda" and all(torch.is_floating_point(p) for p in params):
        return "fused"
    if kind in _get_foreach_kernels_supported_devices():
        return "foreach"
    return "single-tensor"


def adamw(params, device, **kwargs) -> tuple[torch.optim.AdamW, str]:
    """torch.optim.AdamW over `params` (the trainable ones) in `implementation`'s choice, and that choice."""
    params = [p for p in params if p.requires_grad]
    impl = implementation(params, device)
    choice = {"fused": {"fused": True}, "foreach": {"foreach": True}, "single-tensor": {}}[impl]
    return torch.optim.AdamW(params, **choice, **kwargs), impl
