"""What every objective shares: the tokenized example it reads, the row it writes.

An *example* is a tokenized training sequence::

    {"input_ids": [bos, p1, ..., pP, a1, ..., aA, eos], "prompt_length": 1 + P}

`prompt_length` counts the leading tokens that form the prompt (0 when the example is plain text).
An objective turns one example into one or more *rows*, the unit the model sees:

    input_ids  [L]  what is fed to the model (masked objectives replace some tokens by the mask token)
    labels     [L]  labels[i] is the token that the logits at position i must predict, or IGNORE.
                    Labels are stored *already aligned* with the logits: for next-token prediction
                    labels[i] = x[i+1]; for a masked model labels[i] = x[i] where i is masked.
                    The trainer therefore never shifts anything.
    weights    [L]  the weight w_i of position i's cross-entropy (0 where labels[i] is IGNORE)
    causal     bool the attention kind: causal (query i sees keys j <= i) or bidirectional
    hidden     [L]  bidirectional rows only: positions that may not be attention keys (masked tokens)
    sink       bool bidirectional rows only: position 0 attends to itself alone, as under causal
                    attention (keeps a pretrained LM's attention sink; see `mft.objectives.masked`)
    prompt_end int  bidirectional rows only: when > 0, the positions before it (the prompt) never
                    attend to the positions from it on (the answer), as `prompt_sees_answer: false`
                    trains; 0: no such rule
    attention  [L, L] bool, optional: a custom mask (query i may attend to key j), replacing the
                    causal/bidirectional rule; `query_attention` [L, L], optional: the mask of a
                    model's separate query stream (two-stream models; see `mft.objectives.permutation`)

The loss of a batch is the weighted mean  sum_i w_i * CE(logits_i, labels_i) / sum_i w_i  taken over the
whole optimizer step (all micro-batches of gradient accumulation and all processes), see `mft.trainer`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import RecipeError

IGNORE = -100

# Every objective class with a `name`, registered as it is defined (`Objective.__init_subclass__`):
# the recipe's `objective.name` -> class. Importing `mft.objectives` defines them all.
OBJECTIVES: dict[str, type["Objective"]] = {}

# The model kinds an objective may train. "causal": a decoder-only causal LM (llama, mistral, qwen2,
# gpt2, or any pretrained causal LM); "bert": an encoder that sees every token; "encoder_decoder":
# the factorization-curse paper's model (`mft.models.encoder_decoder`), which has a query stream.
MODEL_KINDS = ("causal", "bert", "encoder_decoder")

# How answers are generated (see `mft.decoding`).
DECODINGS = ("causal", "masked", "masked_any_order")


@dataclass
class Row:
    input_ids: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    causal: bool
    hidden: torch.Tensor | None = None  # bool [L], True = never an attention key
    source: str = ""  # the mixture component that made the row (for per-objective loss logs)
    sink: bool = False  # bidirectional rows: position 0 attends to itself alone
    attention: torch.Tensor | None = None  # bool [L, L], a custom mask replacing the rule above
    query_attention: torch.Tensor | None = None  # bool [L, L], two-stream models' query stream
    prompt_end: int = 0  # bidirectional rows: positions before it never attend to positions from it on

    def __len__(self) -> int:
        return self.input_ids.numel()


@dataclass
class SpecialTokens:
    """The token ids an objective needs to know about, taken from the tokenizer."""

    mask_token_id: int | None = None
    # Ids that masked objectives never mask (BOS, PAD, chat markers...). EOS is *not* among them:
    # a masked model must learn to predict the end of a sequence.
    fixed_ids: frozenset[int] = frozenset()
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "SpecialTokens":
        specials = set(getattr(tokenizer, "all_special_ids", []) or [])
        specials.discard(tokenizer.eos_token_id)
        return cls(
            mask_token_id=tokenizer.mask_token_id,
            fixed_ids=frozenset(specials),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )


def check_rate(field: str, value: float) -> None:
    """A masking rate, ratio or probability must lie in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise RecipeError(f"objective.{field} = {value} is outside [0, 1]; use a value between 0 and 1")


def check_rate_range(low: float, high: float) -> None:
    """`low` and `high` of a rate drawn from U(low, high): both in [0, 1], low <= high."""
    check_rate("low", low)
    check_rate("high", high)
    if low > high:
        raise RecipeError(f"objective.low = {low} > objective.high = {high}; set low <= high")


