"""Masked objectives: fixed-rate MLM and MLM-U (uniform rate, an absorbing-state diffusion loss).

Shared notation. x = x_0..x_{L-1} is the example. The *maskable* positions M are all positions
except special tokens (BOS, PAD, ...) and, with `predict_prompt=False`, except the prompt; D = |M|.
A draw picks a subset S of M with |S| = m; the model sees x with every x_i, i in S, replaced by the
mask token, under bidirectional attention, and predicts x_i at position i for every i in S.
Nothing outside S is predicted.

`shift=True` moves each prediction one position left: the logits at position i-1 predict the masked
x_i (as next-token prediction does), which keeps a pretrained causal LM's head aligned with what it
learnt; position 0 is then never masked, so a sequence that starts with a content token (no BOS)
gets the tokenizer's BOS (else EOS) in front. `shift=False` (default for from-scratch models): the
logits at i predict x_i. `mft.train` turns shift on for pretrained models unless the recipe says.

`keep_sink=True` (needs shift; `mft.train` turns it on for pretrained models unless the recipe
says): position 0 attends to itself alone, as it did under causal attention, while every other
position sees the whole row. Pretrained causal LMs park attention on their first token, whose hidden
state is huge and fixed (SmolLM2-135M: norm ~25,000 against ~200 elsewhere, at layer 15); fully
bidirectional attention lets that token see the sequence, the huge state vanishes and every layer's
attention pattern is disturbed (last-layer hidden states of a sentence: cosine 0.76 to the causal
ones, 0.92 with the sink kept). Position 0 then predicts nothing, so position 1 is never masked
either, and documents get two start tokens in front of their first content token.

`attend_to_masked=False` (default, as in the factorization-curse paper's model): masked positions
are never attention keys. A query at a masked position sees the visible tokens and itself, and the
visible tokens never see masked slots. The number of masked slots (how much text is left) is then
invisible to the model, and left-to-right decoding, which appends one mask slot at a time after
the context, sees exactly what training showed it. With `attend_to_masked=True` masked slots are
ordinary keys (BERT style).

`prompt_sees_answer=False` (prompt/completion examples): block-causal attention. The prompt's
positions attend only to the prompt (bidirectionally), the answer's to everything, so the prompt's
hidden states never depend on the answer; masked decoding can then compute the prompt's keys and
values once and reuse them while it writes the answer (`mft.decoding.generate_masked_cached`),
exactly. Plain text (no prompt) is unaffected.

m is drawn by unbiased stochastic rounding: m = floor(rD) + Bernoulli(rD - floor(rD)), so that
E[m] = rD exactly, then clipped to [min_masked, D].

`mask_unit="word"` (whole-word masking, as in BERT-wwm): the draw picks words instead of tokens.
A word is a maximal run of maskable tokens in which every token after the first continues the one
before it (it starts with a letter or digit, carries no leading space, and follows a token that
ends with one), so " Drell" "stad" is one word and " Drellstad" "." two. D and m then count words,
and the 1/r weight is D/m in words. A chosen word is masked from a cut to its end: from its first
token with probability 1/2, else from one of its later tokens, uniformly. Why words: with single
tokens a name or place is usually half visible ("Drell[M]"), and the cheapest way to fill it is
spelling, not the fact; a whole masked word has to come from the rest of the sentence, which is
what a question about it asks for. Why the cut: left-to-right decoding writes a word token by
token, so it asks for the rest of a word whose first tokens are visible; masking only whole words
never shows that (measured: SmolLM2 then wrote "Lies Nor Nor" for "Liesl Norcott").

`mask_unit="name"`: every token is its own unit, as with "token", except names: a maximal run of
adjacent capitalized words (words as above, whose first token starts with an upper-case letter,
e.g. " Annika" " Underwood" or " Selvaro" " Lantern" " Society") is one unit, masked from a cut to
its end like a word. D and m count units. Why: a backward question ("Who founded the Selvaro Lantern
Society?") asks for a whole name from a value, so training has to hide the whole name while the
value is visible. Drawn token by token at rate r, a 4-token name is hidden whole and a 3-token value
left visible with probability E[r^4 (1-r)^3] = 1/280; as units, E[r/2 (1-r)] = 1/12 (the 1/2 is the
cut), 23 times as often. Capitalization is the heuristic: sentence-initial words are units too
("Records", "She"), which costs nothing, and lower-case names are left as tokens.

`whole_unit` (word and name units; default 0.5) is the probability that a chosen unit of several
tokens is hidden whole rather than from a later cut. The pair above then occurs with probability
E[r w (1-r)] = w/6. A whole unit trains a name's first token, the one a backward answer hinges on;
a cut trains the rest of a half-written name, which left-to-right decoding needs (0.75 lost
backward completions on the profiles demo against 0.5, BENCHMARKS.md).

`name_weight` (name units only; default 1) is the loss weight of a masked token inside a name unit;
every other masked token keeps weight 1 (times 1/r under MLM-U's default weighting). The trainer
divides the batch's weighted loss by the sum of the weights, so a weight w > 1 moves the gradient
from the text around the facts ("Records show that", "He rarely speaks about his") to the names
and values the questions ask for: with a fraction f of the masked tokens in names, they carry
wf / (wf + 1 - f) of the loss instead of f. The draw, and so what is predicted from what, does not
change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from .base import IGNORE, Objective, Row, SpecialTokens, check_rate, check_rate_range
from ..errors import RecipeError


def stochastic_round(value: float, generator: torch.Generator) -> int:
    whole = int(value)
    return whole + int(torch.rand((), generator=generator).item() < value - whole)


_SPACE_MARKERS = ("\u0120", "\u2581", " ")  # byte-level BPE's space, SentencePiece's, a plain one


def word_boundary_tables(tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three bool tensors over the vocabulary: `continues_word[t]`, token t carries no leading space
    and starts with a letter or digit (it glues onto the token before it); `ends_in_word[t]`, token t
    ends with a letter or digit (a continuation may glue onto it); `starts_upper[t]`, token t's text
    after its leading space starts with an upper-case letter (it may begin a name)."""
    size = len(tokenizer)
    continues_word = torch.zeros(size, dtype=torch.bool)
    ends_in_word = torch.zeros(size, dtype=torch.bool)
    starts_upper = torch.zeros(size, dtype=torch.bool)
    for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(size)))):
        if not token:
            continue
        text = tokenizer.convert_tokens_to_string([token])
        if text:
            continues_word[token_id] = not token.startswith(_SPACE_MARKERS) and text[0].isalnum()
            ends_in_word[token_id] = text[-1].isalnum()
            stripped = text.lstrip()
            starts_upper[token_id] = bool(stripped) and stripped[0].isupper()
    return continues_word, ends_in_word, starts_upper


