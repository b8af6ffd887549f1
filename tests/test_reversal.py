"""Reversal objectives on hand-made examples: entity reversal (with and without delimiters) and
random-segment reversal."""

from __future__ import annotations

import pytest
import torch

from mft.data import build_word_tokenizer, encode_row
from mft.objectives import ARReverseEntity, ARReverseSegment, SpecialTokens, build_objective

TEXTS = ["alice smith => bob => carol jones", "who is bob =>", "carol jones", "<ent> </ent>"]


def _setup(objective):
    tokenizer = build_word_tokenizer(TEXTS)
    objective.setup(SpecialTokens.from_tokenizer(tokenizer), tokenizer)
    return tokenizer


def _words(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids.tolist())


def test_entity_reversal_keeps_each_entity_in_order():
    objective = ARReverseEntity(delimiters=False)
    tokenizer = _setup(objective)
    example = encode_row(tokenizer, {"text": "alice smith => bob => carol jones",
                                     "entities": ["alice smith", "bob", "carol jones"]})
    forward, reverse = objective(example, torch.Generator())
    assert _words(tokenizer, forward.input_ids) == "<s> alice smith => bob => carol jones </s>".split()
    assert _words(tokenizer, reverse.input_ids) == "<s> carol jones => bob => alice smith </s>".split()
    assert forward.causal and reverse.causal
    assert reverse.labels[:-1].tolist() == reverse.input_ids[1:].tolist(), "the reversed row is next-token trained"


def test_entity_reversal_with_delimiters_wraps_every_entity():
    objective = ARReverseEntity(delimiters=True)
    tokenizer = _setup(objective)
    example = encode_row(tokenizer, {"text": "alice smith => bob => carol jones",
                                     "entities": ["alice smith", "bob", "carol jones"]})
    _, reverse = objective(example, torch.Generator())
    assert _words(tokenizer, reverse.input_ids) == (
        "<s> <ent> carol jones </ent> => <ent> bob </ent> => <ent> alice smith </ent> </s>".split())


def test_entity_reversal_reverses_words_outside_entities_one_by_one():
    objective = ARReverseEntity(delimiters=False)
    tokenizer = _setup(objective)
    example = encode_row(tokenizer, {"prompt": "who is bob =>", "completion": "carol jones",
                                     "entities": ["bob", "carol jones"]})
    forward, reverse = objective(example, torch.Generator())
    assert _words(tokenizer, reverse.input_ids) == "<s> carol jones => bob is who </s>".split()
    # the forward row keeps completion-only training when asked
    completion_only = ARReverseEntity(delimiters=False, predict_prompt=False)
    _setup(completion_only)
    forward = completion_only(example, torch.Generator())[0]
    assert [t for t in forward.labels.tolist() if t != -100] == tokenizer.convert_tokens_to_ids("carol jones </s>".split())


def test_entity_reversal_without_entities_is_token_reversal():
    objective = ARReverseEntity(delimiters=True)
    tokenizer = _setup(objective)
    example = encode_row(tokenizer, {"text": "alice smith => bob"})
    _, reverse = objective(example, torch.Generator())
    assert _words(tokenizer, reverse.input_ids) == "<s> bob => smith alice </s>".split()


def test_delimiters_join_a_from_scratch_vocabulary():
    assert set(build_objective("ar_reverse_entity").vocabulary_texts()) == {"<ent>", "</ent>"}
    assert build_objective("ar_reverse_entity", delimiters=False).vocabulary_texts() == []


def test_segment_reversal_is_a_reordering_of_segments():
    objective = ARReverseSegment(max_segment_length=3)
    tokenizer = _setup(objective)
    example = encode_row(tokenizer, {"text": "alice smith => bob => carol jones"})
    content = example["input_ids"][1:-1]
    seen_lengths = set()
    for seed in range(40):
        _, reverse = objective(example, torch.Generator().manual_seed(seed))
        ids = reverse.input_ids.tolist()
        assert ids[0] == example["input_ids"][0] and ids[-1] == example["input_ids"][-1]
        reversed_content = ids[1:-1]
        assert sorted(reversed_content) == sorted(content)
        # cut the reversed content back into segments: reading them in reverse order restores the text
        segments = _segments(reversed_content, content)
        assert segments is not None, f"seed {seed}: {reversed_content} is not a segment reversal of {content}"
        seen_lengths |= {len(s) for s in segments}
    assert seen_lengths == {1, 2, 3}


def _segments(reversed_content, content):
    """A split of `reversed_content` into pieces of 1..3 tokens whose reverse order gives `content`, or None."""
    if not reversed_content:
        return []
    for n in (1, 2, 3):
        piece = reversed_content[:n]
        if len(piece) == n and content[len(content) - n:] == piece:
            rest = _segments(reversed_content[n:], content[:len(content) - n])
            if rest is not None:
                return [piece] + rest
    return None


def test_segment_reversal_with_length_one_is_token_reversal():
    objective = ARReverseSegment(max_segment_length=1)
    tokenizer = _setup(objective)
    example = encode_row(tokenizer, {"text": "alice smith => bob"})
    _, reverse = objective(example, torch.Generator())
    assert _words(tokenizer, reverse.input_ids) == "<s> bob => smith alice </s>".split()


def test_segment_length_must_be_positive():
    with pytest.raises(ValueError, match="max_segment_length"):
        ARReverseSegment(max_segment_length=0)
