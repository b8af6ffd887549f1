"""Greedy answer generation for evaluation.

`causal`: plain left-to-right generation with causal attention (`model.generate`, greedy).

`masked`: left-to-right masked decoding, as in the factorization-curse paper. Given the context
x_<n, append one mask slot at position n, run the model with bidirectional attention (the slot is
not a key for anyone, see `mft.objectives.masked`, unless the model was trained with
`attend_to_masked`; with `keep_sink` position 0 sees only itself, as in training), take the arg-max
token at the slot, write it in,
and repeat with the next slot until the end-of-sequence token or `max_new_tokens`. This asks the
model exactly what MLM-U training asked it: predict a masked token from the visible ones.
Special tokens other than EOS (mask, pad, bos, ...) are never generated. The question's ids begin
as its training rows began (`encode_question`): under `shift` and `keep_sink` a completion-format
probe gets the start tokens the collator put in front of every text row.

`masked_any_order`: masked decoding in the order of confidence, as absorbing-state diffusion models
decode (MaskGIT; LLaDA's "low-confidence remasking" with one token per step, greedy). The context is
followed by `max_new_tokens` mask slots, none of them a key; each step runs the model once, takes
every open slot's arg-max token and its probability, and writes in the one token the model is surest
of, which becomes visible to all. An EOS written at slot k ends the answer there: the slots after it
are dropped. The answer may thus be built from its end (a path from its goal back to its start, a
name from its last word), which left-to-right decoding never allows.

Speed options of masked decoding (BENCHMARKS.md, "Masked decoding variants"): `slots_only` runs
the LM head only at the positions read (exact; the default); `threshold` writes several slots per
step (Fast-dLLM's threshold-parallel decoding; not exact): left to right, the first slot and the
slots after it while each is at least that probable; in any order, every slot that probable; `prompt_cache` (`generate_masked_cached`) computes the prompt's keys and values once,
which is exact for a model whose prompt never attended to its answer (`prompt_sees_answer=False`)
and an approximation otherwise.

`DecodingSpec` (saved as `mft_decoding.json` beside every model mft writes) holds the rules above
that a trained model needs, so that whoever loads it (`mft.load`) decodes as its training did.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from .models.attention import (attention_implementation, attention_implementation_for_masks, attention_mask_4d,
                               to_model_mask)
from .data.tokenize import encode_prompt
from .objectives import DECODINGS
from .objectives.base import SpecialTokens
from .objectives.masked import start_tokens
from .errors import RecipeError

# Saved beside every model mft writes (run folder, checkpoint, merged model, Hub repo).
SPEC_FILE = "mft_decoding.json"


@dataclasses.dataclass(frozen=True)
class DecodingSpec:
    """How a trained model answers: what inference must repeat of its training. Saved as
    `mft_decoding.json` beside the weights; a model without one is a plain causal LM
    (`DecodingSpec()`: causal decoding, no masked rules).

        objective          the training objective's name ("mlm_u", "mixture", ...; "none": not mft's)
        decoding           the default decoding method (one of `DECODINGS`)
        shift, keep_sink, attend_to_masked, prompt_sees_answer
                           the masked rules the model was trained with (see `generate_masked`)
        mask_token         the mask token masked decoding writes into the slots
        max_new_tokens     the default answer length
        chat               questions go through the tokenizer's chat template (completion probes never
                           do); the system prompt is already in the saved template
        system_prompt      that system prompt as the recipe gave it (None: the template's default)
    """

    objective: str = "none"
    decoding: str = "causal"
    shift: bool = False
    keep_sink: bool = False
    attend_to_masked: bool = False
    prompt_sees_answer: bool = True
    mask_token: str | None = None
    max_new_tokens: int = 24
    chat: bool = True
    system_prompt: str | None = None

    @classmethod
    def of(cls, objective, tokenizer, decoding: str | None = None, max_new_tokens: int | None = None,
           system_prompt: str | None = None) -> "DecodingSpec":
        """The spec of a model trained with `objective` (decoding: the recipe's choice, else the
        objective's natural one)."""
        return cls(objective=objective.name, decoding=decoding or objective.decoding, **objective.decoding_options(),
                   mask_token=getattr(tokenizer, "mask_token", None),
                   max_new_tokens=max_new_tokens or cls.max_new_tokens,
                   chat=bool(getattr(tokenizer, "chat_template", None)), system_prompt=system_prompt)

    def rules(self) -> dict[str, bool]:
        """The masked rules, as keyword arguments of `generate`."""
        return {"shift": self.shift, "keep_sink": self.keep_sink, "attend_to_masked": self.attend_to_masked,
                "prompt_sees_answer": self.prompt_sees_answer}

    def save(self, folder: str | Path) -> None:
        Path(folder, SPEC_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, folder: str | Path) -> "DecodingSpec | None":
        """The spec saved in `folder`, or None when there is none; a spec that is not one is refused
        in one line naming the file and the field."""
        path = Path(folder, SPEC_FILE)
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise RecipeError(f"{path} is not readable JSON ({error}); delete it to decode causally, or re-save the model "
                              f"with mft") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: Any, where: str = SPEC_FILE) -> "DecodingSpec":
        if not isinstance(raw, dict):
            raise RecipeError(f"{where} holds {type(raw).__name__}, not a mapping of decoding settings")
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise RecipeError(f"{where}: unknown field {unknown[0]!r}; the fields are {', '.join(fields)}")
        spec = cls(**raw)
        if spec.decoding not in DECODINGS:
            raise RecipeError(f"{where}: decoding = {spec.decoding!r}; use one of {', '.join(DECODINGS)}")
        for name in ("shift", "keep_sink", "attend_to_masked", "prompt_sees_answer", "chat"):
            if not isinstance(getattr(spec, name), bool):
                raise RecipeError(f"{where}: {name} = {getattr(spec, name)!r}; use true or false")
        if not isinstance(spec.max_new_tokens, int) or isinstance(spec.max_new_tokens, bool) or spec.max_new_tokens < 1:
            raise RecipeError(f"{where}: max_new_tokens = {spec.max_new_tokens!r}; use a whole number of at least 1")
        return spec


def encode_question(tokenizer, question: str, chat: bool, decoding: str, shift: bool = False,
                    keep_sink: bool = False) -> list[int]:
    """The ids a question is answered from: `encode_prompt`'s context (a chat turn, or a
    completion-format probe's raw text) and, for masked decoding, the start tokens that a training
    row beginning the same way had in front (`mft.objectives.masked.start_tokens`). A completion
    probe begins as a text row did; a chat question as a prompt row, whose prompt is not predicted
    (`predict_prompt: false`, as in every pretrained recipe). Without them a SmolLM2 probe would put
    its first word where every training row had the sink and a second start token."""
    ids = encode_prompt(tokenizer, question, chat=chat)
    if decoding == "causal":
        return ids
    special = SpecialTokens.from_tokenizer(tokenizer)
    return start_tokens(ids[:2], special, len(ids) if chat else 0, shift, keep_sink, predict_prompt=False) + ids


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


def logits_at(model, selected: torch.Tensor, slots_only: bool = True, **inputs) -> torch.Tensor:
    """[N, vocab] float logits of the `selected` [B, L] positions (row-major, as `tensor[selected]`)
    of `model(**inputs)`. With `slots_only` the LM head runs only there (`mft.loss`'s hook: no
    [batch, length, vocab] tensor), unless the model's head is not a plain projection."""
    from .loss import keep_predicted_hidden_states, output_head

    head = output_head(model) if slots_only else None
    if head is None:
        logits = model(**inputs).logits
        return logits[selected.to(logits.device)].float()
    with keep_predicted_hidden_states(head, selected) as kept:
        model(**inputs)
    return head(kept.hidden).float()


def _masked_model_inputs(model, input_ids: torch.Tensor, allowed: torch.Tensor, **extra) -> dict[str, Any]:
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    mask = to_model_mask(allowed.to(device), attention_implementation(model), dtype)
    return {"input_ids": input_ids.to(device), "attention_mask": mask,
            **{key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in extra.items()}}


def _block_prompt_from_answer(allowed: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    """`allowed` [B, 1, L, L] with every prompt query (position < prompt length) barred from the keys
    after the prompt: the rule of a model trained with `prompt_sees_answer: false`."""
    positions = torch.arange(allowed.shape[-1])
    in_prompt = positions[None] < prompt_lengths[:, None]  # [B, L]
    barred = in_prompt[:, :, None] & ~in_prompt[:, None, :]
    return allowed & ~barred[:, None]


def _masked_decoding_tokens(tokenizer) -> tuple[int, int, int, list[int]]:
    """(EOS, mask, pad, the ids never generated: every special token but EOS) of masked decoding."""
    if tokenizer.mask_token_id is None:
        raise RecipeError("masked decoding needs a tokenizer with a mask token")
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    return eos_id, tokenizer.mask_token_id, pad_id, [i for i in tokenizer.all_special_ids if i != eos_id]


# Slots read per step by threshold-parallel left-to-right decoding: enough for most of a short
# answer in one step, few enough that the extra (hidden) slot positions cost little.
THRESHOLD_SLOTS = 8


def _accepted_run(tokens: list[int], confidences: list[float], threshold: float | None,
                  eos_id: int) -> tuple[list[int], bool]:
    """The tokens written from one row's slots (left to right): the first always, the next ones
    while each is at least `threshold` probable; an EOS ends the answer. Returns (tokens, ended)."""
    written: list[int] = []
    for j, (token, confidence) in enumerate(zip(tokens, confidences)):
        if j > 0 and (threshold is None or confidence < threshold):
            break
        if token == eos_id:
            return written, True
        written.append(token)
    return written, False


def _read_slots(slot_logits: torch.Tensor, banned: list[int], counts: list[int]) -> list[tuple[list[int], list[float]]]:
    """Arg-max token and its probability at each row's slots (`counts[b]` rows of `slot_logits`, in
    row order), special tokens other than EOS barred."""
    slot_logits[:, banned] = float("-inf")
    confidence, tokens = slot_logits.softmax(-1).max(-1)
    tokens, confidence = tokens.cpu().tolist(), confidence.cpu().tolist()
    out, at = [], 0
    for count in counts:
        out.append((tokens[at:at + count], confidence[at:at + count]))
        at += count
    return out


@torch.no_grad()
def generate_masked(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                    shift: bool = False, keep_sink: bool = False, attend_to_masked: bool = False,
                    prompt_sees_answer: bool = True, slots_only: bool = True,
                    threshold: float | None = None) -> list[list[int]]:
    """Left-to-right masked decoding (one mask slot at a time), greedy; see the module docstring.
    With `shift` (a model trained with a shifted masked objective) the slot's token is read from
    the logits one position to its left; with `attend_to_masked` the slot is an attention key, as
    masked positions were in training; without `prompt_sees_answer` no prompt position attends to
    the answer (block-causal training). `slots_only`: the LM head at the slots alone (exact).

    `threshold` (threshold-parallel, still left to right): each step appends up to
    `THRESHOLD_SLOTS` slots and writes the first one's token, as above, and then each following
    slot's while it is at least `threshold` probable. Without `attend_to_masked` the first slot's
    prediction is the one-slot decoder's (the extra slots are no one's keys); the later ones are
    predicted without the tokens just written before them, which is the approximation."""
    eos_id, mask_id, pad_id, banned = _masked_decoding_tokens(tokenizer)
    slots_per_step = 1 if threshold is None else THRESHOLD_SLOTS

    answers: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    while active:
        counts = [min(slots_per_step, max_new_tokens - len(answers[i])) for i in active]
        rows = [list(prompts[i]) + answers[i] + [mask_id] * count for i, count in zip(active, counts)]
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        key_valid = torch.zeros((len(rows), length), dtype=torch.bool)
        hidden = torch.zeros((len(rows), length), dtype=torch.bool)
        read = torch.zeros((len(rows), length), dtype=torch.bool)
        for b, (row, count) in enumerate(zip(rows, counts)):
            input_ids[b, : len(row)] = torch.tensor(row)
            key_valid[b, : len(row)] = True
            hidden[b, len(row) - count: len(row)] = not attend_to_masked
            read[b, len(row) - count - int(shift): len(row) - int(shift)] = True
        allowed = attention_mask_4d(key_valid, torch.zeros(len(rows), dtype=torch.bool), hidden,
                                    torch.full((len(rows),), keep_sink))
        if not prompt_sees_answer:
            allowed = _block_prompt_from_answer(allowed, torch.tensor([len(prompts[i]) for i in active]))
        slot_logits = logits_at(model, read, slots_only, **_masked_model_inputs(model, input_ids, allowed))
        still_active = []
        for i, (tokens, confidences) in zip(active, _read_slots(slot_logits, banned, counts)):
            written, ended = _accepted_run(tokens, confidences, threshold, eos_id)
            answers[i].extend(written)
            if not ended and len(answers[i]) < max_new_tokens:
                still_active.append(i)
        active = still_active
    return answers


@torch.no_grad()
def generate_masked_cached(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                           shift: bool = False, keep_sink: bool = False, attend_to_masked: bool = False,
                           slots_only: bool = True, threshold: float | None = None,
                           answer_cache: bool = False) -> list[list[int]]:
    """Left-to-right masked decoding with the prompt's keys and values computed once.

    The prompts are left-padded to a common end P (position ids restart at each prompt's first
    token) and run once, bidirectionally, into a key/value cache, which then drops their last token.
    Each step runs only [last prompt token, answer so far, the mask slots] against that cache, and
    the cache is cut back after it. Prompt positions therefore never attend to the answer: this is
    exactly `generate_masked(..., prompt_sees_answer=False)` (with the same `threshold`), the
    decoder of a model trained with `prompt_sees_answer: false`; for a model trained with the prompt
    seeing the answer it is an approximation (its cost is measured in BENCHMARKS.md, decoding). The
    last prompt token is re-run each step because with `shift` it predicts the first answer token.
    Rows advance at their own pace (with `threshold`); a row whose answer is finished leaves the
    batch and the cache.

    `answer_cache` (approximate for every masked model; not with `threshold`): each answer token's
    keys and values are kept too, as computed in the step after it was written, when it saw the
    prompt and the answer before it. Each step then runs [the token written last, one mask slot],
    whatever the answer's length; the answer's earlier tokens no longer see the
    later ones, which training showed them. With `shift` and hidden slots the slot itself is left
    out (it is read from the token before it and seen by no one): one position per step.
    Needs a model that takes `past_key_values` (Hugging Face causal LMs)."""
    from transformers import DynamicCache

    from .loss import cache_argument

    eos_id, mask_id, pad_id, banned = _masked_decoding_tokens(tokenizer)
    slots_per_step = 1 if threshold is None else THRESHOLD_SLOTS
    batch = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts])
    width = int(lengths.max())  # P
    start = width - lengths  # each prompt's first column
    prompt_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    for b, prompt in enumerate(prompts):
        prompt_ids[b, int(start[b]):] = torch.tensor(prompt, dtype=torch.long)
    columns = torch.arange(width + max_new_tokens)
    positions = (columns[None] - start[:, None]).clamp_min(0)

    def allowed_between(queries: torch.Tensor, key_valid: torch.Tensor, hidden_keys: torch.Tensor,
                        start: torch.Tensor) -> torch.Tensor:
        """[B, 1, q, keys]: the query columns `queries` attend to the valid, not hidden keys
        (columns 0 .. keys - 1), prompt queries to prompt keys only, the sink to itself alone."""
        keys = key_valid.shape[1]
        key_columns = columns[:keys]
        allowed = key_valid[:, None, :] & ~hidden_keys[:, None, :]
        prompt_query = queries[None, :, None] < width
        allowed = allowed & ~(prompt_query & (key_columns[None, None, :] >= width))
        if keep_sink:
            is_sink = queries[None, :] == start[:, None]  # [B, q]
            allowed = allowed & ~is_sink[:, :, None]
        allowed = allowed | (queries[:, None] == key_columns[None, :])[None]
        return allowed[:, None]

    cache, cache_key = DynamicCache(), cache_argument(model)
    # the whole prompt once (each prompt token sees all of its prompt), then its last token dropped
    prompt_valid = columns[None, :width] >= start[:, None]
    mask = allowed_between(columns[:width], prompt_valid, torch.zeros(batch, width, dtype=torch.bool), start)
    # only the keys and values are wanted: the LM head at one position, not at the whole prompt's
    model(**_masked_model_inputs(model, prompt_ids, mask, position_ids=positions[:, :width], use_cache=True,
                                 logits_to_keep=1, **{cache_key: cache}))
    cache.crop(-1)
    cached = width - 1

    answers: list[list[int]] = [[] for _ in prompts]
    live = list(range(batch))  # the rows still being written; finished rows leave the batch and the cache

    def write_and_drop_finished(slot_logits: torch.Tensor, counts: list[int]) -> None:
        """Write each live row's accepted tokens; rows that ended leave the batch and the cache."""
        nonlocal prompt_ids, start, positions, live
        keep = []
        for j, (b, (tokens, confidences)) in enumerate(zip(live, _read_slots(slot_logits, banned, counts))):
            written, ended = _accepted_run(tokens, confidences, threshold, eos_id)
            answers[b].extend(written)
            if not ended and len(answers[b]) < max_new_tokens:
                keep.append(j)
        if len(keep) < len(live):
            if keep:
                cache.batch_select_indices(torch.tensor(keep, device=prompt_ids.device))
            prompt_ids, start, positions = prompt_ids[keep], start[keep], positions[keep]
            live = [live[j] for j in keep]

    if answer_cache:
        if threshold is not None:
            raise RecipeError("answer_cache writes one token per step; use it without threshold")
        # With `shift` and the slot hidden, the slot is read from the token before it and is no
        # one's key: it changes nothing, so it is left out and each step runs one position.
        with_slot = not shift or attend_to_masked
        step = 0
        while live:
            # columns width - 1 + step (the token written last; at step 0 the last prompt token) and
            # width + step (the slot); the cache holds the columns before them
            last = torch.tensor([[answers[b][-1] if step else int(prompt_ids[j, -1])] for j, b in enumerate(live)])
            step_ids = torch.cat([last, torch.full((len(live), 1), mask_id)], dim=1) if with_slot else last
            end = width + step + int(with_slot)  # one past the last key column
            key_valid = columns[None, :end] >= start[:, None]
            hidden_keys = torch.zeros(len(live), end, dtype=torch.bool)
            if with_slot:
                hidden_keys[:, width + step] = not attend_to_masked
            mask = allowed_between(columns[width - 1 + step:end], key_valid, hidden_keys, start)
            read = torch.zeros(step_ids.shape, dtype=torch.bool)
            read[:, 0 if shift else 1] = True
            inputs = _masked_model_inputs(model, step_ids, mask, position_ids=positions[:, width - 1 + step:end],
                                          use_cache=True, **{cache_key: cache})
            slot_logits = logits_at(model, read, slots_only, **inputs)
            if with_slot:
                cache.crop(-1)  # the slot goes; the token written last stays, keys and values as just computed
            write_and_drop_finished(slot_logits, [1] * len(live))
            step += 1
        return answers
    while live:
        counts = [min(slots_per_step, max_new_tokens - len(answers[b])) for b in live]
        span = max(len(answers[b]) + count for b, count in zip(live, counts))
        # columns width .. width + span - 1: each row's answer so far, its slots, then padding
        content = torch.full((len(live), span), pad_id, dtype=torch.long)
        ends = torch.zeros(len(live), dtype=torch.long)
        hidden_keys = torch.zeros(len(live), width + span, dtype=torch.bool)
        read = torch.zeros(len(live), 1 + span, dtype=torch.bool)  # over [last prompt token, content]
        for j, (b, count) in enumerate(zip(live, counts)):
            n = len(answers[b])
            content[j, :n] = torch.tensor(answers[b], dtype=torch.long)
            content[j, n:n + count] = mask_id
            ends[j] = width + n + count
            hidden_keys[j, width + n:width + n + count] = not attend_to_masked
            read[j, 1 + n - int(shift):1 + n + count - int(shift)] = True
        step_ids = torch.cat([prompt_ids[:, cached:], content], dim=1)
        key_valid = (columns[None, :width + span] >= start[:, None]) & (columns[None, :width + span] < ends[:, None])
        mask = allowed_between(columns[cached:width + span], key_valid, hidden_keys, start)
        inputs = _masked_model_inputs(model, step_ids, mask, position_ids=positions[:, cached:width + span],
                                      use_cache=True, **{cache_key: cache})
        slot_logits = logits_at(model, read, slots_only, **inputs)
        cache.crop(-step_ids.shape[1])  # back to the prompt: the answer is re-run with the next slots
        write_and_drop_finished(slot_logits, counts)
    return answers


