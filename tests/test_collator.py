"""MFTCollator pads rows, builds the right attention mask for causal and bidirectional batches, and draws
masks that depend only on (seed, epoch, example index), not on the batch or the DataLoader workers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from mft import MFTCollator
from mft.data import TokenizedDataset, build_word_tokenizer
from mft.objectives import IGNORE, build_objective

WORDS = [f"w{i}" for i in range(40)]
TOKENIZER = build_word_tokenizer([" ".join(WORDS)])
PAD, BOS, EOS, MASK = (TOKENIZER.pad_token_id, TOKENIZER.bos_token_id, TOKENIZER.eos_token_id,
                       TOKENIZER.mask_token_id)


def example(num_words: int, seed: int = 0, prompt_length: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    words = [WORDS[i] for i in torch.randint(0, len(WORDS), (num_words,), generator=g).tolist()]
    ids = [BOS] + TOKENIZER(" ".join(words), add_special_tokens=False)["input_ids"] + [EOS]
    assert len(ids) == num_words + 2
    return {"input_ids": ids, "prompt_length": prompt_length}


def dataset(lengths=(5, 9, 3, 12, 7, 6, 10, 4)) -> TokenizedDataset:
    return TokenizedDataset([example(n, seed=i) for i, n in enumerate(lengths)])


def collator(objective="mlm_u", seed=0, **options) -> MFTCollator:
    return MFTCollator(build_objective(objective, **options), TOKENIZER, seed=seed)


def assert_batches_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


# -- padding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["ar", "ar_reverse", "mlm", "mlm_u"])
def test_rows_are_right_padded(objective):
    examples = [example(n, seed=n) for n in (2, 8, 5)]
    batch = collator(objective)(examples)
    rows_per_example = 2 if objective == "ar_reverse" else 1
    lengths = [len(e["input_ids"]) for e in examples for _ in range(rows_per_example)]
    B, L = batch["input_ids"].shape
    assert (B, L) == (len(lengths), max(lengths))
    assert batch["labels"].shape == batch["loss_weights"].shape == (B, L)
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert batch["loss_weights"].dtype == torch.float
    for b, n in enumerate(lengths):
        assert (batch["input_ids"][b, n:] == PAD).all()
        assert (batch["labels"][b, n:] == IGNORE).all()
        assert (batch["loss_weights"][b, n:] == 0).all()
        # the row itself is intact: its real tokens are not pad, and something is predicted
        assert (batch["input_ids"][b, :n] != PAD).all()
        assert (batch["labels"][b, :n] != IGNORE).any()
        assert torch.equal(batch["loss_weights"][b] == 0, batch["labels"][b] == IGNORE)
    if objective == "ar":
        for b, e in enumerate(examples):
            assert batch["input_ids"][b, :len(e["input_ids"])].tolist() == e["input_ids"]


def test_pad_to_multiple_of():
    c = MFTCollator(build_objective("ar"), TOKENIZER, pad_to_multiple_of=8)
    batch = c([example(3), example(7)])  # lengths 5 and 9 -> 16
    assert batch["input_ids"].shape == (2, 16)
    assert torch.equal(batch["attention_mask"].sum(1), torch.tensor([5, 9]))
    assert (batch["input_ids"][1, 9:] == PAD).all()


def test_pad_id_falls_back_to_eos_without_pad_token():
    from mft.objectives import SpecialTokens
    special = SpecialTokens(mask_token_id=MASK, fixed_ids=frozenset({BOS}), bos_token_id=BOS, eos_token_id=EOS)
    batch = MFTCollator(build_objective("ar"), special=special)([example(1), example(4)])
    assert (batch["input_ids"][0, 3:] == EOS).all()
    assert (batch["labels"][0, 3:] == IGNORE).all()


# -- attention masks -------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["ar", "ar_reverse"])
def test_causal_batch_has_2d_padding_mask(objective):
    examples = [example(n, seed=n) for n in (6, 1, 3)]
    batch = collator(objective)(examples)
    mask = batch["attention_mask"]
    assert mask.dim() == 2 and mask.dtype == torch.long
    assert torch.equal(mask, (batch["input_ids"] != PAD).long())
    assert mask.sum().item() == sum(len(e["input_ids"]) for e in examples) * (2 if objective == "ar_reverse" else 1)


@pytest.mark.parametrize("objective, options", [
    ("mlm", {}), ("mlm", {"rate": 0.5}), ("mlm", {"attend_to_masked": True}),
    ("mlm_u", {}), ("mlm_u", {"low": 0.5, "high": 0.5}), ("mlm_u", {"attend_to_masked": True}),
], ids=["mlm", "mlm-half", "mlm-attend", "mlm_u", "mlm_u-half", "mlm_u-attend"])
def test_masked_batch_has_4d_bidirectional_mask(objective, options):
    examples = [{**example(n, seed=n), "example_index": i, "epoch": 0} for i, n in enumerate((6, 1, 12, 3, 9))]
    batch = collator(objective, **options)(examples)
    mask = batch["attention_mask"]
    B, L = batch["input_ids"].shape
    assert mask.shape == (B, 1, L, L) and mask.dtype == torch.bool
    mask = mask[:, 0]
    eye = torch.eye(L, dtype=torch.bool)
    assert mask[:, eye].all(), "every query attends to itself"
    attend = options.get("attend_to_masked", False)
    total_hidden = 0
    for b, e in enumerate(examples):
        n = len(e["input_ids"])
        real = torch.arange(L) < n
        hidden = (batch["input_ids"][b] == MASK) if not attend else torch.zeros(L, dtype=torch.bool)
        total_hidden += hidden.sum().item()
        off_diagonal = mask[b] & ~eye
        assert not off_diagonal[:, ~real].any(), "a query attends to a padding key"
        assert not off_diagonal[:, hidden].any(), "a query attends to a hidden key"
        # and it is bidirectional: every query sees every visible real key, earlier and later ones
        visible = real & ~hidden
        assert mask[b][:, visible].all()
        expected = visible[None, :].expand(L, L) | eye
        assert torch.equal(mask[b], expected)
    if not attend:
        assert total_hidden > 0  # the hidden-key check above had something to check


@pytest.mark.parametrize("pack_length", [0, 64])
def test_prompt_sees_answer_false_keeps_the_prompt_from_its_answer(pack_length):
    """Block-causal rows: a prompt query sees only its prompt's visible keys; an answer query sees
    the prompt and the answer's visible keys, exactly as with the prompt seeing the answer."""
    examples = [{**example(n, seed=n, prompt_length=p), "example_index": i, "epoch": 0}
                for i, (n, p) in enumerate(((6, 3), (9, 5), (4, 0), (12, 2)))]
    seeing = MFTCollator(build_objective("mlm_u"), TOKENIZER, seed=0, pack_length=pack_length)(examples)
    blocked = MFTCollator(build_objective("mlm_u", prompt_sees_answer=False), TOKENIZER, seed=0,
                          pack_length=pack_length)(examples)
    assert torch.equal(seeing["input_ids"], blocked["input_ids"])  # the same draws: only the mask differs
    barred = seeing["attention_mask"][:, 0] & ~blocked["attention_mask"][:, 0]
    assert not (blocked["attention_mask"] & ~seeing["attention_mask"]).any()
    starts = [0]
    for e in examples[:-1]:
        starts.append(starts[-1] + len(e["input_ids"]) if pack_length else 0)
    expected = torch.zeros_like(barred)
    for b, (e, start) in enumerate(zip(examples, starts)):
        row = 0 if pack_length else b
        n, p = len(e["input_ids"]), e["prompt_length"]
        visible = seeing["attention_mask"][row, 0]
        expected[row, start:start + p, start + p:start + n] = visible[start:start + p, start + p:start + n]
    assert torch.equal(barred, expected)
    assert barred.any()


