"""From rows of text to token ids, and the task vocabulary of from-scratch models.

A row becomes  [bos] + prompt + completion + [eos]  with prompt_length = 1 + len(prompt) (the BOS, when
the tokenizer starts sequences with one, belongs to the prompt). A text row has no prompt:
prompt_length = 0. With a chat template (pretrained chat models), a prompt is the template's user
turn plus the assistant header, and the completion is the assistant's answer ended by EOS; plain
text rows stay plain text. A chat answer may be written after a space, to be tokenized as its words are
in running text (`space_answers`).
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast
from ..errors import RecipeError

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                  "mask_token": "<mask>"}


def build_word_tokenizer(texts: list[str], add_bos_token: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (split on whitespace) whose vocabulary is every word of `texts`.

    Synthetic tasks are written as space-separated symbols, so one word = one token, in the order
    the words first appear (deterministic for a deterministic task). With `add_bos_token` every
    sequence starts with BOS, like Llama's tokenizer; the saved tokenizer keeps the choice."""
    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS.values():
        vocab.setdefault(token, len(vocab))
    for text in texts:
        for word in text.split():
            vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos_token:  # `encode_row` asks the tokenizer whether it starts sequences with BOS
        bos = SPECIAL_TOKENS["bos_token"]
        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                               special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)


def row_texts(row: dict[str, str]) -> list[str]:
    return [value for key, value in row.items() if key in ("text", "prompt", "completion", "question", "answer")]


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def bos_ids(tokenizer) -> list[int]:
    """[bos] when the tokenizer starts its sequences with one (Llama, Mistral), else [] (Qwen,
    SmolLM2, whose BOS-like token belongs to the chat template)."""
    bos = tokenizer.bos_token_id
    starts_with_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    return [bos] if starts_with_bos else []


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(tokenizer, prompt: str, chat: bool = True) -> list[int]:
    """The context a question or prompt is given in: the chat template's user turn followed by the
    assistant header when the tokenizer has a chat template (and `chat`), else [bos] + prompt: a
    completion-format probe is a raw text prefix that the model continues."""
    if chat and uses_chat_template(tokenizer):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                            add_generation_prompt=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    return bos_ids(tokenizer) + _encode(tokenizer, prompt)


def is_chat_row(row: dict[str, Any]) -> bool:
    """Whether a prompt row or QA row goes through the chat template: its "format" (default "chat")."""
    return row.get("format", "chat") == "chat"