@torch.no_grad()
def generate_masked_any_order(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                              shift: bool = False, keep_sink: bool = False, attend_to_masked: bool = False,
                              prompt_sees_answer: bool = True, slots_only: bool = True,
                              threshold: float | None = None) -> list[list[int]]:
    """Greedy masked decoding, most confident slot first; see the module docstring. With `shift`
    the slot at p is read from the logits at p - 1, as in `generate_masked`. With `threshold`, each
    step writes every open slot whose probability is at least `threshold` (and always the most
    confident one), as Fast-dLLM's threshold-parallel decoding does: fewer steps, not exact."""
    eos_id, _, pad_id, banned = _masked_decoding_tokens(tokenizer)

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
        allowed = attention_mask_4d(key_valid, torch.zeros(batch, dtype=torch.bool),
                                    torch.zeros_like(open_slots) if attend_to_masked else open_slots,
                                    torch.full((batch,), keep_sink))
        if not prompt_sees_answer:
            allowed = _block_prompt_from_answer(allowed, starts)
        # the logits at p - 1 predict the token at p when `shift`
        read = torch.cat([open_slots[:, 1:], open_slots[:, :1]], dim=1) if shift else open_slots
        slot_logits = logits_at(model, read, slots_only, **_masked_model_inputs(model, input_ids, allowed))
        slot_logits[:, banned] = float("-inf")
        confidence, tokens = slot_logits.softmax(-1).max(-1)
        confidence, tokens = confidence.cpu(), tokens.cpu()
        best_confidence = torch.full((batch, length), -1.0)
        best_confidence[open_slots] = confidence
        best_token = torch.full((batch, length), pad_id, dtype=torch.long)
        best_token[open_slots] = tokens
        chosen = best_confidence.argmax(-1)
        active = open_slots.any(-1)
        written = torch.zeros((batch, length), dtype=torch.bool)
        written[rows[active], chosen[active]] = True
        if threshold is not None:
            written |= open_slots & (best_confidence >= threshold)
        input_ids[written] = best_token[written]
        # an EOS written at slot k ends the answer there (the first one, when several are written)
        eos_written = written & (best_token == eos_id)
        first_eos = torch.where(eos_written, positions.expand(batch, length), length).min(-1).values
        ends = torch.where(eos_written.any(-1), torch.minimum(ends, first_eos + 1), ends)
    answers = []
    for b in range(batch):
        answer = input_ids[b, int(starts[b]):int(ends[b])].tolist()
        answers.append(_cut_at_eos(answer, eos_id))
    return answers


