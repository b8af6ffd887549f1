"""Attention masks for causal and bidirectional rows on Hugging Face causal-LM architectures.

Hugging Face decoder models (Llama, Mistral, Qwen2, ...) accept a ready 4D mask of shape
[batch, 1, query, key] and use it as is instead of building their causal mask, for the `eager` and
`sdpa` attention implementations. That is how mft makes a causal architecture bidirectional without
touching its code. (FlashAttention-2 ignores 4D masks; it is refused for bidirectional objectives.)

The rule, per row b, query q and key k:
    allowed[b, q, k] = key_valid[b, k] and (k <= q            if the row is causal
                                            not hidden[b, k]  if the row is bidirectional)
                       or q == k
except that in a bidirectional row marked `sink` query 0 sees only itself (it keeps the state a
pretrained causal LM gives its first token, the attention sink; see `mft.objectives.masked`), and
a query flagged `prompt` (a prompt position of a row trained with `prompt_sees_answer: false`)
sees only keys flagged `prompt` too (block-causal: the prompt never sees its answer).
Padding is never a valid key. The diagonal is always allowed, so no query (a padded one, or a
masked slot with every other token hidden) is left with nothing to attend to.
"""

from __future__ import annotations

import contextlib
import os

import torch


def attention_mask_4d(key_valid: torch.Tensor, causal: torch.Tensor, hidden: torch.Tensor | None = None,
                      sink: torch.Tensor | None = None, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [B, 1, L, L], True = may attend.

    key_valid: bool [B, L] (False on padding); causal: bool [B] (per row); hidden: bool [B, L] or None;
    sink: bool [B] (per row) or None; prompt: bool [B, L] or None (the prompt of a block-causal row).
    """
    batch, length = key_valid.shape
    visible = key_valid if hidden is None else key_valid & ~hidden
    lower = torch.ones(length, length, dtype=torch.bool, device=key_valid.device).tril()
    causal_rows = lower[None] & key_valid[:, None, :]
    bidirectional_rows = visible[:, None, :].expand(batch, length, length)
    allowed = torch.where(causal[:, None, None], causal_rows, bidirectional_rows)
    if sink is not None and sink.any():
        allowed = allowed.clone()
        allowed[sink, 0, :] = False  # the diagonal below gives query 0 itself back
    if prompt is not None and prompt.any():
        allowed = allowed & ~(prompt[:, :, None] & ~prompt[:, None, :])
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=key_valid.device)[None]
    return allowed[:, None]


def packed_attention_mask(segments: torch.Tensor, causal: torch.Tensor, hidden: torch.Tensor,
                          sink_start: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [B, 1, L, L] for rows that hold several examples one after another (packing): block
    diagonal, each example attending only inside itself by its own rule (causal or bidirectional
    with hidden keys, as in `attention_mask_4d`).

    segments: long [B, L], the example each position belongs to (-1 on padding); causal: bool [B, L],
    the rule of the position's example; hidden: bool [B, L]; sink_start: bool [B, L], True at the
    first position of a `sink` example (it sees only itself); prompt: bool [B, L] or None, the
    prompt positions of block-causal examples (they see only their own prompt).
    """
    length = segments.shape[1]
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] >= 0)
    lower = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()[None]
    by_rule = torch.where(causal[:, :, None], lower, ~hidden[:, None, :])
    allowed = same & by_rule & ~sink_start[:, :, None]
    if prompt is not None and prompt.any():
        allowed = allowed & ~(prompt[:, :, None] & ~prompt[:, None, :])
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=segments.device)[None]
    return allowed[:, None]


def anneal_to_bidirectional(attention_mask: torch.Tensor, progress: float, generator: torch.Generator) -> torch.Tensor:
    """Attention annealing from causal to bidirectional: keep each permission to attend to a
    *later* key (k > q) with probability `progress` in [0, 1], the same draw for every row, and
    every permission to earlier keys. progress 0 = causal, 1 = the mask unchanged. Only removes
    permissions, so padding and hidden keys stay invisible."""
    if attention_mask.dim() != 4 or progress >= 1.0:
        return attention_mask
    length = attention_mask.shape[-1]
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    dropped = future & (torch.rand(length, length, generator=generator) >= progress)
    return attention_mask & ~dropped.to(attention_mask.device)


def to_model_mask(attention_mask: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """Give a bool 4D mask the form the attention implementation expects: `sdpa` takes it as is
    (True = attend); `eager` adds the mask to the scores, so it becomes 0 / dtype-min. 2D padding
    masks are returned unchanged."""
    if attention_mask.dim() != 4 or attention_mask.dtype != torch.bool or attn_implementation == "sdpa":
        return attention_mask
    blocked = torch.finfo(dtype).min
    return torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill(~attention_mask, blocked)


def attention_implementation(model) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) or "eager"


@contextlib.contextmanager
def masked_gqa_without_copies(model, attention_mask: torch.Tensor):
    """Let a grouped-query-attention model attend under a 4D mask on CPU without copying its key
    and value heads.

    transformers' `sdpa` path repeats every key/value head `num_attention_heads / num_key_value_heads`
    times whenever a mask is given (`repeat_kv`), because the CUDA kernels run GQA only without one;
    PyTorch's CPU flash-attention kernel takes a mask and GQA together, so on CPU the copies only
    cost time and memory (SmolLM2-135M: 3x its keys and values, kept for the backward pass).
    transformers reads TRANSFORMERS_SDPA_FORCE_GQA on every attention call; it is set for the
    forward inside this block only. Same numbers either way (a test checks). Not under gradient
    checkpointing, whose recomputation in the backward pass runs outside the block and would build
    differently shaped keys and values.
    """
    config = getattr(model, "config", None)
    grouped = (getattr(config, "num_key_value_heads", None) or 0) < (getattr(config, "num_attention_heads", None) or 0)
    checkpointing = any(getattr(module, "gradient_checkpointing", False) for module in model.modules())
    applies = (attention_mask.dim() == 4 and attention_mask.device.type == "cpu" and grouped and not checkpointing
               and attention_implementation(model) == "sdpa" and "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ)
    if not applies:
        yield
        return
    os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1"
    try:
        yield
    finally:
        os.environ.pop("TRANSFORMERS_SDPA_FORCE_GQA", None)
