"""`tokensft train`'s AdamW, in the fastest implementation the parameters' device has.

    optimizer, impl = adamw(params, accelerator.device, lr=..., betas=..., weight_decay=...)  # fused | foreach | single-tensor

torch picks AdamW's implementation itself (torch.optim.optimizer._default_to_fused_or_foreach) but
never fused by default: foreach on CUDA-like devices, the single-tensor loop on CPU. Both make
per-step temporaries the size of the largest parameters (the tied embedding: about 0.3-0.4 GB at
SmolLM2's 49,152 x 576), where fused AdamW (TRL's default) updates in place in one kernel; on CPU
the single-tensor loop is also the slowest (one step on a CPU, measured while writing
benchmarks/bench_vs_trl.py, on a 189 MB embedding: 360 MB of temporaries and 309 ms, fused 0 MB and
41 ms). So: fused when
the parameters are floating point and torch has fused kernels for the device they will live on
(`device`: the accelerator's; the model is moved there by accelerator.prepare, after the optimizer
is built): CUDA, and CPU since torch 2.4; else foreach where torch supports it, else the
single-tensor loop. Fused and the loop differ by float rounding only (tested); a run resumes with
the implementation it started with (tokensft_train.json records it).
"""

from __future__ import annotations

import torch


def implementation(params: list[torch.Tensor], device) -> str:
    """fused | foreach | single-tensor: what `adamw` uses for these parameters on `device`."""
    from torch.optim.optimizer import _get_foreach_kernels_supported_devices, _get_fused_kernels_supported_devices

    kind = torch.device(device).type
    if kind in _get_fused_kernels_supported_devices() and all(torch.is_floating_point(p) for p in params):
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
