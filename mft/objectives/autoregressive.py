"""Left-to-right objectives: next-token prediction and its token-reversed augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import IGNORE, Objective, Row


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
        ids = self._ids(example)
        first = 1 if self.predict_prompt else example.get("prompt_length", 0)
        return [next_token_row(ids, first)]


@dataclass
class ARReverse(Objective):
    """AR on the sequence *and* on its token-level reverse (Golovneva et al.'s reverse training).

    Two rows per example: (1) next-token prediction on x as in `ar`; (2) next-token prediction on
    reverse(x), where the content between any leading special tokens (BOS) and a trailing EOS is
    reversed token by token: [bos, a, b, c, eos] -> [bos, c, b, a, eos]. In the reversed row every
    token is predicted (the prompt/answer split has no meaning once reversed), weight 1.
    """

    name = "ar_reverse"
    predict_prompt: bool = True

    def __call__(self, example: dict[str, Any], generator: torch.Generator) -> list[Row]:
        ids = self._ids(example)
        first = 1 if self.predict_prompt else example.get("prompt_length", 0)
        return [next_token_row(ids, first), next_token_row(self.reverse(ids))]

    def reverse(self, ids: torch.Tensor) -> torch.Tensor:
        fixed = self._fixed(ids)
        start = 0
        while start < len(ids) and fixed[start]:
            start += 1
        end = len(ids) - 1 if len(ids) and ids[-1] == self.special.eos_token_id else len(ids)
        out = ids.clone()
        if end > start:
            out[start:end] = ids[start:end].flip(0)
        return out

