"""From rows of text to token ids, and the task vocabulary of from-scratch models.

A row becomes  [bos] + prompt + completion + [eos]  with prompt_length = 1 + len(prompt) (the BOS, when
the tokenizer has one, belongs to the prompt). A text row has no prompt: prompt_length = 0.
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                  "mask_token": "<mask>"}


def build_word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (split on whitespace) whose vocabulary is every word of `texts`.

    Synthetic tasks are written as space-separated symbols, so one word = one token, in the order
    the words first appear (deterministic for a deterministic task)."""
    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS.values():
        vocab.setdefault(token, len(vocab))
    for text in texts:
        for word in text.split():
            vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)


def row_texts(row: dict[str, str]) -> list[str]:
    return [value for key, value in row.items() if key in ("text", "prompt", "completion", "question", "answer")]


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The context given to the model at evaluation: [bos] + prompt."""
    return _bos(tokenizer) + _encode(tokenizer, prompt)


def encode_completion(tokenizer, prompt: str, completion: str) -> list[int]:
    # A separating space keeps BPE vocabularies on their usual word-initial tokens.
    joiner = "" if not prompt or prompt[-1].isspace() else " "
    return _encode(tokenizer, joiner + completion)


def encode_row(tokenizer, row: dict[str, str]) -> dict[str, Any]:
    eos = [tokenizer.eos_token_id]
    if "text" in row:
        return {"input_ids": _bos(tokenizer) + _encode(tokenizer, row["text"]) + eos, "prompt_length": 0}
    prompt = encode_prompt(tokenizer, row["prompt"])
    completion = encode_completion(tokenizer, row["prompt"], row["completion"])
    return {"input_ids": prompt + completion + eos, "prompt_length": len(prompt)}


class TokenizedDataset(torch.utils.data.Dataset):
    """Tokenized training examples, each tagged with its index and the current epoch so that the
    collator can draw its mask reproducibly (see `mft.collator`). `MFTTrainer` calls `set_epoch`."""

    def __init__(self, examples: list[dict[str, Any]]):
        self.examples = examples
        self.epoch = 0

    @classmethod
    def from_rows(cls, tokenizer, rows: list[dict[str, str]]) -> "TokenizedDataset":
        return cls([encode_row(tokenizer, row) for row in rows])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.examples[index], "example_index": index, "epoch": self.epoch}