def test_prompt_sees_answer_false_is_in_the_decoding_rules():
    from mft.decoding import DecodingSpec

    objective = build_objective("mlm_u", shift=True, keep_sink=True, prompt_sees_answer=False)
    assert objective.decoding_options()["prompt_sees_answer"] is False and objective.reads_prompt
    assert DecodingSpec.of(objective, TOKENIZER).rules()["prompt_sees_answer"] is False
    mixture = build_objective("mixture", mix={"ar": 0.5, "mlm_u": 0.5}, options={"mlm_u": {"prompt_sees_answer": False}})
    assert mixture.decoding_options()["prompt_sees_answer"] is False


# -- randomness across batches, epochs and workers -------------------------------------------------


@pytest.mark.parametrize("objective", ["mlm", "mlm_u"])
def test_mask_does_not_depend_on_the_batch(objective):
    data = dataset()
    c = collator(objective, seed=3)
    full = c([data[i] for i in range(len(data))])
    for i in range(len(data)):
        alone = c([data[i]])
        n = alone["input_ids"].shape[1]
        for key in ("input_ids", "labels", "loss_weights"):
            assert torch.equal(alone[key][0], full[key][i, :n]), (i, key)
        assert torch.equal(alone["attention_mask"][0, 0], full["attention_mask"][i, 0, :n, :n])
    # in another order, inside another batch
    order = [5, 2, 7, 0]
    shuffled = c([data[i] for i in order])
    for position, i in enumerate(order):
        n = len(data.examples[i]["input_ids"])
        assert torch.equal(shuffled["input_ids"][position, :n], full["input_ids"][i, :n])


