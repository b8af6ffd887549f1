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
import dataclasses
import os

import torch


# flex_attention's block size (queries and keys): block masks are built over blocks of this many.
FLEX_BLOCK = 128


@dataclasses.dataclass
class TokenRule:
    """A batch's attention rule, stated per token: every mask mft builds is this rule evaluated on a
    [B, L, L] grid (`dense`, for eager and sdpa) or handed to flex_attention as a block mask
    (`block_mask`), so the two are the same mask by construction. All fields are [B, L]:

        valid    bool  a real token (padding is never a key)
        segment  long  the example a position belongs to: queries see only keys of their own
                       segment (packing; 0 everywhere in an unpacked row)
        causal   bool  the query's rule: causal (keys k <= q) or bidirectional (keys not hidden)
        hidden   bool  never a key under bidirectional attention (masked positions)
        sink     bool  the query sees only itself (position 0 of a `keep_sink` row)
        prompt   bool  a prompt position of a block-causal row: as a query it sees only prompt keys

    `anneal` = (progress, seed) drops each permission to attend to a later key (k > q) unless
    `future_kept(q, k, seed) < progress`: the same draw for every row and both mask forms.
    """

    valid: torch.Tensor
    segment: torch.Tensor
    causal: torch.Tensor
    hidden: torch.Tensor
    sink: torch.Tensor
    prompt: torch.Tensor
    anneal: tuple[float, int] | None = None

    TENSORS = ("valid", "segment", "causal", "hidden", "sink", "prompt")

    def allows(self, b, q, k) -> torch.Tensor:
        """True where query q of row b may attend to key k; b, q, k broadcast (tensors of indices)."""
        same = self.segment[b, q] == self.segment[b, k]
        by_rule = torch.where(self.causal[b, q], k <= q, ~self.hidden[b, k])
        allowed = self.valid[b, k] & same & by_rule & ~self.sink[b, q] & ~(self.prompt[b, q] & ~self.prompt[b, k])
        if self.anneal is not None:
            progress, seed = self.anneal
            allowed = allowed & ((k <= q) | (future_kept(q, k, seed) < progress))
        return allowed | (q == k)

    def dense(self) -> torch.Tensor:
        """Bool [B, 1, L, L], True = may attend."""
        batch, length = self.valid.shape
        index = torch.arange(length, device=self.valid.device)
        rows = torch.arange(batch, device=self.valid.device)[:, None, None]
        return self.allows(rows, index[None, :, None], index[None, None, :])[:, None]

    def block_mask(self):
        """A flex_attention `BlockMask` of the same rule: [B, 1, L, L] never materialised, only the
        blocks of 128 x 128 that hold an allowed pair are visited."""
        from torch.nn.attention.flex_attention import create_block_mask

        batch, length = self.valid.shape
        padded = self.padded_to(-(-length // FLEX_BLOCK) * FLEX_BLOCK)
        # _compile: the mask_mod is evaluated block by block in a compiled kernel; uncompiled,
        # create_block_mask evaluates it on the whole [B, L, L] grid (with int64 temporaries)
        return create_block_mask(lambda b, h, q, k: padded.allows(b, q, k), batch, None, length, length,
                                 device=self.valid.device, _compile=True)

    def padded_to(self, length: int) -> "TokenRule":
        """The rule over `length` >= L positions, the extra ones padding (not valid, a segment of
        their own). The kernels visit whole blocks, so the mask_mod may be asked about indices up to
        the next multiple of the block size; they must be in range (on CPU an index past the end
        reads arbitrary memory)."""
        extra = length - self.valid.shape[1]
        if extra <= 0:
            return self
        grow = lambda tensor, value: torch.nn.functional.pad(tensor, (0, extra), value=value)  # noqa: E731
        return TokenRule(valid=grow(self.valid, False), segment=grow(self.segment, -1), causal=grow(self.causal, False),
                         hidden=grow(self.hidden, False), sink=grow(self.sink, False), prompt=grow(self.prompt, False),
                         anneal=self.anneal)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.TENSORS}


def future_kept(q: torch.Tensor, k: torch.Tensor, seed: int) -> torch.Tensor:
    """A uniform draw in [0, 1) per (query, key) pair from an integer hash of (q, k, seed), so that
    a dense mask and flex_attention's mask_mod, which sees one pair at a time, draw alike."""
    x = (q.to(torch.int64) * 73856093) ^ (k.to(torch.int64) * 19349663) ^ (seed & 0x7FFFFFFF)
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    x = x ^ (x >> 16)
    return x.to(torch.float64) / 2.0 ** 32


def rows_rule(key_valid: torch.Tensor, causal: torch.Tensor, hidden: torch.Tensor | None = None,
              sink: torch.Tensor | None = None, prompt: torch.Tensor | None = None) -> TokenRule:
    """The rule of unpacked rows, one example per row. key_valid: bool [B, L] (False on padding);
    causal: bool [B] (per row); hidden: bool [B, L] or None; sink: bool [B] (per row) or None;
    prompt: bool [B, L] or None (the prompt of a block-causal row)."""
    batch, length = key_valid.shape
    false = torch.zeros_like(key_valid)
    sink_query = false.clone()
    if sink is not None:
        sink_query[:, 0] = sink & ~causal
    return TokenRule(valid=key_valid, segment=torch.zeros(batch, length, dtype=torch.long, device=key_valid.device),
                     causal=causal[:, None].expand(batch, length), hidden=false if hidden is None else hidden,
                     sink=sink_query, prompt=false if prompt is None else prompt)


def packed_rule(segments: torch.Tensor, causal: torch.Tensor, hidden: torch.Tensor, sink_start: torch.Tensor,
                prompt: torch.Tensor | None = None) -> TokenRule:
    """The rule of rows that hold several examples one after another (packing): each example attends
    only inside itself by its own rule. segments: long [B, L], the example of each position (-1 on
    padding); causal: bool [B, L], the rule of the position's example; hidden: bool [B, L];
    sink_start: bool [B, L], True at the first position of a `sink` example; prompt: bool [B, L] or
    None, the prompt positions of block-causal examples."""
    return TokenRule(valid=segments >= 0, segment=segments, causal=causal, hidden=hidden, sink=sink_start,
                     prompt=torch.zeros_like(hidden) if prompt is None else prompt)


def attention_mask_4d(key_valid: torch.Tensor, causal: torch.Tensor, hidden: torch.Tensor | None = None,
                      sink: torch.Tensor | None = None, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [B, 1, L, L], True = may attend: `rows_rule(...)` evaluated densely."""
    return rows_rule(key_valid, causal, hidden, sink, prompt).dense()


def packed_attention_mask(segments: torch.Tensor, causal: torch.Tensor, hidden: torch.Tensor,
                          sink_start: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [B, 1, L, L] for packed rows: `packed_rule(...)` evaluated densely (block diagonal)."""
    return packed_rule(segments, causal, hidden, sink_start, prompt).dense()


def anneal_to_bidirectional(attention_mask: torch.Tensor, progress: float, seed: int) -> torch.Tensor:
    """Attention annealing from causal to bidirectional: keep each permission to attend to a
    *later* key (k > q) with probability `progress` in [0, 1] (the draw `future_kept(q, k, seed)`,
    the same for every row), and every permission to earlier keys. progress 0 = causal, 1 = the
    mask unchanged. Only removes permissions, so padding and hidden keys stay invisible."""
    if attention_mask.dim() != 4 or progress >= 1.0:
        return attention_mask
    length = attention_mask.shape[-1]
    index = torch.arange(length, device=attention_mask.device)
    q, k = index[:, None], index[None, :]
    return attention_mask & ((k <= q) | (future_kept(q, k, seed) < progress))


def to_model_mask(attention_mask: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """Give a bool 4D mask the form the attention implementation expects: `sdpa` takes it as is
    (True = attend); `eager` adds the mask to the scores, so it becomes 0 / dtype-min;
    `flex_attention` gets a block mask that reads it (decoding's small masks; training batches bring
    their `TokenRule` instead). 2D padding masks are returned unchanged."""
    if attention_mask.dim() != 4 or attention_mask.dtype != torch.bool or attn_implementation == "sdpa":
        return attention_mask
    if attn_implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        batch, _, queries, keys = attention_mask.shape
        round_up = lambda n: -(-n // FLEX_BLOCK) * FLEX_BLOCK  # noqa: E731 (indices up to the block edge, see TokenRule)
        padded = torch.nn.functional.pad(attention_mask, (0, round_up(keys) - keys, 0, round_up(queries) - queries))
        return create_block_mask(lambda b, h, q, k: padded[b, 0, q, k], batch, None, queries, keys,
                                 device=attention_mask.device)
    blocked = torch.finfo(dtype).min
    return torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill(~attention_mask, blocked)


def attention_implementation(model) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) or "eager"


@contextlib.contextmanager
def attention_implementation_for_masks(model):
    """Inside the block a flash_attention_2 model attends with sdpa, which takes the 4D masks of
    masked decoding (flash-attention takes no mask beyond padding); other models are unchanged."""
    if attention_implementation(model) != "flash_attention_2":
        yield
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        base.set_attn_implementation("flash_attention_2")


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
    applies = (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4 and attention_mask.device.type == "cpu" and grouped and not checkpointing
               and attention_implementation(model) == "sdpa" and "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ)
    if not applies:
        yield
        return
    os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1"
    try:
        yield
    finally:
        os.environ.pop("TRANSFORMERS_SDPA_FORCE_GQA", None)
