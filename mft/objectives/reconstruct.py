"""Masked fine-tuning of causal LMs (Pan et al., 2025): reconstruct a masked copy, causal attention.

Notation. d = d_1..d_n is the example's content (its tokens without BOS and the final EOS). A draw
picks t ~ U(low, high) and masks m = round(t*n) (at least 1) positions S of d, giving d~ where
d~_j = [MASK] for j in S. The model sees, under ordinary causal attention,

    prefix + d~ + middle + d + [eos]

where prefix/middle come from the tokenizer's chat template around a user message
"<masked document>\\n\\n<instruction>" (plain: [bos] ... instruction), so the target d is the
assistant's answer. Only target tokens are predicted, left to right, each from everything before
it (the masked copy included), weight 1 (no 1/t weighting, as in the paper).

`masked_reconstruct`: every target token d_j and the final EOS are predicted.
`masked_sft`: for prompt/answer examples p + a, the copy shows p intact and a masked, the target is
a alone, and only the answer tokens whose copy was masked (and the EOS) are predicted.

Because attention stays causal, the trained model is used with plain `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import IGNORE, Objective, Row, check_rate_range
from .masked import stochastic_round
from ..errors import RecipeError

PLACEHOLDER = "<<MFT_MASKED_DOCUMENT>>"


class _ReconstructObjective(Objective):
    needs_mask_token = True

    def __post_init__(self):
        check_rate_range(self.low, self.high)

    def setup(self, special, tokenizer=None) -> None:
        super().setup(special, tokenizer)
        if tokenizer is None:
            raise RecipeError(f"objective {self.name!r} needs the tokenizer to build its prompt; pass it to the collator")
        self.prefix, self.middle = self.template(tokenizer)

    def vocabulary_texts(self) -> list[str]:
        return [self.instruction]

    def template(self, tokenizer) -> tuple[list[int], list[int]]:
        """Token ids before and after the masked document in the prompt."""
        def encode(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        if getattr(tokenizer, "chat_template", None):
            message = [{"role": "user", "content": f"{PLACEHOLDER}\n\n{self.instruction}"}]
            text = tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
            before, after = text.split(PLACEHOLDER)
            return encode(before), encode(after)
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        return bos, encode(self.instruction)

    def split(self, example: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """(content ids without leading special tokens and the final EOS, prompt length inside them)."""
        ids = self._ids(example)
        start, end = self.content_span(ids)
        prompt_length = max(example.get("prompt_length", 0) - start, 0)
        return ids[start:end], prompt_length

    def draw_mask(self, num_candidates: int, generator: torch.Generator) -> torch.Tensor:
        """Indices (into the candidates) of the masked tokens: m = round(t * n), t ~ U(low, high)."""
        ratio = self.low + (self.high - self.low) * torch.rand((), generator=generator).item()
        count = min(max(stochastic_round(ratio * num_candidates, generator), 1), num_candidates)
        return torch.randperm(num_candidates, generator=generator)[:count]

    def row(self, content: torch.Tensor, masked: torch.Tensor, target: torch.Tensor, predicted: torch.Tensor) -> Row:
        """prefix + masked copy of `content` + middle + target + eos; `predicted` marks the target
        tokens that carry a loss (the EOS always does)."""
        copy = torch.where(masked, self.special.mask_token_id, content)
        head = torch.cat([torch.tensor(self.prefix, dtype=torch.long), copy, torch.tensor(self.middle, dtype=torch.long)])
        ids = torch.cat([head, target, torch.tensor([self.special.eos_token_id])])
        targets = torch.cat([torch.zeros(len(head), dtype=torch.bool), predicted, torch.ones(1, dtype=torch.bool)])
        labels = torch.full_like(ids, IGNORE)
        labels[:-1] = torch.where(targets[1:], ids[1:], IGNORE)  # position i predicts token i+1
        return Row(input_ids=ids, labels=labels, weights=(labels != IGNORE).float(), causal=True)


@dataclass
class MaskedReconstruct(_ReconstructObjective):
    """Masked fine-tuning: show the document with a fraction t ~ U(low, high) of its tokens masked,
    ask for the whole original document (see the module docstring)."""

    name = "masked_reconstruct"
    low: float = 0.05
    high: float = 0.95
    instruction: str = "Recover the masked passage."

    def __call__(self, example: dict[str, Any], generator: torch.Generator) -> list[Row]:
        content, _ = self.split(example)
        masked = torch.zeros(len(content), dtype=torch.bool)
        if len(content):
            masked[self.draw_mask(len(content), generator)] = True
        return [self.row(content, masked, content, torch.ones(len(content), dtype=torch.bool))]


@dataclass
class MaskedSFT(_ReconstructObjective):
    """Masked SFT: mask only the answer inside the prompt; predict only the masked answer tokens."""

    name = "masked_sft"
    reads_prompt = True  # only the answer (after the prompt) is masked and predicted
    low: float = 0.05
    high: float = 0.95
    instruction: str = "Recover the masked answer."

    def __call__(self, example: dict[str, Any], generator: torch.Generator) -> list[Row]:
        content, prompt_length = self.split(example)
        masked = torch.zeros(len(content), dtype=torch.bool)
        answer = torch.arange(prompt_length, len(content))
        if len(answer):
            masked[answer[self.draw_mask(len(answer), generator)]] = True
        return [self.row(content, masked, content[prompt_length:], masked[prompt_length:])]