def example_generator(seed: int, *keys: int) -> torch.Generator:
    """A generator whose stream depends only on (seed, *keys), e.g. (seed, epoch, example index).

    Drawing each example's randomness from its own generator makes masks independent of batch
    composition, worker count, process rank and resumption: the same example in the same epoch
    always gets the same mask, and a new epoch gets a new one.
    """
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, *[k & 0xFFFFFFFF for k in keys]]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class Objective:
    """Base class. Subclasses are dataclasses whose fields are the recipe's `objective:` options.

    Besides making rows, an objective states the rules that validation and inference need, so that
    nothing else re-derives them (a mixture combines its components' rules):

        decoding          how a model trained with it answers by default (one of `DECODINGS`)
        shift             the logits at i-1 predict the masked token i (masked objectives' option)
        keep_sink         position 0 attends to itself alone under bidirectional attention
        attend_to_masked  masked positions are attention keys (False: hidden, as in the paper)
        prompt_sees_answer  prompt positions attend to the answer (False: block-causal, the prompt
                          attends only inside itself; masked decoding may then cache the prompt)
        bidirectional     some of its rows use bidirectional attention
        two_stream        its rows need a model with a separate query stream (PLM)
        architectures     the model kinds (`MODEL_KINDS`) it can train
        components        the objectives that make its rows: itself, or a mixture's components
        reads_prompt      its rows depend on where the prompt ends (prompt/completion examples)
    """

    name: ClassVar[str]
    needs_mask_token: ClassVar[bool] = False
    bidirectional: ClassVar[bool] = False
    two_stream: ClassVar[bool] = False
    decoding: ClassVar[str] = "causal"
    architectures: ClassVar[frozenset[str]] = frozenset({"causal", "encoder_decoder"})
    # Options of the masked objectives; fixed here for the objectives that have no such option.
    shift: bool = False
    keep_sink: bool = False
    attend_to_masked: bool = False
    prompt_sees_answer: bool = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if isinstance(cls.__dict__.get("name"), str):
            OBJECTIVES[cls.name] = cls

    @property
    def components(self) -> tuple["Objective", ...]:
        return (self,)

    def decoding_options(self) -> dict[str, bool]:
        """The training rules that masked decoding must repeat (keyword arguments of
        `mft.decoding.generate`)."""
        return {"shift": self.shift, "keep_sink": self.keep_sink, "attend_to_masked": self.attend_to_masked,
                "prompt_sees_answer": self.prompt_sees_answer}

    @property
    def reads_prompt(self) -> bool:
        return not getattr(self, "predict_prompt", True) or not self.prompt_sees_answer

    def setup(self, special: SpecialTokens, tokenizer=None) -> None:
        """Called once by the collator. `tokenizer` (when there is one) lets an objective build its
        fixed token sequences, e.g. a chat template around a masked document."""
        if self.needs_mask_token and special.mask_token_id is None:
            raise RecipeError(f"objective {self.name!r} needs a mask token but the tokenizer has none; give the "
                              f"tokenizer one (tokenizer.add_special_tokens({{'mask_token': '<mask>'}}))")
        self.special = special

    # What `setup` gives an objective; reading one of them before `setup` says so.
    _SET_UP_BY_SETUP: ClassVar[frozenset[str]] = frozenset({"special", "prefix", "middle", "open_ids", "close_ids",
                                                               "continues_word", "ends_in_word", "starts_upper"})

    def __getattr__(self, attribute: str):
        # Only reached for attributes that are not set.
        if attribute in self._SET_UP_BY_SETUP:
            raise AttributeError(f"objective {self.name!r} is not set up ({attribute!r} is missing): call "
                                 f"objective.setup(SpecialTokens.from_tokenizer(tokenizer), tokenizer) first, "
                                 f"or let MFTCollator do it")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attribute!r}")

    def __call__(self, example: dict[str, Any], generator: torch.Generator) -> list[Row]:
        raise NotImplementedError

    def batch_rows(self, examples: list[dict[str, Any]], generators: list[torch.Generator]) -> list[Row]:
        """The rows of a whole batch; each example draws from its own generator."""
        return [row for example, generator in zip(examples, generators) for row in self(example, generator)]

    def vocabulary_texts(self) -> list[str]:
        """Texts the objective adds to sequences (e.g. an instruction), for task vocabularies."""
        return []

    @classmethod
    def options(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    # -- helpers shared by the subclasses --------------------------------------------------------

    def _ids(self, example: dict[str, Any]) -> torch.Tensor:
        return torch.as_tensor(example["input_ids"], dtype=torch.long)

    def content_span(self, ids: torch.Tensor) -> tuple[int, int]:
        """[start, end): the tokens between leading special tokens (BOS, ...) and a trailing EOS."""
        fixed = self._fixed(ids)
        start = 0
        while start < len(ids) and fixed[start]:
            start += 1
        end = len(ids) - 1 if len(ids) and ids[-1] == self.special.eos_token_id else len(ids)
        return start, max(start, end)

    def _fixed(self, ids: torch.Tensor) -> torch.Tensor:
        """Bool [L]: positions holding special tokens (masked objectives never mask them)."""
        fixed = torch.zeros_like(ids, dtype=torch.bool)
        for token_id in self.special.fixed_ids:
            fixed |= ids == token_id
        return fixed
