"""The objectives draw the masks and labels they promise: the masking statistics of mlm / mlm_u, the
label/weight/hidden bookkeeping, the handling of special tokens and prompts, next-token and reversed
rows, reproducibility of the random streams and validation of the options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from mft.objectives import (AR, IGNORE, MLM, MLMU, ARReverse, SpecialTokens, build_objective,
                            example_generator)

PAD, BOS, EOS, UNK, MASK = 0, 1, 2, 3, 4
FIRST_WORD, VOCAB = 5, 50
# As SpecialTokens.from_tokenizer(build_word_tokenizer(...)) gives: every special id but EOS is fixed.
SPECIAL = SpecialTokens(mask_token_id=MASK, fixed_ids=frozenset({PAD, BOS, UNK, MASK}), bos_token_id=BOS,
                        eos_token_id=EOS)


def setup(objective):
    objective.setup(SPECIAL)
    return objective


def text_example(num_words: int, seed: int = 0, prompt_length: int = 0) -> dict:
    """[bos] + num_words random word ids + [eos]: num_words + 1 maskable positions (EOS is maskable)."""
    words = torch.randint(FIRST_WORD, VOCAB, (num_words,), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": [BOS, *words.tolist(), EOS], "prompt_length": prompt_length}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def one_row(objective, example, seed=0):
    rows = objective(example, gen(seed))
    assert len(rows) == 1
    return rows[0]


def masked_fractions(objective, num_words: int, draws: int) -> np.ndarray:
    example = text_example(num_words)
    maskable = num_words + 1
    fractions = np.empty(draws)
    for i in range(draws):
        row = one_row(objective, example, seed=i)
        fractions[i] = (row.input_ids == MASK).sum().item() / maskable
    return fractions


# -- masking statistics ----------------------------------------------------------------------------


def test_mlm_u_masked_fraction_has_mean_one_half():
    fractions = masked_fractions(setup(MLMU()), num_words=63, draws=4000)  # 64 maskable tokens
    assert abs(fractions.mean() - 0.5) < 0.02
    # U(0, 1) has variance 1/12; a fixed or clustered rate would not.
    assert abs(fractions.var() - 1 / 12) < 0.01


def test_mlm_u_masked_fraction_is_uniform():
    # 512 maskable tokens: the lattice step 1/512 is far below the KS critical distance (~0.026).
    fractions = masked_fractions(setup(MLMU()), num_words=511, draws=4000)
    result = stats.kstest(fractions, "uniform")
    assert result.pvalue > 0.01, result
    # Chi-square over ten equal bins as a second opinion.
    counts, _ = np.histogram(fractions, bins=10, range=(0.0, 1.0 + 1e-9))
    assert stats.chisquare(counts).pvalue > 0.01, counts


def test_mlm_u_rate_range_is_respected():
    fractions = masked_fractions(setup(MLMU(low=0.2, high=0.6)), num_words=199, draws=2000)
    assert fractions.min() >= 0.2 - 1 / 200 and fractions.max() <= 0.6 + 1 / 200
    assert abs(fractions.mean() - 0.4) < 0.01
    assert stats.kstest(fractions, "uniform", args=(0.2, 0.4)).pvalue > 0.01


@pytest.mark.parametrize("num_words", [0, 1, 2, 3])
@pytest.mark.parametrize("objective", [MLMU(), MLM(rate=0.15), MLMU(low=0.0, high=0.0)], ids=["mlm_u", "mlm", "mlm_u0"])
def test_every_sequence_has_a_masked_token(objective, num_words):
    setup(objective)
    example = text_example(num_words)
    for seed in range(300):
        row = one_row(objective, example, seed)
        assert (row.input_ids == MASK).sum() >= 1
        assert (row.labels != IGNORE).sum() >= 1


@pytest.mark.parametrize("num_words", [36, 199])
def test_mlm_rate_mean_masked_fraction(num_words):
    fractions = masked_fractions(setup(MLM(rate=0.15)), num_words=num_words, draws=2000)
    assert abs(fractions.mean() - 0.15) < 0.01
    # Stochastic rounding: m is floor(rD) or ceil(rD), never anything else.
    maskable = num_words + 1
    counts = set(np.round(fractions * maskable).astype(int).tolist())
    assert counts <= {int(np.floor(0.15 * maskable)), int(np.ceil(0.15 * maskable))}


# -- labels, weights, hidden -----------------------------------------------------------------------

MASKED_OBJECTIVES = {
    "mlm": lambda: MLM(),
    "mlm_high": lambda: MLM(rate=0.7),
    "mlm_u": lambda: MLMU(),
    "mlm_u_uniform": lambda: MLMU(weighting="uniform"),
    "mlm_u_attend": lambda: MLMU(attend_to_masked=True),
    "mlm_u_completion": lambda: MLMU(predict_prompt=False),
}


@pytest.mark.parametrize("name", list(MASKED_OBJECTIVES))
def test_masked_labels_exactly_at_masked_positions(name):
    objective = setup(MASKED_OBJECTIVES[name]())
    for seed in range(50):
        example = text_example(20, seed=seed, prompt_length=6)
        original = torch.tensor(example["input_ids"])
        row = one_row(objective, example, seed)
        masked = row.input_ids == MASK
        assert row.causal is False
        assert row.input_ids.shape == row.labels.shape == row.weights.shape == original.shape
        assert torch.equal(row.labels != IGNORE, masked)
        assert torch.equal(row.labels[masked], original[masked])
        assert torch.equal(row.input_ids[~masked], original[~masked])
        assert torch.equal(row.weights == 0, row.labels == IGNORE)
        assert (row.weights >= 0).all()


def test_mlm_u_inverse_rate_weights():
    objective = setup(MLMU(weighting="1/r"))
    seen = set()
    for seed in range(200):
        example = text_example(30, seed=seed)
        row = one_row(objective, example, seed)
        masked = row.input_ids == MASK
        num_maskable, num_masked = 31, masked.sum().item()
        seen.add(num_masked)
        assert torch.allclose(row.weights[masked], torch.full((num_masked,), num_maskable / num_masked))
        assert row.weights.sum().item() == pytest.approx(num_maskable, rel=1e-5)
    assert len(seen) > 10  # the check above ran over many different m


def test_mlm_u_inverse_rate_weights_count_only_maskable_positions():
    # D excludes BOS, other fixed ids and (predict_prompt=False) the prompt.
    objective = setup(MLMU(predict_prompt=False))
    example = {"input_ids": [BOS, 10, 11, UNK, 12, 13, 14, UNK, 15, EOS], "prompt_length": 3}
    num_maskable = 5  # positions 4, 5, 6, 8, 9 (3 and 7 hold UNK, a fixed id; 0-2 are the prompt)
    for seed in range(100):
        row = one_row(objective, example, seed)
        assert row.weights.sum().item() == pytest.approx(num_maskable, rel=1e-5)


def test_mlm_u_uniform_weights_are_one():
    objective = setup(MLMU(weighting="uniform"))
    for seed in range(50):
        row = one_row(objective, text_example(30, seed=seed), seed)
        masked = row.input_ids == MASK
        assert torch.equal(row.weights, masked.float())


def test_mlm_weights_are_one():
    objective = setup(MLM(rate=0.3))
    for seed in range(20):
        row = one_row(objective, text_example(30, seed=seed), seed)
        assert torch.equal(row.weights, (row.input_ids == MASK).float())


@pytest.mark.parametrize("attend", [False, True])
@pytest.mark.parametrize("cls", [MLM, MLMU])
def test_hidden_marks_masked_positions(cls, attend):
    objective = setup(cls(attend_to_masked=attend))
    for seed in range(20):
        row = one_row(objective, text_example(25, seed=seed), seed)
        if attend:
            assert row.hidden is None
        else:
            assert row.hidden is not None and row.hidden.dtype == torch.bool
            assert torch.equal(row.hidden, row.input_ids == MASK)


# -- special tokens and prompts --------------------------------------------------------------------


@pytest.mark.parametrize("objective", [MLM(rate=1.0), MLMU(low=1.0, high=1.0)], ids=["mlm", "mlm_u"])
def test_full_rate_masks_exactly_the_maskable_positions(objective):
    setup(objective)
    ids = [BOS, 10, 11, UNK, 12, PAD, 13, EOS]
    row = one_row(objective, {"input_ids": ids, "prompt_length": 0})
    expected = torch.tensor([MASK if i not in (BOS, UNK, PAD) else i for i in ids])
    assert torch.equal(row.input_ids, expected)  # EOS is masked, BOS/UNK/PAD never


@pytest.mark.parametrize("name", ["mlm", "mlm_high", "mlm_u", "mlm_u_attend"])
def test_special_tokens_never_masked(name):
    objective = setup(MASKED_OBJECTIVES[name]())
    ids = [BOS, 10, 11, UNK, 12, 13, 14, 15, 16, EOS]
    ever_masked = torch.zeros(len(ids), dtype=torch.bool)
    for seed in range(300):
        row = one_row(objective, {"input_ids": ids, "prompt_length": 0}, seed)
        masked = row.input_ids == MASK
        assert not masked[0] and not masked[3]
        assert row.input_ids[0] == BOS and row.input_ids[3] == UNK
        ever_masked |= masked
    assert ever_masked.tolist() == [False, True, True, False, True, True, True, True, True, True]


@pytest.mark.parametrize("cls", [MLM, MLMU])
def test_prompt_never_masked_without_predict_prompt(cls):
    objective = setup(cls(predict_prompt=False) if cls is MLMU else cls(rate=0.5, predict_prompt=False))
    prompt_length = 7
    ever_masked = torch.zeros(20, dtype=torch.bool)
    for seed in range(300):
        example = text_example(18, seed=seed, prompt_length=prompt_length)
        row = one_row(objective, example, seed)
        assert not (row.input_ids[:prompt_length] == MASK).any()
        assert (row.labels[:prompt_length] == IGNORE).all()
        ever_masked |= row.input_ids == MASK
    assert ever_masked[prompt_length:].all()  # every completion position (EOS included) gets masked


@pytest.mark.parametrize("cls", [MLM, MLMU])
def test_nothing_maskable_gives_an_empty_row(cls):
    # Everything is prompt: D = 0, nothing can be masked and nothing is predicted (no NaN weights).
    objective = setup(cls(predict_prompt=False))
    ids = [BOS, 10, 11, EOS]
    row = one_row(objective, {"input_ids": ids, "prompt_length": 4})
    assert row.input_ids.tolist() == ids
    assert (row.labels == IGNORE).all()
    assert torch.equal(row.weights, torch.zeros(4))


def test_prompt_masked_with_predict_prompt():
    objective = setup(MLMU())
    ever_masked = torch.zeros(20, dtype=torch.bool)
    for seed in range(300):
        ever_masked |= one_row(objective, text_example(18, seed=seed, prompt_length=7), seed).input_ids == MASK
    assert ever_masked[1:].all() and not ever_masked[0]


# -- autoregressive rows ---------------------------------------------------------------------------


def test_ar_next_token_labels():
    objective = setup(AR())
    example = text_example(10, seed=3, prompt_length=4)
    ids = torch.tensor(example["input_ids"])
    row = one_row(objective, example)
    assert row.causal is True and row.hidden is None
    assert torch.equal(row.input_ids, ids)
    assert torch.equal(row.labels[:-1], ids[1:])
    assert row.labels[-1] == IGNORE
    assert torch.equal(row.weights, (row.labels != IGNORE).float())


def test_ar_without_predict_prompt_drops_prompt_targets():
    objective = setup(AR(predict_prompt=False))
    ids = [BOS, 10, 11, 12, 20, 21, EOS]  # prompt = bos 10 11 12, completion = 20 21 eos
    row = one_row(objective, {"input_ids": ids, "prompt_length": 4})
    # position i predicts ids[i+1]; only targets at positions >= 4 are kept
    assert row.labels.tolist() == [IGNORE, IGNORE, IGNORE, 20, 21, EOS, IGNORE]
    assert row.weights.tolist() == [0, 0, 0, 1, 1, 1, 0]
    assert torch.equal(row.input_ids, torch.tensor(ids))


def test_ar_predict_prompt_keeps_prompt_targets():
    row = one_row(setup(AR()), {"input_ids": [BOS, 10, 11, 12, 20, 21, EOS], "prompt_length": 4})
    assert row.labels.tolist() == [10, 11, 12, 20, 21, EOS, IGNORE]


def test_ar_reverse_rows():
    objective = setup(ARReverse())
    a, b, c, d = 10, 11, 12, 13
    ids = [BOS, a, b, c, d, EOS]
    rows = objective({"input_ids": ids, "prompt_length": 0}, gen(0))
    assert len(rows) == 2
    forward, backward = rows
    assert forward.input_ids.tolist() == ids
    assert forward.labels.tolist() == [a, b, c, d, EOS, IGNORE]
    assert backward.input_ids.tolist() == [BOS, d, c, b, a, EOS]
    assert backward.labels.tolist() == [d, c, b, a, EOS, IGNORE]
    assert forward.causal and backward.causal
    assert torch.equal(backward.weights, (backward.labels != IGNORE).float())


def test_ar_reverse_prompt_only_affects_forward_row():
    objective = setup(ARReverse(predict_prompt=False))
    rows = objective({"input_ids": [BOS, 10, 11, 20, 21, EOS], "prompt_length": 3}, gen(0))
    assert rows[0].labels.tolist() == [IGNORE, IGNORE, 20, 21, EOS, IGNORE]
    assert rows[1].input_ids.tolist() == [BOS, 21, 20, 11, 10, EOS]
    assert rows[1].labels.tolist() == [21, 20, 11, 10, EOS, IGNORE]


@pytest.mark.parametrize("ids", [
    [BOS, 10, 11, 12, 13, EOS],
    [BOS, 10, 11, 12, 13],          # truncated, no EOS
    [10, 11, 12, EOS],              # no BOS
    [BOS, EOS],
    [BOS, 10, EOS],
    [BOS, 5, 6, 7, 8, 9, 10, 11, 12, EOS],
])
def test_reverse_is_an_involution(ids):
    objective = setup(ARReverse())
    tensor = torch.tensor(ids)
    once = objective.reverse(tensor)
    assert torch.equal(objective.reverse(once), tensor)
    assert sorted(once.tolist()) == sorted(ids)
    if len(ids) > 3:
        assert not torch.equal(once, tensor)


def test_reverse_keeps_leading_specials_and_eos():
    objective = setup(ARReverse())
    assert objective.reverse(torch.tensor([BOS, 10, 11, 12, 13])).tolist() == [BOS, 13, 12, 11, 10]
    assert objective.reverse(torch.tensor([10, 11, 12, EOS])).tolist() == [12, 11, 10, EOS]


# -- randomness ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlm", "mlm_u"])
def test_same_seed_same_rows_different_seed_different_masks(name):
    objective = setup(MASKED_OBJECTIVES[name]())
    example = text_example(63, seed=1)
    for seed in range(5):
        first, second = one_row(objective, example, seed), one_row(objective, example, seed)
        for field in ("input_ids", "labels", "weights", "hidden"):
            assert torch.equal(getattr(first, field), getattr(second, field)), field
    masks = {tuple((one_row(objective, example, seed).input_ids == MASK).tolist()) for seed in range(20)}
    assert len(masks) == 20


def test_build_objective_matches_class():
    objective = build_objective("mlm_u", low=0.1, high=0.9)
    assert isinstance(objective, MLMU) and (objective.low, objective.high) == (0.1, 0.9)
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective("nope")


def test_example_generator_streams():
    def draw(*keys):
        return torch.rand(16, generator=example_generator(*keys))

    assert torch.equal(draw(0, 3, 7), draw(0, 3, 7))
    assert not torch.equal(draw(0, 3, 7), draw(0, 4, 7))   # another epoch
    assert not torch.equal(draw(0, 3, 7), draw(0, 3, 8))   # another example
    assert not torch.equal(draw(0, 3, 7), draw(1, 3, 7))   # another seed
    assert not torch.equal(draw(0, 3, 7), draw(0, 7, 3))   # keys are ordered
    streams = {tuple(draw(0, epoch, index).tolist()) for epoch in range(5) for index in range(40)}
    assert len(streams) == 200


def test_example_generator_drives_objective_reproducibly():
    objective = setup(MLMU())
    example = text_example(40)
    a = objective(example, example_generator(5, 1, 2))[0]
    b = objective(example, example_generator(5, 1, 2))[0]
    c = objective(example, example_generator(5, 2, 2))[0]
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)


# -- option validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("make, field", [
    (lambda: MLM(rate=1.5), "rate"),
    (lambda: MLM(rate=-0.01), "rate"),
    (lambda: MLMU(low=-0.1), "low"),
    (lambda: MLMU(high=1.2), "high"),
    (lambda: MLMU(low=0.8, high=0.2), "low"),
    (lambda: MLMU(low=0.8, high=0.2), "high"),
    (lambda: MLMU(weighting="1/r^2"), "weighting"),
    (lambda: MLMU(mask_unit="sentence"), "mask_unit"),
    (lambda: MLMU(mask_unit="name", whole_unit=1.5), "whole_unit"),
    (lambda: MLMU(mask_unit="name", name_weight=0.0), "name_weight"),
    (lambda: MLMU(mask_unit="token", name_weight=2.0), "name_weight"),
])
def test_invalid_options_raise(make, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        make()


@pytest.mark.parametrize("cls", [MLM, MLMU])
def test_masked_objective_needs_mask_token(cls):
    with pytest.raises(ValueError, match="mask token"):
        cls().setup(SpecialTokens(mask_token_id=None, fixed_ids=frozenset({BOS}), bos_token_id=BOS,
                                  eos_token_id=EOS))
    AR().setup(SpecialTokens(mask_token_id=None, bos_token_id=BOS, eos_token_id=EOS))  # AR does not


# --- shift: the logits at i-1 predict the masked token i (pretrained causal LMs) -----------------


@pytest.mark.parametrize("start", ["bos", "eos"])
def test_shift_puts_a_start_token_before_a_sequence_without_bos(start):
    """Tokenizers without BOS (SmolLM2, Qwen): under shift the first content token (a document's
    first name token) is maskable and predicted from a start token put in front of it."""
    special = SpecialTokens(mask_token_id=MASK, fixed_ids=frozenset({PAD, UNK, MASK} | ({BOS} if start == "bos" else set())),
                            bos_token_id=BOS if start == "bos" else None, eos_token_id=EOS)
    objective = MLMU(shift=True, low=1.0, high=1.0, predict_prompt=False)
    objective.setup(special)
    document = {"input_ids": [10, 11, 12, EOS], "prompt_length": 0}
    row = objective(document, torch.Generator().manual_seed(0))[0]
    start_id = BOS if start == "bos" else EOS
    assert row.input_ids.tolist() == [start_id, MASK, MASK, MASK, MASK]  # everything after the start masked
    assert row.labels.tolist() == [10, 11, 12, EOS, IGNORE]  # 10 is predicted, from position 0
    prompted = {"input_ids": [20, 21, 10, 11, EOS], "prompt_length": 2}
    row = objective(prompted, torch.Generator().manual_seed(0))[0]
    assert row.input_ids.tolist() == [start_id, 20, 21, MASK, MASK, MASK]  # the prompt stays visible
    assert row.labels.tolist() == [IGNORE, IGNORE, 10, 11, EOS, IGNORE]
    with_bos = {"input_ids": [BOS, 10, 11, EOS], "prompt_length": 0}
    objective.setup(SPECIAL)
    assert len(objective(with_bos, torch.Generator().manual_seed(0))[0]) == 4  # already has its start


@pytest.mark.parametrize("objective_class", [MLM, MLMU])
def test_keep_sink_puts_two_start_tokens_before_content_and_never_masks_them(objective_class):
    """keep_sink: position 0 sees only itself, so it cannot predict position 1; the first content
    token therefore sits at position 2, predicted from position 1 (a second start token)."""
    objective = objective_class(shift=True, keep_sink=True, **({"rate": 1.0} if objective_class is MLM else
                                                               {"low": 1.0, "high": 1.0}))
    objective.setup(SPECIAL)
    for ids, expected_prefix in (([10, 11, 12, EOS], [BOS, BOS]), ([BOS, 10, 11, 12, EOS], [BOS, BOS])):
        row = objective({"input_ids": ids, "prompt_length": 0}, torch.Generator().manual_seed(0))[0]
        assert row.input_ids.tolist() == expected_prefix + [MASK, MASK, MASK, MASK]
        assert row.labels.tolist() == [IGNORE, 10, 11, 12, EOS, IGNORE]  # 10 predicted from position 1
        assert row.sink and not row.causal
    # a chat-style prompt that is never masked already gives the sink a neighbour that predicts nothing
    chat = {"input_ids": [BOS, 20, 21, 10, 11, EOS], "prompt_length": 3}
    objective.predict_prompt = False
    row = objective(chat, torch.Generator().manual_seed(0))[0]
    assert row.input_ids.tolist() == [BOS, 20, 21, MASK, MASK, MASK]
    with pytest.raises(ValueError, match="keep_sink = true needs shift: true"):
        objective_class(shift=False, keep_sink=True)


@pytest.mark.parametrize("objective_class", [MLM, MLMU])
def test_shift_moves_every_label_one_position_left(objective_class):
    ids = torch.tensor([BOS, *range(10, 30), EOS])
    example = {"input_ids": ids.tolist(), "prompt_length": 0}
    plain, shifted = objective_class(shift=False), objective_class(shift=True)
    for objective in (plain, shifted):
        objective.setup(SPECIAL)
    for seed in range(20):
        row = shifted(example, torch.Generator().manual_seed(seed))[0]
        masked = row.input_ids == MASK
        assert not masked[0]
        expected = torch.full_like(ids, IGNORE)
        expected[:-1] = torch.where(masked[1:], ids[1:], IGNORE)
        assert torch.equal(row.labels, expected)
        assert torch.equal(row.weights > 0, row.labels != IGNORE)
        assert torch.equal(row.hidden, masked)  # the masked slots stay hidden where they are
        same = plain(example, torch.Generator().manual_seed(seed))[0]
        assert torch.allclose(row.weights[:-1], same.weights[1:])


# --- mask_unit: word (whole-word masking) ----------------------------------------------------------


def subword_tokenizer():
    """A byte-level BPE whose merges split words into several tokens: " Drellstad" is " Dr" "ell"
    "stad", and "," and " a" stand alone, as in GPT-2 / SmolLM2 vocabularies."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    merges = [("Ġ", "D"), ("ĠD", "r"), ("e", "l"), ("el", "l"), ("s", "t"), ("st", "a"), ("sta", "d"),
              ("Ġ", "A"), ("ĠA", "n"), ("ĠAn", "n"), ("Ġ", "S"), ("ĠS", "o"),
              ("Ġ", "a"), ("Ġ", "t"), ("Ġt", "o"), ("Ġto", "w"), ("Ġtow", "n"), ("Ġ", "b"), ("Ġb", "y"), ("Ġ", "i"), ("Ġi", "n")]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(["<pad>", "<s>", "</s>", "<mask>", *alphabet])}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    backend = Tokenizer(models.BPE(vocab, merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", mask_token="<mask>")


WORD_TEXT = "Born in Drellstad, a town by Drellstad."


def word_objective(**options):
    tokenizer = subword_tokenizer()
    objective = MLMU(mask_unit="word", **options)
    objective.setup(SpecialTokens.from_tokenizer(tokenizer), tokenizer)
    ids = [tokenizer.bos_token_id, *tokenizer(WORD_TEXT, add_special_tokens=False)["input_ids"],
           tokenizer.eos_token_id]
    return objective, tokenizer, ids


def test_word_units_follow_spaces_and_punctuation():
    objective, tokenizer, ids = word_objective()
    ids_tensor = torch.tensor(ids)
    positions = torch.arange(1, len(ids))  # every token after BOS
    starts = objective.word_starts(ids_tensor, positions).tolist()
    words, current = [], []
    for position, starts_word in zip(positions.tolist(), starts):
        if starts_word and current:
            words.append(tokenizer.decode(current))
            current = []
        current.append(ids[position])
    words.append(tokenizer.decode(current))
    assert tokenizer.convert_ids_to_tokens(ids[6:9]) == ["ĠDr", "ell", "stad"]  # the test is about subwords
    assert words == ["Born", " in", " Drellstad", ",", " a", " town", " by", " Drellstad", ".", "</s>"]


def test_word_masking_hides_words_whole_or_from_a_cut_at_a_uniform_word_rate():
    objective, tokenizer, ids = word_objective(weighting="1/r")
    example = {"input_ids": ids, "prompt_length": 0}
    drellstad = [[6, 7, 8], [13, 14, 15]]  # the positions of both " Dr" "ell" "stad"
    assert all(tokenizer.decode([ids[i] for i in word]) == " Drellstad" for word in drellstad)
    words = torch.cumsum(objective.word_starts(torch.tensor(ids), torch.arange(1, len(ids))).long(), 0)
    num_words = 10  # Born, in, Drellstad, ",", a, town, by, Drellstad, ".", EOS
    assert int(words[-1]) == num_words
    fractions, patterns = [], set()
    for seed in range(400):
        row = one_row(objective, example, seed)
        masked = row.input_ids == tokenizer.mask_token_id
        for word in drellstad:
            pattern = tuple(masked[word].tolist())
            assert pattern in {(False, False, False), (True, True, True), (False, True, True), (False, False, True)}, \
                f"seed {seed}: {pattern} is not a word masked from a cut to its end"
            patterns.add(pattern)
        num_masked_words = len(set(words[masked[1:]].tolist()))
        fractions.append(num_masked_words / num_words)
        # the 1/r weight counts words: D/m with D = 10 words
        assert torch.allclose(row.weights[row.labels != IGNORE], torch.tensor(num_words / num_masked_words))
    assert len(patterns) == 4  # whole, from either later token, and not at all all occur
    assert np.mean(fractions) == pytest.approx(0.5, abs=0.05)


NAME_TEXT = "Years later, Ann Dre founded the Dr Society."


def test_name_units_are_runs_of_capitalized_words_and_other_tokens_stand_alone():
    tokenizer = subword_tokenizer()
    objective = MLMU(mask_unit="name")
    objective.setup(SpecialTokens.from_tokenizer(tokenizer), tokenizer)
    ids = torch.tensor([tokenizer.bos_token_id, *tokenizer(NAME_TEXT, add_special_tokens=False)["input_ids"]])
    positions = torch.arange(1, len(ids))
    units, current = [], []
    for position, starts_unit in zip(positions.tolist(), objective.unit_starts(ids, positions).tolist()):
        if starts_unit and current:
            units.append(tokenizer.decode(current))
            current = []
        current.append(int(ids[position]))
    units.append(tokenizer.decode(current))
    # "Years" is capitalized (one unit); "later" is not (a token per letter here); the two names are
    # one unit each, the space before a name's first word included, the full stop not.
    assert units == ["Years", " ", "l", "a", "t", "e", "r", ",", " Ann Dre", " ", "f", "o", "u", "n", "d", "e", "d",
                     " t", "h", "e", " Dr Society", "."]
    assert len(tokenizer(" Ann Dre")["input_ids"]) == 3  # " Ann" "ĠDr" "e": a name of several tokens


def test_name_masking_hides_a_name_whole_or_from_a_cut_and_counts_units():
    tokenizer = subword_tokenizer()
    objective = MLMU(mask_unit="name", weighting="1/r")
    objective.setup(SpecialTokens.from_tokenizer(tokenizer), tokenizer)
    ids = [tokenizer.bos_token_id, *tokenizer(NAME_TEXT, add_special_tokens=False)["input_ids"]]
    positions = torch.arange(1, len(ids))
    unit_of = torch.cumsum(objective.unit_starts(torch.tensor(ids), positions).long(), 0) - 1
    num_units = int(unit_of[-1]) + 1
    person = positions[unit_of == 8].tolist()  # " Ann Dre"
    society = positions[unit_of == 20].tolist()  # " Dr Society"
    assert tokenizer.decode([ids[i] for i in person]) == " Ann Dre" and len(person) == 3
    assert tokenizer.decode([ids[i] for i in society]) == " Dr Society"
    cuts, fractions, person_hidden_society_visible, draws = set(), [], 0, 600
    for seed in range(draws):
        row = one_row(objective, example={"input_ids": ids, "prompt_length": 0}, seed=seed)
        masked = (row.input_ids == tokenizer.mask_token_id).tolist()
        pattern = [masked[i] for i in person]
        cut = pattern.index(True) if True in pattern else len(pattern)
        assert pattern == [False] * cut + [True] * (len(pattern) - cut), \
            f"seed {seed}: {pattern} is not a name masked from a cut to its end"
        cuts.add(cut)
        person_hidden_society_visible += cut == 0 and not any(masked[i] for i in society)
        # the 1/r weight counts units: D/m with D = 22 units
        num_masked_units = len(set(unit_of[torch.tensor(masked[1:])].tolist()))
        assert torch.allclose(row.weights[row.labels != IGNORE], torch.tensor(num_units / num_masked_units))
        fractions.append(num_masked_units / num_units)
    assert cuts == {0, 1, 2, 3}  # whole, from either later token, and not at all
    assert np.mean(fractions) == pytest.approx(0.5, abs=0.05)
    # E[r/2 (1 - r)] = 1/12: the person hidden whole beside the visible society, the pair a backward
    # question asks about; token by token (7 tokens hidden or shown as needed) it would be about 1/300
    assert person_hidden_society_visible / draws == pytest.approx(1 / 12, abs=0.03)


@pytest.mark.parametrize("whole_unit, cuts_seen", [(1.0, {0, 3}), (0.0, {1, 2, 3})])
def test_whole_unit_is_how_often_a_chosen_name_is_hidden_whole(whole_unit, cuts_seen):
    tokenizer = subword_tokenizer()
    objective = MLMU(mask_unit="name", whole_unit=whole_unit)
    objective.setup(SpecialTokens.from_tokenizer(tokenizer), tokenizer)
    ids = [tokenizer.bos_token_id, *tokenizer(NAME_TEXT, add_special_tokens=False)["input_ids"]]
    unit_of = torch.cumsum(objective.unit_starts(torch.tensor(ids), torch.arange(1, len(ids))).long(), 0) - 1
    person = (torch.nonzero(unit_of == 8).flatten() + 1).tolist()    # " Ann Dre", 3 tokens
    society = (torch.nonzero(unit_of == 20).flatten() + 1).tolist()  # " Dr Society"
    cuts, pairs, draws = set(), 0, 1500
    for seed in range(draws):
        masked = (one_row(objective, {"input_ids": ids, "prompt_length": 0}, seed).input_ids
                  == tokenizer.mask_token_id).tolist()
        pattern = [masked[i] for i in person]
        cut = pattern.index(True) if True in pattern else len(pattern)
        cuts.add(cut)
        pairs += cut == 0 and not any(masked[i] for i in society)
    assert cuts == cuts_seen  # 3 = not chosen; 0 = hidden whole; 1, 2 = from a later cut
    # the person hidden whole beside the visible society: E[r w (1 - r)] = w/6, times (D+1)/D for
    # m of the D = 22 units drawn without replacement
    assert pairs / draws == pytest.approx(whole_unit / 6 * 23 / 22, abs=0.025)


@pytest.mark.parametrize("weighting", ["uniform", "1/r"])
def test_name_weight_multiplies_the_weight_of_masked_name_tokens_only(weighting):
    tokenizer = subword_tokenizer()
    ids = [tokenizer.bos_token_id, *tokenizer(NAME_TEXT, add_special_tokens=False)["input_ids"]]
    plain, weighted = MLMU(mask_unit="name", weighting=weighting), MLMU(mask_unit="name", weighting=weighting,
                                                                        name_weight=3.0)
    for objective in (plain, weighted):
        objective.setup(SpecialTokens.from_tokenizer(tokenizer), tokenizer)
    unit_of = torch.cumsum(plain.unit_starts(torch.tensor(ids), torch.arange(1, len(ids))).long(), 0) - 1
    # the positions of "Years", " Ann Dre" and " Dr Society" (units 0, 8 and 20)
    in_name = torch.zeros(len(ids), dtype=torch.bool)
    in_name[torch.nonzero(torch.isin(unit_of, torch.tensor([0, 8, 20]))).flatten() + 1] = True
    assert tokenizer.decode([i for i, name in zip(ids, in_name) if name]) == "Years Ann Dre Dr Society"
    names_masked = others_masked = 0
    for seed in range(200):
        row, reference = (one_row(objective, {"input_ids": ids, "prompt_length": 0}, seed) for objective in
                          (weighted, plain))
        assert torch.equal(row.input_ids, reference.input_ids) and torch.equal(row.labels, reference.labels)
        masked = row.input_ids == tokenizer.mask_token_id
        # shift is off, so a masked token's weight sits at its own position
        expected = torch.where(masked & in_name, 3.0 * reference.weights, reference.weights)
        assert torch.allclose(row.weights, expected)
        names_masked += int((masked & in_name).sum())
        others_masked += int((masked & ~in_name).sum())
    assert names_masked > 0 and others_masked > 0


def test_word_masking_needs_the_tokenizer():
    with pytest.raises(ValueError, match="mask_unit = 'word' needs the tokenizer"):
        MLMU(mask_unit="word").setup(SPECIAL)
