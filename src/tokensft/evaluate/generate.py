"""Batched decoding with the KV cache: prompts (token ids) in, completions (token ids) out.

    completions = generate(model, prompts, max_new_tokens=256, stop_ids={eos, im_end}, pad_id=0)

One batch: the prompts left-padded to the longest, position ids counted over the real tokens,
one forward over the prompts (only the last position's logits are computed), then one token per
step through the cache. Greedy by default; with a temperature each (example, sample) draws from
its own seeded generator, so a completion depends on its seed alone -- not on which examples share
its batch, nor on where an interrupted run resumed. A completion ends with the first stop id
(kept, as `generate` keeps eos) or after `max_new_tokens`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from tokensft.core.scorer import plan_batches


def default_batch_tokens(device: torch.device) -> int:
    """Prompt + completion tokens per decoding batch. Decoding runs one step per new token, so batches
    pay off more than in scoring (core.scorer's 1024 on CPU): measured with benchmarks/bench_eval.py on
    2 CPU cores, 4096 decodes 1.57x the new tokens/s of 1024 (4.65x one prompt at a time). CUDA keeps
    the scorer's 8192 (not measured here)."""
    return 8192 if device.type == "cuda" else 4096


def _pick(logits: torch.Tensor, temperature: float, generators: Sequence[torch.Generator] | None,
          top_p: float = 1.0) -> torch.Tensor:
    """(B,) next tokens from logits (B, V): argmax, or one draw per row from softmax(logits / T),
    restricted with top_p < 1 to the smallest set of most probable tokens whose mass reaches top_p."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)  # (B, V)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # mass before a token already reaches p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.cat([torch.multinomial(probs[b], 1, generator=generators[b]) for b in range(len(probs))])


def _cache_name(model) -> str:
    """The forward's KV-cache argument: `cache` in recent transformers 5.x, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def generate_batch(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: set[int], pad_id: int,
                   temperature: float = 0.0, seeds: Sequence[int] | None = None, top_p: float = 1.0) -> list[list[int]]:
    """Completions of one batch of prompts (lists of token ids), each ending at its first stop id."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)  # (B, T)
    attention = torch.zeros((len(prompts), width), dtype=torch.long, device=device)  # (B, T)
    for b, prompt in enumerate(prompts):
        input_ids[b, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        attention[b, width - len(prompt):] = 1
    positions = (attention.cumsum(dim=-1) - 1).clamp(min=0)  # (B, T): left padding does not shift positions
    generators = None
    if temperature > 0:
        generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                logits_to_keep=1)
    cache_name = _cache_name(model)
    completions: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    next_position = positions[:, -1:] + 1  # (B, 1)
    for _ in range(max_new_tokens):
        tokens = _pick(out.logits[:, -1, :], temperature, generators, top_p)  # (B,)
        for b, token in enumerate(tokens.tolist()):
            if not done[b]:
                completions[b].append(token)
                done[b] = token in stop_ids
        if all(done):
            break
        # finished rows keep decoding (their tokens are dropped): one shape for the whole batch
        attention = torch.cat([attention, attention.new_ones((len(prompts), 1))], dim=1)
        out = model(input_ids=tokens[:, None], attention_mask=attention, position_ids=next_position,
                    use_cache=True, **{cache_name: getattr(out, cache_name)})
        next_position = next_position + 1
    return completions


def generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: set[int], pad_id: int,
             temperature: float = 0.0, seeds: Sequence[int] | None = None, batch_tokens: int = 1024,
             on_batch=None, top_p: float = 1.0) -> list[list[int]]:
    """Completions of every prompt, in the prompts' order, decoded in length-bucketed batches of at
    most `batch_tokens` prompt + completion tokens. on_batch(n_done): called after each batch."""
    lengths = [len(p) + max_new_tokens for p in prompts]
    out: list[list[int] | None] = [None] * len(prompts)
    for batch in plan_batches(lengths, batch_tokens):
        done = generate_batch(model, [prompts[i] for i in batch], max_new_tokens, stop_ids, pad_id, temperature,
                              [seeds[i] for i in batch] if seeds is not None else None, top_p)
        for i, completion in zip(batch, done):
            out[i] = completion
        if on_batch is not None:
            on_batch(len(batch))
    return out