def start_tokens(first_ids: list[int], special: SpecialTokens, prompt_length: int, shift: bool, keep_sink: bool,
                 predict_prompt: bool) -> list[int]:
    """The start tokens a masked objective puts in front of a row whose first ids are `first_ids`
    (the first two suffice): [] or one or two of the tokenizer's BOS (else its EOS). Under `shift`
    one when the row begins with a content token (tokenizers that add no BOS, e.g. Qwen, SmolLM2),
    since only a position to its left predicts it; with `keep_sink` one more when position 1 would
    then hold a token a draw may mask (content outside the prompt, or in it with `predict_prompt`),
    since the sink at position 0 sees nothing but itself. The first token of a document, often a
    name, must be maskable and predicted too. Masked decoding puts the same tokens in front of a
    question (`mft.decoding.encode_question`), so that it reads as its training rows began."""
    start = special.bos_token_id if special.bos_token_id is not None else special.eos_token_id
    if start is None or not first_ids:
        return []
    fixed = [token in special.fixed_ids for token in first_ids]
    front = [start] if shift and not fixed[0] else []
    at_position_1 = 1 - len(front)  # the index in `first_ids` of the token that lands at position 1
    if keep_sink and at_position_1 < len(first_ids) and not fixed[at_position_1] \
            and (predict_prompt or at_position_1 >= prompt_length):
        front.append(start)
    return front


