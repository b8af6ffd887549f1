"""Greedy answer generation for evaluation.

`causal`: plain left-to-right generation with causal attention (`model.generate`, greedy).

`masked`: left-to-right masked decoding, as in the factorization-curse paper. Given the context
x_<n, append one mask slot at position n, run the model with bidirectional attention (the slot is
not a key for anyone, see `mft.objectives.masked`, unless the model was trained with
`attend_to_masked`; with `keep_sink` position 0 sees only itself, as in training), take the arg-max
token at the slot, write it in,
and repeat with the next slot until the end-of-sequence token or `max_new_tokens`. This asks the
model exactly what MLM-U training asked it: predict a masked token from the visible ones.
Special tokens other than EOS (mask, pad, bos, ...) are never generated.

`masked_any_order`: masked decoding in the order of confidence, as absorbing-state diffusion models
decode (MaskGIT; LLaDA's "low-confidence remasking" with one token per step, greedy). The context is
followed by `max_new_tokens` mask slots, none of them a key; each step runs the model once, takes
every open slot's arg-max token and its probability, and writes in the one token the model is surest
of, which becomes visible to all. An EOS written at slot k ends the answer there: the slots after it
are dropped. The answer may thus be built from its end (a path from its goal back to its start, a
name from its last word), which left-to-right decoding never allows.
"""

from __future__ import annotations

import torch

from .models.attention import attention_implementation, attention_mask_4d, to_model_mask
from .objectives import DECODINGS
from .errors import RecipeError


@torch.no_grad()
def generate_causal(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuation of each prompt (token ids), without the prompt, cut at EOS."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    length = max(len(p) for p in prompts)
    # Left padding: every prompt ends at the same position, where generation starts.
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        input_ids[i, length - len(prompt):] = torch.tensor(prompt)
        attention_mask[i, length - len(prompt):] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    if not (hasattr(model, "can_generate") and model.can_generate()):
        output = _greedy_without_cache(model, input_ids, attention_mask, max_new_tokens, tokenizer.eos_token_id)
    else:
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id,
        )
    return [_cut_at_eos(row[length:].tolist(), tokenizer.eos_token_id) for row in output]


def _greedy_without_cache(model, input_ids, attention_mask, max_new_tokens: int, eos_id: int) -> torch.Tensor:
    """Greedy decoding for a model without `generate` (mft's encoder-decoder model: its decoder
    has no key/value cache, so the whole sequence is re-run each step; fine at task scale)."""
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -1]
        next_tokens = torch.where(finished, torch.full_like(finished, eos_id, dtype=torch.long), logits.argmax(-1))
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        finished |= next_tokens == eos_id
        if finished.all():
            break
    return input_ids


@torch.no_grad()
def generate_masked(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                    shift: bool = False, keep_sink: bool = False, attend_to_masked: bool = False) -> list[list[int]]:
    """Left-to-right masked decoding (one mask slot at a time), greedy; see the module docstring.
    With `shift` (a model trained with a shifted masked objective) the slot's token is read from
    the logits one position to its left; with `attend_to_masked` the slot is an attention key, as
    masked positions were in training."""
    if tokenizer.mask_token_id is None:
        raise RecipeError("masked decoding needs a tokenizer with a mask token")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    banned = [i for i in tokenizer.all_special_ids if i != tokenizer.eos_token_id]

    sequences = [list(p) for p in prompts]
    answers: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    for _ in range(max_new_tokens):
        if not active:
            break
        rows = [sequences[i] + [tokenizer.mask_token_id] for i in active]
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        key_valid = torch.zeros((len(rows), length), dtype=torch.bool)
        hidden = torch.zeros((len(rows), length), dtype=torch.bool)
        slots = torch.tensor([len(r) - 1 for r in rows])
        for b, row in enumerate(rows):
            input_ids[b, : len(row)] = torch.tensor(row)
            key_valid[b, : len(row)] = True
            hidden[b, len(row) - 1] = not attend_to_masked
        mask = attention_mask_4d(key_valid, torch.zeros(len(rows), dtype=torch.bool), hidden,
                                 torch.full((len(rows),), keep_sink))
        logits = model(input_ids=input_ids.to(device), attention_mask=to_model_mask(mask.to(device), attention_implementation(model), dtype)).logits
        slot_logits = logits[torch.arange(len(rows)), (slots - int(shift)).to(device)].float()
        slot_logits[:, banned] = float("-inf")
        next_tokens = slot_logits.argmax(-1).tolist()
        still_active = []
        for i, token in zip(active, next_tokens):
            if token == tokenizer.eos_token_id:
                continue
            sequences[i].append(token)
            answers[i].append(token)
            still_active.append(i)
        active = still_active
    return answers


