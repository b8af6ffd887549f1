"""Documents of any length: a text row longer than a window is split into windows, never truncated.

The window length w is the most content tokens an example may hold so that the longest row the
objective builds from it stays within the row limit (the smallest of data.max_length, the model's
context and training.pack_length; `mft.train.prepare` finds both). w counts content tokens only:
an example is  [bos] + window (+ [eos])  and the special tokens are counted in the rows measured.

The rule. A text row is tokenized once, without special tokens, into ids d_0 .. d_{n-1}, and cut
into windows [start, end) in order:

- the first window starts at 0; a window that can reach the end of the document (n - start <= w)
  is the last one;
- any other window ends at the last *sentence end* among the ends start + w - w//4 .. start + w
  (a cut after a token whose text ends with . ! or ? (closing quotes or brackets may follow) or
  with a newline, or that is followed by a blank line); failing that at the last word boundary
  there (a cut before a token that follows whitespace); failing that at start + w;
- the next window starts at end - overlap (data.window_overlap), and always after the previous
  start.

So every token is in some window; with overlap 0 the windows' ids, concatenated, are the
document's ids, and with overlap k they are after dropping the first k ids of every window but the
first. Tokenizers without offsets (slow tokenizers) cut at start + w.

Each window becomes the example `encode_row` makes from a text row: [bos] + window + [eos], with
BOS when the tokenizer starts its sequences with one, and EOS on the document's last window only:
a window cut in mid-document must not teach the model that the text ends there. prompt_length is 0.
Entity spans are the whole document's occurrences that lie wholly inside the window; an
occurrence cut by the window's border is dropped from that window. Entities are the one thing
besides the length that makes a row longer (ar_reverse_entity writes delimiters around each), so a
window carrying entity spans is measured with the objective and cut shorter until its rows fit.

A document of at most w tokens is one window: exactly the example `encode_row` makes. Rows with a
prompt are never windowed (cutting them would separate a question from its answer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import RecipeError
from .tokenize import TokenizedDataset, bos_ids, encode_row, entity_spans

# Characters that may follow a sentence's final . ! ? inside the same token (`."`, `?)`).
CLOSING = "\"')]}\u00bb\u201d\u2019"
SENTENCE_END = (".", "!", "?", "\n")
BLANK_LINE = re.compile(r"\n[^\S\n]*\n")


@dataclass
class Windowing:
    """How text rows are cut (see the module docstring). `length`: w, content tokens per window at
    most; `overlap`: tokens shared by consecutive windows; `limit`: the row limit w was found for,
    and `source` what sets it (for messages); `row_length(example)`: the longest row the objective
    builds from an example, which measures windows that carry entity spans."""

    length: int
    overlap: int = 0
    limit: int | None = None
    source: str = ""
    row_length: Callable[[dict[str, Any]], int] | None = None

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"a window holds at least one token, not {self.length}")
        # Windows cut at a sentence end hold at least 3/4 of w; an overlap below w/2 leaves every
        # window something new, as data.window_overlap's own check (< data.max_length / 2) intends.
        if self.overlap and self.overlap >= max(self.length // 2, 1):
            raise RecipeError(f"data.window_overlap = {self.overlap} is too large for windows of {self.length} tokens "
                              f"(the most that fits {self.source} = {self.limit} for this objective); use less than "
                              f"{max(self.length // 2, 1)}")


def synthetic_text_example(tokenizer, n: int) -> dict[str, Any]:
    """A text example of n content tokens as the last window of a document is built ([bos] + n
    ids + [eos]), for measuring rows: the content is one ordinary (non-special) token repeated."""
    special = set(tokenizer.all_special_ids)
    filler = next(i for i in range(len(tokenizer)) if i not in special)
    return {"input_ids": bos_ids(tokenizer) + [filler] * n + [tokenizer.eos_token_id], "prompt_length": 0}


def window_length(limit: int, row_length: Callable[[int], int]) -> int:
    """The largest n in 0..limit with row_length(n) <= limit, where row_length(n) is the longest row
    built from an example of n content tokens and grows with n (a binary search; rows are never
    shorter than their content, so n <= limit). 0 when not even one token fits."""
    if row_length(limit) <= limit:
        return limit
    fits, too_long = 0, limit
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if row_length(middle) <= limit:
            fits = middle
        else:
            too_long = middle
    return fits


def tokenize_document(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    """The text's ids (no special tokens) and each token's character span, or None for tokenizers
    that cannot give spans."""
    # verbose=False: no "sequence longer than the model's maximum" warning; the windows fit it.
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    except NotImplementedError:  # slow tokenizers have no offsets
        return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], None
    return encoded["input_ids"], [tuple(span) for span in encoded["offset_mapping"]]


def boundaries(text: str, offsets: list[tuple[int, int]]) -> tuple[list[bool], list[bool]]:
    """(sentence_end, word_start): sentence_end[i] when a cut after token i ends a sentence,
    word_start[i] when a cut before token i falls between words (see the module docstring)."""
    n = len(offsets)
    sentence_end, word_start = [False] * n, [False] * n
    for i, (start, end) in enumerate(offsets):
        following = text[end:offsets[i + 1][0]] if i + 1 < n else text[end:]
        sentence_end[i] = (text[start:end].rstrip(CLOSING).endswith(SENTENCE_END)
                           or BLANK_LINE.search(following) is not None)
        if i:
            preceding = text[offsets[i - 1][1]:start]
            word_start[i] = any(c.isspace() for c in preceding) or text[start:start + 1].isspace()
    return sentence_end, word_start


def choose_end(start: int, longest_end: int, sentence_end: list[bool] | None, word_start: list[bool] | None) -> int:
    """Where a window that starts at `start` and may reach `longest_end` (not the document's end)
    ends: the last sentence end in its last quarter, else the last word boundary there, else
    `longest_end`."""
    earliest = max(longest_end - (longest_end - start) // 4, start + 1)
    ends = range(longest_end, earliest - 1, -1)
    if sentence_end is not None:
        for end in ends:
            if sentence_end[end - 1]:
                return end
    if word_start is not None:
        for end in ends:
            if word_start[end]:
                return end
    return longest_end


def cut_windows(n: int, length: int, overlap: int = 0, sentence_end: list[bool] | None = None,
                word_start: list[bool] | None = None,
                overflow: Callable[[int, int], int] = lambda start, end: 0) -> list[tuple[int, int]]:
    """The windows [start, end) of a document of n tokens (see the module docstring).
    `overflow(start, end)`: by how many tokens that window's rows exceed the limit (0 or less when
    they fit); a window that overflows is cut again, that many tokens shorter."""
    if n == 0:
        return [(0, 0)]
    windows, start = [], 0
    while True:
        room = length
        while True:
            end = n if n - start <= room else choose_end(start, start + room, sentence_end, word_start)
            excess = overflow(start, end)
            if excess <= 0:
                break
            room = end - start - excess
            if room < 1:
                raise RecipeError(f"a text row cannot be cut into windows whose rows fit the row limit (at tokens "
                                  f"{start}..{end} its rows are {excess} tokens too long); raise the limit")
        windows.append((start, end))
        if end == n:
            return windows
        start = max(end - overlap, start + 1)


def window_document(tokenizer, row: dict[str, Any], windowing: Windowing, bos: list[int]) -> list[dict[str, Any]]:
    """The examples of one text row, one per window (see the module docstring)."""
    text = row["text"]
    ids, offsets = tokenize_document(tokenizer, text)
    spans = entity_spans(tokenizer, ids, row["entities"]) if row.get("entities") else None
    eos = [tokenizer.eos_token_id]

    def example(start: int, end: int) -> dict[str, Any]:
        made = {"input_ids": bos + ids[start:end] + (eos if end == len(ids) else []), "prompt_length": 0}
        if spans is not None:  # whole occurrences only, shifted to the window (after its BOS)
            made["entity_spans"] = [[a - start + len(bos), b - start + len(bos)]
                                    for a, b in spans if start <= a and b <= end]
        return made

    def overflow(start: int, end: int) -> int:
        if not spans or windowing.row_length is None or windowing.limit is None:
            return 0  # w already guarantees the fit of windows without entities
        window = example(start, end)
        return windowing.row_length(window) - windowing.limit if window["entity_spans"] else 0

    sentence_end, word_start = boundaries(text, offsets) if offsets is not None else (None, None)
    return [example(start, end) for start, end in cut_windows(len(ids), windowing.length, windowing.overlap,
                                                              sentence_end, word_start, overflow)]


def windowed_dataset(tokenizer, rows: list[dict[str, Any]], windowing: Windowing | None) -> TokenizedDataset:
    """`TokenizedDataset.from_rows` with every text row cut into windows (prompt/completion rows
    and, without `windowing`, every row: one example each). The dataset's `origins[i]` is
    (row index, window index) of example i, and its `windowing` the rule it was cut by."""
    if windowing is None:
        return TokenizedDataset.from_rows(tokenizer, rows)
    bos = bos_ids(tokenizer)
    examples, origins = [], []
    for index, row in enumerate(rows):
        pieces = window_document(tokenizer, row, windowing, bos) if "text" in row else [encode_row(tokenizer, row)]
        examples.extend(pieces)
        origins.extend((index, window) for window in range(len(pieces)))
    dataset = TokenizedDataset(examples, origins)
    dataset.windowing = windowing
    return dataset


def split_documents(dataset: TokenizedDataset) -> tuple[int, int]:
    """(documents cut into more than one window, the windows they gave)."""
    split = {row for row, window in dataset.origins if window > 0}
    return len(split), sum(1 for row, _ in dataset.origins if row in split)


def windowing_note(dataset: TokenizedDataset, objective_name: str) -> str | None:
    """One line saying which documents were split, or None when none was."""
    documents, windows = split_documents(dataset)
    if not documents:
        return None
    rule = dataset.windowing
    return (f"{documents} document{'s' if documents > 1 else ''} longer than {rule.length} tokens "
            f"{'were' if documents > 1 else 'was'} split into {windows} windows (overlap {rule.overlap}; "
            f"{objective_name}'s rows fit {rule.source} = {rule.limit})")