def decode_answer(tokenizer, ids: list[int], chat: bool = True) -> str:
    """A generated answer as text: a chat answer without surrounding whitespace (it stands alone, and
    starts with a space after `space_answers`); a completion as generated, its leading
    space joining it to its prompt."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return text.strip() if chat else text


def encode_completion(tokenizer, prompt: str, completion: str, chat: bool = True) -> list[int]:
    """The completion's ids. Without a chat template (or not `chat`: a completion-format row), after a
    separating space: BPE vocabularies give a word a different first token at the start of a text
    ("T" "arv" "mere") than after a space (" T" "arv" "mere"), and the space keeps the completion on
    the word-initial tokens of running text. A chat answer starts on the assistant turn's fresh line,
    as written (see `space_answers`)."""
    if chat and uses_chat_template(tokenizer):
        return _encode(tokenizer, completion)
    joiner = "" if not prompt or prompt[-1].isspace() else " "
    return _encode(tokenizer, joiner + completion)


def encode_row(tokenizer, row: dict[str, Any]) -> dict[str, Any]:
    """{"input_ids", "prompt_length"}, plus "entity_spans" (sorted [start, end) token spans) when the
    row names its entities. A prompt row goes through the chat template unless its "format" is
    "completion": then it is [bos] + prompt + " " + completion + [eos], the text of a completion probe."""
    eos = [tokenizer.eos_token_id]
    if "text" in row:
        example = {"input_ids": bos_ids(tokenizer) + _encode(tokenizer, row["text"]) + eos, "prompt_length": 0}
    else:
        chat = is_chat_row(row)
        prompt = encode_prompt(tokenizer, row["prompt"], chat=chat)
        completion = encode_completion(tokenizer, row["prompt"], row["completion"], chat=chat)
        example = {"input_ids": prompt + completion + eos, "prompt_length": len(prompt)}
    if row.get("entities"):
        example["entity_spans"] = entity_spans(tokenizer, example["input_ids"], row["entities"])
    return example


def space_answers(tokenizer, rows: list[dict[str, Any]], answer_space: bool | str) -> list[dict[str, Any]]:
    """`rows` with the chat answers that should start with a space written with one (`data.answer_space`).

    A chat answer starts a fresh line, so BPE vocabularies write its first word on a token that running
    text never uses: "Tarvmere" is "T" "arv" "mere" there but " T" "arv" "mere" in a document, and a
    fact read in a document would be answered in tokens it was never read in. True: every answer after
    a space. "auto": an answer after a space when the text rows show it that way only (its spaced
    tokens occur in them, its plain tokens never do); an answer that also starts a text row (a name
    opening a paragraph) stays as written. Rows of tokenizers without a chat template are returned
    as they are (`encode_completion` already joins their completions with a space)."""
    if not answer_space or not uses_chat_template(tokenizer):
        return rows

    chat_answer = lambda row: "completion" in row and is_chat_row(row)
    answers = {row["completion"] for row in rows if chat_answer(row) and not row["completion"][:1].isspace()}
    if answer_space == "auto":
        # Token ids as characters, one string search per answer form over every text row; rows are
        # joined by a character no token id maps to.
        as_text = lambda ids: "".join(map(chr, ids))
        corpus = chr(0x10FFFF).join(as_text(_encode(tokenizer, row["text"])) for row in rows if "text" in row)
        answers = {answer for answer in answers if as_text(_encode(tokenizer, " " + answer)) in corpus
                   and as_text(_encode(tokenizer, answer)) not in corpus}
    return [{**row, "completion": " " + row["completion"]} if chat_answer(row) and row["completion"] in answers
            else row for row in rows]


def entity_spans(tokenizer, ids: list[int], entities: list[str]) -> list[list[int]]:
    """Every occurrence of every entity in `ids`, as sorted, non-overlapping [start, end) token spans.
    An entity is looked for as tokenized alone and with a leading space (BPE vocabularies encode a
    word differently at the start of a text and after a space); longer entities claim tokens first."""
    claimed = [False] * len(ids)
    spans = []
    for entity in sorted(set(entities), key=len, reverse=True):
        found = False
        for pattern in {tuple(_encode(tokenizer, entity)), tuple(_encode(tokenizer, " " + entity))}:
            n = len(pattern)
            for start in range(len(ids) - n + 1):
                if tuple(ids[start:start + n]) == pattern and not any(claimed[start:start + n]):
                    claimed[start:start + n] = [True] * n
                    spans.append([start, start + n])
                    found = True
        if not found:
            raise RecipeError(f"entity {entity!r} is not a whole run of tokens in its row ({tokenizer.decode(ids)!r}); "
                              f"give entities that start and end on token boundaries")
    return sorted(spans)


class TokenizedDataset(torch.utils.data.Dataset):
    """Tokenized training examples, each tagged with its index and the current epoch so that the
    collator can draw its mask reproducibly (see `mft.collator`). `MFTTrainer` calls `set_epoch`.
    `origins[i]`: (training row index, window index) of example i; a long text row gives several
    windows (`mft.data.windows`, which also sets `windowing`), any other row one example."""

    def __init__(self, examples: list[dict[str, Any]], origins: list[tuple[int, int]] | None = None):
        self.examples = examples
        self.origins = origins if origins is not None else [(index, 0) for index in range(len(examples))]
        self.windowing = None
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
