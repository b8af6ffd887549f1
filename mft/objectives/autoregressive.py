"""Left-to-right objectives: next-token prediction and its reversed augmentations.

Every reversal keeps leading special tokens (BOS) and a trailing EOS in place and reorders the
content between them; the reversed row is trained with next-token prediction on every token.

    ar_reverse          token-level reverse             [a b : c d]      -> [d c : b a]
    ar_reverse_entity   entities keep their token order [(a b) : (c d)]  -> [(c d) : (a b)]
                        with delimiters                                  -> [<ent> c d </ent> : <ent> a b </ent>]
    ar_reverse_segment  random segments of 1..k tokens  [a b | c | d]    -> [d | c | a b]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import IGNORE, Objective, Row
from ..errors import RecipeError


def next_token_row(ids: torch.Tensor, first_target: int = 1) -> Row:
    """Causal attention; position i predicts x[i+1] from x[0..i] with weight 1, for every target
    position i+1 >= first_target (first_target = prompt length drops the loss on the prompt)."""
    labels = torch.full_like(ids, IGNORE)
    labels[:-1] = ids[1:]
    labels[: max(first_target, 1) - 1] = IGNORE
    weights = (labels != IGNORE).float()
    return Row(input_ids=ids, labels=labels, weights=weights, causal=True)


@dataclass
class AR(Objective):
    """Next-token prediction (the factorization p(x) = prod_i p(x_i | x_<i)).

    Predicted: every token x_i, i >= 1, from its left context x_<i under causal attention, weight 1.
    With `predict_prompt=False` only the tokens after the prompt are predicted (completion-only
    training); the prompt is still seen as context.
    """

    name = "ar"
    predict_prompt: bool = True

    def __call__(self, example: dict[str, Any], generator: torch.Generator) -> list[Row]:
        return [self.forward_row(example)]

    def forward_row(self, example: dict[str, Any]) -> Row:
        """Next-token prediction on the example as it is, from its first target on (1, or the
        prompt length when `predict_prompt` is false)."""
        first = 1 if self.predict_prompt else example.get("prompt_length", 0)
        return next_token_row(self._ids(example), first)


@dataclass
class ARReverse(AR):
    """AR on the sequence *and* on its token-level reverse (Golovneva et al.'s reverse training).

    Two rows per example: (1) next-token prediction on x as in `ar`; (2) next-token prediction on
    reverse(x), where the content between any leading special tokens (BOS) and a trailing EOS is
    reversed token by token: [bos, a, b, c, eos] -> [bos, c, b, a, eos]. In the reversed row every
    token is predicted (the prompt/answer split has no meaning once reversed), weight 1.
    """

    name = "ar_reverse"

    def __call__(self, example: dict[str, Any], generator: torch.Generator) -> list[Row]:
        return [self.forward_row(example), next_token_row(self.reverse(self._ids(example)))]

    def reverse(self, ids: torch.Tensor) -> torch.Tensor:
        start, end = self.content_span(ids)
        out = ids.clone()
        if end > start:
            out[start:end] = ids[start:end].flip(0)
        return out


ENTITY_OPEN, ENTITY_CLOSE = "<ent>", "</ent>"


@dataclass
class ARReverseEntity(ARReverse):
    """AR on the sequence *and* on its entity-level reverse (the factorization-curse paper's
    "AR w/reverse (entity)", after Golovneva et al.).

    Two rows per example: (1) next-token prediction on x as in `ar`; (2) next-token prediction on
    x with its content reversed unit by unit, where a unit is one entity (a span listed in the
    row's `entities`, which keeps its own token order) or one token outside every entity:
    [bos, a1, a2, :, b1, b2, eos] with entities (a1 a2), (b1 b2) -> [bos, b1, b2, :, a1, a2, eos].
    With `delimiters` every reversed entity is wrapped in `<ent> ... </ent>`, which marks the row as
    reversed: without them "A => B => C" reversed reads "C => B => A", a false statement in the
    forward format, and the model learns to treat the relation as symmetric (the paper's 44%
    incorrect inferences). Every token of the reversed row is predicted, weight 1; a row without
    entities is reversed token by token.
    """

    name = "ar_reverse_entity"
    delimiters: bool = True

    def setup(self, special, tokenizer=None) -> None:
        super().setup(special, tokenizer)
        self.open_ids: list[int] = []
        self.close_ids: list[int] = []
        if self.delimiters:
            if tokenizer is None:
                raise RecipeError("objective 'ar_reverse_entity' with delimiters needs the tokenizer to encode them")
            self.open_ids = tokenizer(ENTITY_OPEN, add_special_tokens=False)["input_ids"]
            self.close_ids = tokenizer(ENTITY_CLOSE, add_special_tokens=False)["input_ids"]
            if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in self.open_ids + self.close_ids:
                raise RecipeError(f"the tokenizer cannot write the delimiters {ENTITY_OPEN} {ENTITY_CLOSE}; set "
                                  f"objective.delimiters: false or add them to the vocabulary")

    def vocabulary_texts(self) -> list[str]:
        return [ENTITY_OPEN, ENTITY_CLOSE] if self.delimiters else []

    def __call__(self, example: dict[str, Any], generator: torch.Generator) -> list[Row]:
        reversed_ids = self.reverse_entities(self._ids(example), example.get("entity_spans", []))
        return [self.forward_row(example), next_token_row(reversed_ids)]

    def reverse_entities(self, ids: torch.Tensor, spans: list[list[int]]) -> torch.Tensor:
        start, end = self.content_span(ids)
        entities = [(max(a, start), min(b, end)) for a, b in spans if a < end and b > start]
        units, position = [], start
        for a, b in entities:
            units += [(i, i + 1) for i in range(position, a)] + [(a, b)]
            position = b
        units += [(i, i + 1) for i in range(position, end)]
        pieces = [ids[:start]]
        for a, b in reversed(units):
            if self.delimiters and (a, b) in entities:
                pieces += [torch.tensor(self.open_ids, dtype=ids.dtype), ids[a:b],
                           torch.tensor(self.close_ids, dtype=ids.dtype)]
            else:
                pieces.append(ids[a:b])
        return torch.cat(pieces + [ids[end:]])


@dataclass
class ARReverseSegment(ARReverse):
    """AR on the sequence *and* on a random-segment reverse (Golovneva et al.'s random segment
    reversal): the content is cut into consecutive segments whose lengths are drawn uniformly from
    1..`max_segment_length` (fresh each time the example is seen), and the segments are written in
    reverse order, each keeping its own token order. No entity annotation is needed; an entity
    survives only when a segment happens to hold it whole. Two rows per example as in `ar_reverse`.
    """

    name = "ar_reverse_segment"
    max_segment_length: int = 3

    def __post_init__(self):
        if self.max_segment_length < 1:
            raise RecipeError(f"objective.max_segment_length = {self.max_segment_length}; use at least 1")

    def __call__(self, example: dict[str, Any], generator: torch.Generator) -> list[Row]:
        return [self.forward_row(example), next_token_row(self.reverse_segments(self._ids(example), generator))]

    def reverse_segments(self, ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        start, end = self.content_span(ids)
        segments, position = [], start
        while position < end:
            length = int(torch.randint(1, self.max_segment_length + 1, (), generator=generator))
            segments.append(ids[position:min(position + length, end)])
            position += length
        return torch.cat([ids[:start], *reversed(segments), ids[end:]])

