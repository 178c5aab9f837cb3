"""`--batching packed`: a micro-batch's sequences side by side in one row, without padding.

    batch = pack(data.collate(indices, pad_id))   # (B, T) padded -> (1, L), L = the real tokens
    ok = prepare_packing(model, "auto")           # VARLEN where it applies; False: it would mix sequences

A packed batch has no attention_mask but position_ids that restart at 0 for each sequence:
transformers (5.x, `masking_utils.find_packed_sequence_indices`) then builds a block-diagonal
causal mask for SDPA and eager attention, and flash-attention takes its varlen path, so no token
attends across a sequence boundary. `sequence` (1, L) says which of the micro-batch's sequences
each position belongs to: the loss uses it wherever padding used the row (PoFT's per-sequence s,
--normalize sequences, the counts), so every number is the padded batch's up to float rounding.

Why a sequence boundary is safe for the shifted loss: a sequence's first token is never a target
(nothing precedes it to predict it), so the hidden state at the previous sequence's last token is
never used as a prediction. `pack` checks this rather than assume it.

Attention cost. transformers' SDPA and eager attention take the packed row as one sequence under
a dense L x L block-diagonal mask: L^2 work (and memory: a 32k-token pack is 1 GB of mask), more
than the padded batch's B x T^2, which on CPU can cost more than the padding saved. So for a
model on SDPA whose attention is plain causal (no sliding window, no logit soft-capping: Llama,
Qwen2, most), `use_varlen` switches it to VARLEN, SDPA run on each packed sequence alone
(sum of len^2, causal, no mask), registered with transformers' AttentionInterface; flash-attention
(--attn-implementation flash_attention_2) has its own varlen kernel. The step's examples and
their micro-batch split are exactly --batching padded's: packed changes the compute, not what is trained.
"""

from __future__ import annotations

import torch

from tokensft.core.errors import ConfigError
from tokensft.core.schema import IGNORE_INDEX

# per-position tensors: (B, T) or (B, T, K), packed to (1, L) or (1, L, K)
PER_POSITION = ("input_ids", "labels", "mask", "weight", "prior_ids", "prior_logprobs")


def pack(batch: dict) -> dict:
    """A right-padded micro-batch (collate_rows: B rows, attention_mask (B, T)) as one row of its
    real tokens, in row order: input_ids, labels, ... (1, L[, K]); position_ids (1, L) restarting
    at 0 per sequence; sequence (1, L) long, each position's row in the padded batch. ids and the
    per-sequence ref_logprob (B,) are unchanged; attention_mask is dropped (see the module doc)."""
    real = batch["attention_mask"].bool()  # (B, T), contiguous from position 0 (right padding)
    rows = torch.arange(real.shape[0]).unsqueeze(1).expand_as(real)  # (B, T)
    first = batch["labels"][:, 0]  # (B,) each sequence's first token
    if (first != IGNORE_INDEX).any():  # its hidden state would come from the previous sequence
        row = int((first != IGNORE_INDEX).nonzero()[0])
        raise ConfigError(f"example {batch['ids'][row]!r}: its first token is a target, which a packed batch cannot "
                          "train (nothing precedes it); use --batching padded or grouped")
    out = {k: v for k, v in batch.items() if k not in PER_POSITION and k != "attention_mask"}
    for key in PER_POSITION:
        if key in batch:
            out[key] = batch[key][real].unsqueeze(0)  # (1, L[, K])
    out["position_ids"] = (real.long().cumsum(1) - 1)[real].unsqueeze(0)  # (1, L): 0, 1, ..., 0, 1, ...
    out["sequence"] = rows[real].unsqueeze(0)  # (1, L)
    return out


VARLEN = "tokensft_varlen"  # the attention implementation's name (transformers' AttentionInterface)


def varlen_attention(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """Causal SDPA within each packed sequence. query (1, H, L, D), key and value (1, Hkv, L, D);
    the sequences start where position_ids (1, L) is 0. Returns ((1, L, H, D), None), as
    transformers' attention functions do. Other inputs (B rows, right-padded: causal attention
    never sees a row's padding, which comes after its tokens) take one causal SDPA call."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None:  # a 4-D mask built elsewhere: honour it
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    if position_ids is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)
    bounds = _bounds(position_ids)
    outputs = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                                      is_causal=True, **kwargs)[0] for a, b in zip(bounds, bounds[1:])]
    return torch.cat(outputs, dim=1), None  # (1, L, H, D)


_LAST_BOUNDS: list = []  # [(position_ids, bounds)]: every layer of a forward (and its recompute) gets the same tensor


def _bounds(position_ids: torch.Tensor) -> list[int]:
    """[0, start of sequence 2, ..., L] of a packed row, found once per forward rather than once per
    layer (a device-to-host copy, a sync on CUDA); keyed by the tensor object itself, which the
    cache keeps alive, so a later forward's tensor can never be mistaken for it."""
    if _LAST_BOUNDS and _LAST_BOUNDS[0][0] is position_ids:
        return _LAST_BOUNDS[0][1]
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    bounds = [*([] if starts[:1] == [0] else [0]), *starts, position_ids.shape[1]]
    _LAST_BOUNDS[:] = [(position_ids, bounds)]
    return bounds


def use_varlen(model) -> bool:
    """Switch a model on SDPA with plain causal attention to VARLEN (see the module doc); whether it did."""
    from transformers import AttentionInterface

    config = model.config
    window = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    if (config._attn_implementation != "sdpa" or window or getattr(config, "attn_logit_softcapping", None)
            or not model._can_set_attn_implementation()):
        return False
    AttentionInterface.register(VARLEN, varlen_attention)
    model.set_attn_implementation(VARLEN)
    return model.config._attn_implementation == VARLEN


@torch.no_grad()
def packing_supported(model) -> bool:
    """Whether this model's decoder keeps packed sequences apart: two short random sequences, once
    padded and once packed, must give the same final hidden states (an architecture whose attention
    mask ignores position_ids would let the second attend to the first)."""
    decoder = model.get_decoder()
    was_training = decoder.training
    decoder.eval()  # no dropout in the probe
    weight = next(decoder.parameters())
    device = weight.device
    tolerance = 1e-4 if weight.dtype == torch.float32 else 5e-2  # leaking across sequences differs by O(1)
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 6), generator=g)
    lengths = (6, 4)
    attention = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    padded = decoder(input_ids=ids.to(device), attention_mask=attention.to(device), use_cache=False).last_hidden_state
    flat = torch.cat([ids[0, :lengths[0]], ids[1, :lengths[1]]]).unsqueeze(0)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    packed = decoder(input_ids=flat.to(device), position_ids=positions.to(device), use_cache=False).last_hidden_state
    decoder.train(was_training)
    expected = torch.cat([padded[0, :lengths[0]], padded[1, :lengths[1]]]).float()
    return bool(torch.allclose(packed[0].float(), expected, atol=tolerance, rtol=tolerance))


def prepare_packing(model, attn_implementation: str) -> bool:
    """Ready `model` for packed batches: VARLEN where it applies (--attn-implementation auto), then
    the probe. False, with the model's attention as it was, when its attention would mix packed
    sequences (the caller falls back to grouped batches). flash-attention is not probed: it runs on
    CUDA only and the model is still on the CPU here (before accelerate's prepare), and its varlen
    path from position_ids is transformers' own padding-free route."""
    attention = model.config._attn_implementation
    if attention == "flash_attention_2":
        return True
    if attn_implementation == "auto":
        use_varlen(model)
    if packing_supported(model):
        return True
    model.set_attn_implementation(attention)
    return False