def test_mask_is_reproducible_across_collators_and_changes_with_seed():
    data = dataset()
    items = [data[i] for i in range(len(data))]
    assert_batches_equal(collator(seed=1)(items), collator(seed=1)(items))
    assert not torch.equal(collator(seed=1)(items)["input_ids"], collator(seed=2)(items)["input_ids"])


def test_mask_changes_with_epoch():
    data = dataset()
    c = collator("mlm_u")
    epoch0 = c([data[i] for i in range(len(data))])
    again = c([data[i] for i in range(len(data))])
    assert_batches_equal(epoch0, again)
    data.set_epoch(1)
    epoch1 = c([data[i] for i in range(len(data))])
    changed = [not torch.equal(epoch0["input_ids"][i], epoch1["input_ids"][i]) for i in range(len(data))]
    assert sum(changed) >= len(data) - 1, changed
    data.set_epoch(0)
    assert_batches_equal(epoch0, c([data[i] for i in range(len(data))]))


def test_without_example_index_a_seeded_collator_generator_is_used():
    examples = [example(20, seed=s) for s in range(4)]
    a, b = collator(seed=7), collator(seed=7)
    first_a, first_b = a(examples), b(examples)
    assert_batches_equal(first_a, first_b)
    # the generator advances: the next call draws new masks
    assert not torch.equal(a(examples)["input_ids"], first_a["input_ids"])


@pytest.mark.parametrize("objective", ["mlm_u", "ar"])
def test_dataloader_workers_give_the_same_batches(objective):
    data = dataset(lengths=tuple(3 + (5 * i) % 11 for i in range(12)))
    c = collator(objective, seed=11)

    def batches(workers):
        loader = DataLoader(data, batch_size=3, shuffle=False, collate_fn=c, num_workers=workers)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 4
    for a, b in zip(serial, parallel):
        assert_batches_equal(a, b)
    if objective == "mlm_u":
        # and they are what the collator gives for the examples by index, whatever the batching
        direct = c([data[i] for i in range(3, 6)])
        assert_batches_equal(serial[1], direct)


def test_dataloader_workers_draw_independent_masks_without_example_index():
    # Examples without example_index/epoch fall back to the collator's own generator. Each DataLoader
    # worker must still draw its own masks: not a copy of another worker's stream, and not the same
    # masks again in every epoch (workers are re-forked from the untouched parent each epoch).
    examples = [example(20, seed=s) for s in range(8)]  # all of one length: same draws = same masks
    c = collator("mlm_u", seed=0)
    loader = DataLoader(examples, batch_size=2, shuffle=False, collate_fn=c, num_workers=2)
    epochs = [[(batch["input_ids"] == MASK) for batch in loader] for _ in range(2)]
    first = epochs[0]
    assert not torch.equal(first[0], first[1]), "workers 0 and 1 drew identical masks"
    assert not torch.equal(first[2], first[3]), "workers 0 and 1 drew identical masks"
    assert not all(torch.equal(a, b) for a, b in zip(epochs[0], epochs[1])), "every epoch repeats the masks"