@torch.no_grad()
def generate_masked_any_order(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                              shift: bool = False, keep_sink: bool = False,
                              attend_to_masked: bool = False) -> list[list[int]]:
    """Greedy masked decoding, most confident slot first; see the module docstring. With `shift`
    the slot at p is read from the logits at p - 1, as in `generate_masked`."""
    if tokenizer.mask_token_id is None:
        raise RecipeError("masked decoding needs a tokenizer with a mask token")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = tokenizer.eos_token_id
    banned = [i for i in tokenizer.all_special_ids if i != eos_id]

    batch = len(prompts)
    starts = torch.tensor([len(p) for p in prompts])
    ends = starts + max_new_tokens  # one past the last slot; an EOS moves it to just after itself
    length = int(ends.max())
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    for b, prompt in enumerate(prompts):
        input_ids[b, :len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        input_ids[b, len(prompt):int(ends[b])] = tokenizer.mask_token_id
    positions = torch.arange(length)[None]
    is_slot = (positions >= starts[:, None]) & (positions < ends[:, None])
    rows = torch.arange(batch)
    for _ in range(max_new_tokens):
        key_valid = positions < ends[:, None]
        open_slots = is_slot & key_valid & (input_ids == tokenizer.mask_token_id)
        if not open_slots.any():
            break
        mask = attention_mask_4d(key_valid, torch.zeros(batch, dtype=torch.bool),
                                 torch.zeros_like(open_slots) if attend_to_masked else open_slots,
                                 torch.full((batch,), keep_sink))
        logits = model(input_ids=input_ids.to(device),
                       attention_mask=to_model_mask(mask.to(device), attention_implementation(model), dtype)).logits
        if shift:  # the logits at p - 1 predict the token at p
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        where = open_slots.to(device)
        slot_logits = logits[where].float()
        slot_logits[:, banned] = float("-inf")
        confidence, tokens = slot_logits.softmax(-1).max(-1)
        best_confidence = torch.full((batch, length), -1.0, device=device)
        best_confidence[where] = confidence
        best_token = torch.full((batch, length), pad_id, dtype=torch.long, device=device)
        best_token[where] = tokens
        chosen = best_confidence.argmax(-1).cpu()
        active = open_slots.any(-1)
        token = best_token.cpu()[rows, chosen]
        input_ids[rows[active], chosen[active]] = token[active]
        finished = active & (token == eos_id)
        ends[finished] = chosen[finished] + 1
    answers = []
    for b in range(batch):
        answer = input_ids[b, int(starts[b]):int(ends[b])].tolist()
        answers.append(_cut_at_eos(answer, eos_id))
    return answers


def generate(model, tokenizer, prompts: list[list[int]], decoding: str, max_new_tokens: int, batch_size: int = 64,
             shift: bool = False, keep_sink: bool = False, attend_to_masked: bool = False) -> list[list[int]]:
    """Greedy answers (token ids, without the prompt, cut at EOS) to `prompts`, `batch_size` at a
    time, by the `decoding` method (one of `DECODINGS`). `shift`, `keep_sink` and
    `attend_to_masked` are the rules the model was trained with (`Objective.decoding_options()`);
    causal decoding needs none of them."""
    if decoding not in DECODINGS:
        raise RecipeError(f"decoding = {decoding!r} is not a decoding method; use one of {', '.join(DECODINGS)}")
    if max_new_tokens < 1:
        raise RecipeError(f"max_new_tokens = {max_new_tokens}; answers need at least 1 new token")
    masked_rules = {"shift": shift, "keep_sink": keep_sink, "attend_to_masked": attend_to_masked}
    answers = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        if decoding == "masked":
            answers.extend(generate_masked(model, tokenizer, batch, max_new_tokens, **masked_rules))
        elif decoding == "masked_any_order":
            answers.extend(generate_masked_any_order(model, tokenizer, batch, max_new_tokens, **masked_rules))
        else:
            answers.extend(generate_causal(model, tokenizer, batch, max_new_tokens))
    return answers


def _cut_at_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens
