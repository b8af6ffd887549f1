"""Bidirectional attention on Hugging Face causal-LM architectures through the collator's 4D mask:
later tokens reach earlier positions under a masked objective (and not under `ar`), padding and hidden
(masked) slots are never attended to, and `eager` and `sdpa` agree."""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from mft import MFTCollator
from mft.data import build_word_tokenizer
from mft.models.attention import attention_mask_4d, to_model_mask
from mft.objectives import build_objective

WORDS = [f"w{i}" for i in range(40)]
TOKENIZER = build_word_tokenizer([" ".join(WORDS)])
PAD, BOS, EOS, MASK = (TOKENIZER.pad_token_id, TOKENIZER.bos_token_id, TOKENIZER.eos_token_id,
                       TOKENIZER.mask_token_id)
FIRST_WORD = TOKENIZER.convert_tokens_to_ids("w0")
VOCAB = len(TOKENIZER)

ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"use_sliding_window": False}),
}
IMPLS = ["eager", "sdpa"]

CHANGED = 1e-4   # a difference that counts as "the logits changed"
SAME_EXACT = 1e-6  # same computation, a masked-out input changed
SAME_PADDED = 1e-5  # same row, computed inside a padded batch




@functools.lru_cache(maxsize=None)
def model(arch: str, impl: str):
    config_cls, model_cls, extra = ARCHS[arch]
    config = config_cls(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, attn_implementation=impl, **extra)
    torch.manual_seed(0)
    m = model_cls(config).eval()
    assert m.config._attn_implementation == impl
    return m


def logits(arch: str, impl: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(arch, impl)(input_ids=input_ids,
                                 attention_mask=to_model_mask(attention_mask, impl, torch.float32)).logits


def example(num_words: int, seed: int, index: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(FIRST_WORD, VOCAB, (num_words,), generator=g).tolist()
    return {"input_ids": [BOS, *words, EOS], "prompt_length": 0, "example_index": index, "epoch": 0}


def collator(objective: str, **options) -> MFTCollator:
    return MFTCollator(build_objective(objective, **options), TOKENIZER, seed=0)


def other_token(token: int) -> int:
    return FIRST_WORD + (token - FIRST_WORD + 7) % (VOCAB - FIRST_WORD)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


params = pytest.mark.parametrize("impl", IMPLS)
archs = pytest.mark.parametrize("arch", list(ARCHS))


# -- bidirectional vs causal -----------------------------------------------------------------------


@params
@archs
def test_later_visible_token_reaches_earlier_position_under_bidirectional_mask(arch, impl):
    batch = collator("mlm_u", low=0.3, high=0.3)([example(12, seed=1, index=0)])
    assert batch["attention_mask"].dim() == 4
    ids = batch["input_ids"]
    visible = (ids[0] != MASK) & (ids[0] != BOS) & (ids[0] != EOS)
    later = visible.nonzero().flatten()[-1].item()
    assert later >= 4
    base = logits(arch, impl, ids, batch["attention_mask"])
    changed_ids = ids.clone()
    changed_ids[0, later] = other_token(ids[0, later].item())
    changed = logits(arch, impl, changed_ids, batch["attention_mask"])
    for earlier in range(later):  # every earlier position, masked slots and visible tokens alike
        assert max_diff(base[0, earlier], changed[0, earlier]) > CHANGED, earlier


@params
@archs
def test_sink_row_keeps_position_0_causal_and_everything_else_bidirectional(arch, impl):
    """keep_sink: the first position sees itself alone (its logits ignore every later token), while
    every later position still sees the later visible tokens."""
    batch = collator("mlm_u", low=0.3, high=0.3, shift=True, keep_sink=True)([example(12, seed=1, index=0)])
    mask = batch["attention_mask"]
    assert mask.dim() == 4 and mask[0, 0, 0].tolist() == [True] + [False] * (mask.shape[-1] - 1)
    ids = batch["input_ids"]
    assert ids[0, :2].tolist() == [BOS, BOS]  # a second start token: position 0 predicts nothing
    visible = (ids[0] != MASK) & (ids[0] != BOS) & (ids[0] != EOS)
    later = visible.nonzero().flatten()[-1].item()
    base = logits(arch, impl, ids, mask)
    changed_ids = ids.clone()
    changed_ids[0, later] = other_token(ids[0, later].item())
    changed = logits(arch, impl, changed_ids, mask)
    assert max_diff(base[0, 0], changed[0, 0]) < SAME_EXACT
    for earlier in range(1, later):
        assert max_diff(base[0, earlier], changed[0, earlier]) > CHANGED, earlier
    plain = collator("mlm_u", low=0.3, high=0.3, shift=True)([example(12, seed=1, index=0)])
    assert plain["attention_mask"][0, 0, 0].sum() > 1  # without keep_sink position 0 looks ahead


@params
@archs
def test_later_token_does_not_reach_earlier_position_under_ar(arch, impl):
    batch = collator("ar")([example(12, seed=1, index=0), example(7, seed=2, index=1)])
    assert batch["attention_mask"].dim() == 2
    ids = batch["input_ids"]
    base = logits(arch, impl, ids, batch["attention_mask"])
    position = 5
    changed_ids = ids.clone()
    changed_ids[:, position] = torch.tensor([other_token(t) for t in ids[:, position].tolist()])
    changed = logits(arch, impl, changed_ids, batch["attention_mask"])
    assert max_diff(base[:, :position], changed[:, :position]) < SAME_EXACT
    for row in range(2):
        assert max_diff(base[row, position], changed[row, position]) > CHANGED
        assert max_diff(base[row, position + 1], changed[row, position + 1]) > CHANGED


@params
@archs
def test_collator_4d_causal_rows_match_the_models_own_causal_mask(arch, impl):
    # The 4D rule for causal rows (attention_mask_4d with causal=True) is the model's causal mask.
    batch = collator("ar")([example(12, seed=1, index=0), example(7, seed=2, index=1)])
    key_valid = batch["attention_mask"].bool()
    mask_4d = attention_mask_4d(key_valid, torch.tensor([True, True]))
    own = logits(arch, impl, batch["input_ids"], batch["attention_mask"])
    ours = logits(arch, impl, batch["input_ids"], mask_4d)
    for row, n in enumerate(key_valid.sum(1).tolist()):
        assert max_diff(own[row, :n], ours[row, :n]) < SAME_PADDED


# -- padding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["ar", "mlm_u"])
@params
@archs
def test_padding_is_never_attended(arch, impl, objective):
    short, long = example(5, seed=3, index=0), example(13, seed=4, index=1)
    c = collator(objective)
    alone = c([short])
    padded = c([short, long])
    n = len(short["input_ids"])
    assert padded["input_ids"].shape[1] > n + 5
    assert torch.equal(alone["input_ids"][0], padded["input_ids"][0, :n])  # same mask both times
    base_alone = logits(arch, impl, alone["input_ids"], alone["attention_mask"])
    base_padded = logits(arch, impl, padded["input_ids"], padded["attention_mask"])
    assert max_diff(base_alone[0], base_padded[0, :n]) < SAME_PADDED

    # whatever sits in the padded slots changes nothing in either row
    junk = padded["input_ids"].clone()
    junk[0, n:] = torch.randint(FIRST_WORD, VOCAB, (junk.shape[1] - n,), generator=torch.Generator().manual_seed(0))
    with_junk = logits(arch, impl, junk, padded["attention_mask"])
    assert max_diff(base_padded[0, :n], with_junk[0, :n]) < SAME_EXACT
    assert max_diff(base_padded[1], with_junk[1]) < SAME_EXACT


# -- hidden (masked) keys --------------------------------------------------------------------------


@params
@archs
def test_hidden_positions_are_not_attended(arch, impl):
    batch = collator("mlm_u", low=0.4, high=0.4)([example(14, seed=5, index=0), example(6, seed=6, index=1)])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    hidden = (ids == MASK).nonzero().tolist()
    assert len(hidden) >= 3
    base = logits(arch, impl, ids, mask)
    for row, position in hidden:
        changed_ids = ids.clone()
        changed_ids[row, position] = FIRST_WORD + position
        changed = logits(arch, impl, changed_ids, mask)
        others = torch.ones(ids.shape[1], dtype=torch.bool)
        others[position] = False
        assert max_diff(base[row, others], changed[row, others]) < SAME_EXACT, (row, position)
        assert max_diff(base[1 - row], changed[1 - row]) < SAME_EXACT
        # the slot itself reads its own input (the diagonal is always allowed)
        assert max_diff(base[row, position], changed[row, position]) > CHANGED


@params
@archs
def test_masked_slots_are_attended_with_attend_to_masked(arch, impl):
    batch = collator("mlm_u", low=0.4, high=0.4, attend_to_masked=True)([example(14, seed=5, index=0)])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    position = (ids[0] == MASK).nonzero().flatten()[0].item()
    changed_ids = ids.clone()
    changed_ids[0, position] = FIRST_WORD
    base, changed = logits(arch, impl, ids, mask), logits(arch, impl, changed_ids, mask)
    assert max_diff(base[0, position + 1], changed[0, position + 1]) > CHANGED
    assert max_diff(base[0, 0], changed[0, 0]) > CHANGED


# -- implementations agree -------------------------------------------------------------------------


@archs
@pytest.mark.parametrize("objective", ["mlm_u", "ar"])
def test_eager_and_sdpa_agree(arch, objective):
    eager, sdpa = model(arch, "eager"), model(arch, "sdpa")
    for (name, a), (_, b) in zip(eager.state_dict().items(), sdpa.state_dict().items()):
        assert torch.equal(a, b), name
    batch = collator(objective)([example(n, seed=n, index=i) for i, n in enumerate((4, 13, 8))])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out_eager, out_sdpa = logits(arch, "eager", ids, mask), logits(arch, "sdpa", ids, mask)
    for row, n in enumerate((ids != PAD).sum(1).tolist()):
        assert max_diff(out_eager[row, :n], out_sdpa[row, :n]) < 1e-4


# -- to_model_mask ---------------------------------------------------------------------------------


def test_to_model_mask_forms():
    allowed = attention_mask_4d(torch.tensor([[True, True, False]]), torch.tensor([False]),
                                torch.tensor([[False, True, False]]))
    assert allowed[0, 0].tolist() == [[True, False, False], [True, True, False], [True, False, True]]
    assert to_model_mask(allowed, "sdpa", torch.float32) is allowed
    additive = to_model_mask(allowed, "eager", torch.float32)
    assert additive.dtype == torch.float32 and additive.shape == allowed.shape
    assert (additive[allowed] == 0).all()
    assert (additive[~allowed] == torch.finfo(torch.float32).min).all()
    assert to_model_mask(allowed, "eager", torch.bfloat16).dtype == torch.bfloat16
    flat = torch.ones(2, 5, dtype=torch.long)
    assert to_model_mask(flat, "eager", torch.float32) is flat


# -- grouped-query attention under a 4D mask on CPU ------------------------------------------------


@archs
def test_masked_gqa_runs_without_key_value_copies_and_gives_the_same_gradients(arch, monkeypatch):
    """On CPU the sdpa path need not repeat key/value heads under a mask (PyTorch's CPU kernel takes
    masked GQA); inside `masked_gqa_without_copies` it does not, with identical logits and gradients."""
    import transformers.integrations.sdpa_attention as sdpa_attention

    from mft.models.attention import masked_gqa_without_copies

    copies = []
    repeat_kv = sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda states, n_rep: copies.append(n_rep) or repeat_kv(states, n_rep))
    net = model(arch, "sdpa")
    assert net.config.num_key_value_heads < net.config.num_attention_heads
    batch = collator("mlm_u", low=0.5, high=0.5)([example(12, seed=s, index=s) for s in range(3)])
    mask = to_model_mask(batch["attention_mask"], "sdpa", torch.float32)

    def logits_and_gradients(no_copies: bool):
        net.zero_grad()
        copies.clear()
        if no_copies:
            with masked_gqa_without_copies(net, mask):
                out = net(input_ids=batch["input_ids"], attention_mask=mask).logits
        else:
            out = net(input_ids=batch["input_ids"], attention_mask=mask).logits
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in net.parameters()], list(copies)

    plain_logits, plain_grads, plain_copies = logits_and_gradients(False)
    fast_logits, fast_grads, fast_copies = logits_and_gradients(True)
    assert plain_copies and all(n > 1 for n in plain_copies)  # transformers copies heads by default
    assert not any(n > 1 for n in fast_copies)
    assert max_diff(plain_logits, fast_logits) < SAME_PADDED
    assert all(max_diff(a, b) < SAME_PADDED for a, b in zip(plain_grads, fast_grads))
    assert "TRANSFORMERS_SDPA_FORCE_GQA" not in __import__("os").environ  # only inside the block
    net.zero_grad(set_to_none=True)  # the model is shared with the other tests
    # under gradient checkpointing the backward pass recomputes outside the block: left alone
    net.activation_checkpointing_enable()
    try:
        with masked_gqa_without_copies(net, mask):
            assert "TRANSFORMERS_SDPA_FORCE_GQA" not in __import__("os").environ
    finally:
        net.activation_checkpointing_disable()