@dataclass
class _MaskedObjective(Objective):
    """The options MLM and MLM-U share (see the module docstring)."""

    needs_mask_token = True
    bidirectional = True
    decoding = "masked"
    architectures = frozenset({"causal", "bert", "encoder_decoder"})
    min_masked: int = 1
    predict_prompt: bool = True
    attend_to_masked: bool = False
    prompt_sees_answer: bool = True
    shift: bool = False
    keep_sink: bool = False
    mask_unit: Literal["token", "word", "name"] = "token"
    whole_unit: float = 0.5
    name_weight: float = 1.0

    def __post_init__(self):
        if self.keep_sink and not self.shift:
            raise RecipeError("objective.keep_sink = true needs shift: true (position 0, the sink, predicts "
                              "nothing); set shift: true or keep_sink: false")
        if self.mask_unit not in ("token", "word", "name"):
            raise RecipeError(f"objective.mask_unit = {self.mask_unit!r}; use 'token', 'word' or 'name'")
        check_rate("whole_unit", self.whole_unit)
        if not isinstance(self.name_weight, (int, float)) or not self.name_weight > 0:
            raise RecipeError(f"objective.name_weight = {self.name_weight!r}; use a positive number (1 weighs "
                              "names like every other masked token)")
        if self.name_weight != 1 and self.mask_unit != "name":
            raise RecipeError(f"objective.name_weight = {self.name_weight} needs objective.mask_unit: name (it "
                              f"weighs the tokens of name units); set mask_unit: name or name_weight: 1")

    def setup(self, special: SpecialTokens, tokenizer=None) -> None:
        super().setup(special, tokenizer)
        if self.mask_unit in ("word", "name"):
            if tokenizer is None:
                raise RecipeError(f"objective.mask_unit = '{self.mask_unit}' needs the tokenizer to find word "
                                  "boundaries; pass it to the collator or use mask_unit: token")
            self.continues_word, self.ends_in_word, self.starts_upper = word_boundary_tables(tokenizer)

    def _from_cut_to_unit_end(self, unit_of: torch.Tensor, num_units: int, generator: torch.Generator) -> torch.Tensor:
        """Bool over the candidates: True from each unit's cut on. The cut is the unit's first token
        with probability `whole_unit`, else one of its later tokens, uniformly."""
        lengths = torch.bincount(unit_of, minlength=num_units)
        whole = torch.rand(num_units, generator=generator) < self.whole_unit
        later = 1 + (torch.rand(num_units, generator=generator) * (lengths - 1)).long()
        cut = torch.where(whole | (lengths == 1), 0, later)
        first_index = torch.cumsum(lengths, 0) - lengths
        index_in_unit = torch.arange(len(unit_of)) - first_index[unit_of]
        return index_in_unit >= cut[unit_of]

    def word_starts(self, ids: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Bool over `candidates` (sorted positions): True where a candidate begins a new word."""
        starts = torch.ones(len(candidates), dtype=torch.bool)
        if len(candidates) > 1:
            previous, current = candidates[:-1], candidates[1:]
            joined = ((current - previous) == 1) & self.continues_word[ids[current]] & self.ends_in_word[ids[previous]]
            starts[1:] = ~joined
        return starts

    def unit_starts(self, ids: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Bool over `candidates` (sorted positions): True where a candidate begins a new unit of the
        draw (see `mask_unit` in the module docstring)."""
        if self.mask_unit == "token" or not len(candidates):
            return torch.ones(len(candidates), dtype=torch.bool)
        if self.mask_unit == "word":
            return self.word_starts(ids, candidates)
        return self._names(ids, candidates)[0]

    def _names(self, ids: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit start, in a name), bools over `candidates`, for `mask_unit: name`: a capitalized
        word is one unit, and it joins the capitalized word right before it."""
        word_start = self.word_starts(ids, candidates)
        word_of = torch.cumsum(word_start.long(), 0) - 1
        first = candidates[word_start]
        last = candidates[torch.cat([word_start[1:], word_start.new_ones(1)])]
        capitalized = self.starts_upper[ids[first]]
        joins_previous = torch.zeros_like(capitalized)
        joins_previous[1:] = capitalized[1:] & capitalized[:-1] & (first[1:] == last[:-1] + 1)
        in_name = capitalized[word_of]
        return ~in_name | (word_start & ~joins_previous[word_of]), in_name

    def _ids_and_prompt_length(self, example: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """The example's ids with `start_tokens`' start tokens in front (the prompt grows by them)."""
        ids, prompt_length = self._ids(example), example.get("prompt_length", 0)
        front = start_tokens(ids[:2].tolist(), self.special, prompt_length, self.shift, self.keep_sink,
                             self.predict_prompt)
        if front:
            ids = torch.cat([ids.new_tensor(front), ids])
            prompt_length += len(front) * (prompt_length > 0)
        return ids, prompt_length

    def maskable(self, ids: torch.Tensor, prompt_length: int) -> torch.Tensor:
        """Bool [L] over `_ids_and_prompt_length`'s ids: the positions a draw may mask."""
        maskable = ~self._fixed(ids)
        if not self.predict_prompt:
            maskable[:prompt_length] = False
        if self.shift:
            maskable[0] = False  # nothing to its left predicts it
        if self.keep_sink:
            maskable[:2] = False  # position 0, the only one left of position 1, sees nothing
        return maskable

    def masked_row(self, example: dict[str, Any], rate: float, generator: torch.Generator) -> Row:
        ids, prompt_length = self._ids_and_prompt_length(example)
        candidates = self.maskable(ids, prompt_length).nonzero().flatten()
        # The units a draw picks: each candidate token alone, whole words, or whole names.
        unit_of = torch.cumsum(self.unit_starts(ids, candidates).long(), 0) - 1
        num_maskable = int(unit_of[-1]) + 1 if len(candidates) else 0
        num_masked = min(max(stochastic_round(rate * num_maskable, generator), self.min_masked), num_maskable)
        chosen_units = torch.randperm(num_maskable, generator=generator)[:num_masked]

        in_chosen_unit = torch.isin(unit_of, chosen_units)
        if self.mask_unit != "token":  # a unit of one token is masked whole
            in_chosen_unit &= self._from_cut_to_unit_end(unit_of, num_maskable, generator)
        masked = torch.zeros_like(ids, dtype=torch.bool)
        masked[candidates[in_chosen_unit]] = True
        labels = torch.where(masked, ids, IGNORE)
        weights = masked.float() * self.token_weight(num_masked, num_maskable)
        if self.name_weight != 1 and len(candidates):
            weights[candidates[self._names(ids, candidates)[1]]] *= self.name_weight
        if self.shift:  # the logits at i-1 predict the masked token i
            labels = torch.cat([labels[1:], labels.new_full((1,), IGNORE)])
            weights = torch.cat([weights[1:], weights.new_zeros(1)])
        return Row(
            input_ids=torch.where(masked, self.special.mask_token_id, ids),
            labels=labels,
            weights=weights,
            causal=False,
            hidden=None if self.attend_to_masked else masked,
            sink=self.keep_sink,
            prompt_end=0 if self.prompt_sees_answer else prompt_length,
        )

    def token_weight(self, num_masked: int, num_maskable: int) -> float:
        return 1.0


@dataclass
class MLM(_MaskedObjective):
    """Masked language modelling at a fixed rate r (BERT without the 80/10/10 corruption).

    Predicted: the m ~= r*D masked tokens, each from all visible tokens (bidirectional), weight 1.
    """

    name = "mlm"
    rate: float = 0.15

    def __post_init__(self):
        super().__post_init__()
        check_rate("rate", self.rate)

    def __call__(self, example: dict[str, Any], generator: torch.Generator) -> list[Row]:
        return [self.masked_row(example, self.rate, generator)]


@dataclass
class MLMU(_MaskedObjective):
    """MLM-U: the masking rate r ~ U(low, high) is drawn afresh for every sequence.

    Predicted: the m ~= r*D masked tokens, each from all visible tokens (bidirectional). Seeing
    every rate means seeing every split of a sequence into context and prediction, which is what
    makes the objective factorization-agnostic (in expectation it equals permutation LM).

    `low`, `high` (default 0, 1): a range around 0.5 keeps the mean rate but trains more of the
    predictions that two facts of one sequence need of each other: a pair of units is split into one
    masked and one visible with probability 2r(1-r), 1/3 on average under U(0, 1) and 0.46 under
    U(0.25, 0.75). What it gives up: the near-empty contexts (r near 1) and the near-full ones (r near
    0), so it no longer equals permutation LM in expectation (the profiles demo, BENCHMARKS.md).

    Weights (`weighting`):
      "1/r"      w_i = D/m = 1/r for each masked token: the factorization-curse paper's Eq. 5, the
                 ELBO of an absorbing-state diffusion model. Since sum_i w_i = D for every sequence,
                 the weighted mean over a batch is sum_seq D_seq * mean_masked_CE_seq / sum_seq D_seq.
      "uniform"  w_i = 1: a plain mean over all masked tokens of the batch.
    """

    name = "mlm_u"
    low: float = 0.0
    high: float = 1.0
    weighting: Literal["1/r", "uniform"] = "1/r"

    def __post_init__(self):
        super().__post_init__()
        check_rate_range(self.low, self.high)
        if self.weighting not in ("1/r", "uniform"):
            raise RecipeError(f"objective.weighting = {self.weighting!r}; use '1/r' or 'uniform'")

    def __call__(self, example: dict[str, Any], generator: torch.Generator) -> list[Row]:
        rate = self.low + (self.high - self.low) * torch.rand((), generator=generator).item()
        return [self.masked_row(example, rate, generator)]

    def token_weight(self, num_masked: int, num_maskable: int) -> float:
        if self.weighting == "uniform" or num_masked == 0:
            return 1.0
        return num_maskable / num_masked