def check_speed_options(decoding: str | None, threshold: float | None, prompt_cache: bool, answer_cache: bool) -> None:
    """One line for the first speed option that does not apply (`decoding` None: not known yet, the
    checks that need it wait)."""
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise RecipeError(f"threshold = {threshold}; use a probability in (0, 1]")
    if answer_cache and not prompt_cache:
        raise RecipeError("answer_cache extends the prompt cache; set prompt_cache too")
    if answer_cache and threshold is not None:
        raise RecipeError("answer_cache writes one token per step; use it without threshold")
    if decoding is None:
        return
    if threshold is not None and decoding not in ("masked", "masked_any_order"):
        raise RecipeError(f"threshold = {threshold} applies to masked decoding, not {decoding}")
    if prompt_cache and decoding != "masked":
        raise RecipeError(f"prompt_cache applies to masked (left-to-right) decoding, not {decoding}")


def generate(model, tokenizer, prompts: list[list[int]], decoding: str, max_new_tokens: int, batch_size: int = 64,
             shift: bool = False, keep_sink: bool = False, attend_to_masked: bool = False,
             prompt_sees_answer: bool = True, slots_only: bool = True, threshold: float | None = None,
             prompt_cache: bool = False, answer_cache: bool = False) -> list[list[int]]:
    """Greedy answers (token ids, without the prompt, cut at EOS) to `prompts`, `batch_size` at a
    time, by the `decoding` method (one of `DECODINGS`). `shift`, `keep_sink`, `attend_to_masked`
    and `prompt_sees_answer` are the rules the model was trained with (`DecodingSpec.rules()`);
    causal decoding needs none of them. The speed options of masked decoding: `slots_only` (the LM
    head only at the slots; exact), `threshold` (several slots per step: left to right, the run of
    confident slots after the first; any order, every confident slot), `prompt_cache`
    (left to right: the prompt's keys and values once; exact without `prompt_sees_answer`, and then
    on by itself for a Hugging Face causal LM),
    `answer_cache` (with the prompt cache: the answer's keys and values kept too; approximate)."""
    if decoding not in DECODINGS:
        raise RecipeError(f"decoding = {decoding!r} is not a decoding method; use one of {', '.join(DECODINGS)}")
    if max_new_tokens < 1:
        raise RecipeError(f"max_new_tokens = {max_new_tokens}; answers need at least 1 new token")
    check_speed_options(decoding, threshold, prompt_cache, answer_cache)
    rules = {"shift": shift, "keep_sink": keep_sink, "attend_to_masked": attend_to_masked}
    if decoding == "masked" and not prompt_sees_answer and hasattr(model, "can_generate") \
            and model.can_generate():
        prompt_cache = True  # exact for a model whose prompt never saw its answer, and faster
    if decoding != "causal":  # masked decoding builds 4D masks, which flash_attention_2 cannot take
        with attention_implementation_for_masks(model):
            return _generate_batches(model, tokenizer, prompts, decoding, max_new_tokens, batch_size, rules,
                                     prompt_sees_answer, slots_only, threshold, prompt_cache, answer_cache)
    return _generate_batches(model, tokenizer, prompts, decoding, max_new_tokens, batch_size, rules,
                             prompt_sees_answer, slots_only, threshold, prompt_cache, answer_cache)


def _generate_batches(model, tokenizer, prompts, decoding, max_new_tokens, batch_size, rules, prompt_sees_answer,
                      slots_only, threshold, prompt_cache, answer_cache) -> list[list[int]]:
    answers = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        if decoding == "masked" and prompt_cache:
            answers.extend(generate_masked_cached(model, tokenizer, batch, max_new_tokens, **rules,
                                                  slots_only=slots_only, threshold=threshold,
                                                  answer_cache=answer_cache))
        elif decoding == "masked":
            answers.extend(generate_masked(model, tokenizer, batch, max_new_tokens, **rules,
                                           prompt_sees_answer=prompt_sees_answer, slots_only=slots_only,
                                           threshold=threshold))
        elif decoding == "masked_any_order":
            answers.extend(generate_masked_any_order(model, tokenizer, batch, max_new_tokens, **rules,
                                                     prompt_sees_answer=prompt_sees_answer, slots_only=slots_only,
                                                     threshold=threshold))
        else:
            answers.extend(generate_causal(model, tokenizer, batch, max_new_tokens))
    return answers


def _cut_at_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens
