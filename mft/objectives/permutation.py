"""Permutation language modelling (XLNet; the factorization-curse paper's PLM).

For a sequence x_1..x_n draw a factorization order sigma uniformly among all orders, and predict
every token from the tokens that come before it *in that order*:

    loss = - sum_t log p(x_sigma(t) | x_sigma(1), ..., x_sigma(t-1)),   weight 1 per predicted token.

Averaged over orders, each token is predicted from every subset of the others (a context of size
k = 0..n-1 equally often, and each subset of that size equally often), which is what makes PLM
factorization-agnostic; MLM-U is the same objective in expectation (the paper's Eq. 5).

One row per example, computed in one pass by a two-stream model (`mft.models.encoder_decoder`):

    content stream  query p may see key q  iff  rank(q) <= rank(p)   (`Row.attention`)
    query stream    query p may see key q  iff  rank(q) <  rank(p)   (`Row.query_attention`)

The query stream at p predicts x_p without ever seeing x_p. A decoder-only model has one stream,
whose state at p is built from x_p itself, so PLM is refused for it (`mft.train`).

Leading special tokens (BOS) come first in every order and are never predicted, so every
predicted token has some context. With `predict_prompt=False` the prompt's tokens come first in
the order (in random order among themselves) and only the completion is predicted, from the whole
prompt plus the completion tokens before it in the order. Without a leading special token the
first token of the order has no context and is not predicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import IGNORE, Objective, Row


@dataclass
class PLM(Objective):
    name = "plm"
    bidirectional = True  # its rows need 4D masks
    two_stream = True
    decoding = "masked"
    architectures = frozenset({"encoder_decoder"})  # a decoder-only model would see the token it predicts
    predict_prompt: bool = True

    def __call__(self, example: dict[str, Any], generator: torch.Generator) -> list[Row]:
        ids = self._ids(example)
        n = len(ids)
        fixed = self._fixed(ids)
        leading, _ = self.content_span(ids)
        prompt_end = leading if self.predict_prompt else max(leading, min(example.get("prompt_length", 0), n))
        # Ranks: leading specials 0..leading-1 in place, then the prompt (shuffled), then the rest (shuffled).
        rank = torch.empty(n, dtype=torch.long)
        rank[:leading] = torch.arange(leading)
        rank[leading:prompt_end] = leading + torch.randperm(prompt_end - leading, generator=generator)
        rank[prompt_end:] = prompt_end + torch.randperm(n - prompt_end, generator=generator)

        labels = ids.clone()
        labels[:prompt_end] = IGNORE
        if leading == 0:  # nothing precedes the first token of the order
            labels[rank == 0] = IGNORE
        labels[fixed] = IGNORE
        weights = (labels != IGNORE).float()
        content = rank[None, :] <= rank[:, None]
        query = rank[None, :] < rank[:, None]
        return [Row(input_ids=ids, labels=labels, weights=weights, causal=False, attention=content,
                    query_attention=query)]
