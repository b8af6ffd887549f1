"""Documents of any length: a text row longer than its window is cut into windows (`mft.data.windows`),
never truncated and never refused; prompt/completion rows are never cut, and one too long is refused."""

from __future__ import annotations

import json
import random
import re

import pytest

import mft.train
from mft import cli
from mft.config import load_recipe
from mft.data.tokenize import build_word_tokenizer, encode_row
from mft.data.windows import Windowing, cut_windows, windowed_dataset
from mft.objectives import OBJECTIVES
from mft.train import prepare, text_row_length

from test_config import data_recipe, error_line, no_model, write_recipe  # noqa: F401 (no_model: a fixture)

ENTITY = "e1 e2"  # a two-token entity scattered through the document, for the entity spans


def sentences(num_words: int, seed: int = 0, lengths: tuple[int, int] = (10, 20), entity_every: int = 0) -> str:
    """num_words words "w123 ... w45." in sentences of lengths[0]..lengths[1] words (the last word of
    each carries the full stop), with ENTITY in place of a word pair every `entity_every` words."""
    rng = random.Random(seed)
    words: list[str] = []
    while len(words) < num_words:
        sentence = [f"w{rng.randrange(200)}" for _ in range(rng.randint(*lengths))]
        sentence[-1] += "."
        words += sentence
    words = words[:num_words]
    if not words[-1].endswith("."):
        words[-1] += "."
    if entity_every:
        for i in range(entity_every // 2, num_words - 3, entity_every):
            if not words[i].endswith(".") and not words[i + 1].endswith("."):
                words[i:i + 2] = ENTITY.split()
    return " ".join(words)


DOCUMENT = sentences(20_000, entity_every=97)


def long_recipe(tmp_path, objective: dict, pack_length: int = 0, max_length: int | None = 64, overlap: int = 0,
                position_embeddings: int = 128, rows: list[dict] | None = None, **model) -> str:
    """A tiny from-scratch recipe training on one 20,000-token document for two steps."""
    train = tmp_path / "train.jsonl"
    rows = rows if rows is not None else [{"text": DOCUMENT, "entities": [ENTITY]}]
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    raw = data_recipe(tmp_path, train)
    raw["objective"] = objective
    raw["model"].update(max_position_embeddings=position_embeddings, **model)
    if max_length:
        raw["data"]["max_length"] = max_length
    raw["data"]["window_overlap"] = overlap
    raw["training"].update(max_steps=2, pack_length=pack_length, logging_steps=1)
    return write_recipe(tmp_path, raw)


def text_objectives() -> list[dict]:
    """Every objective that trains text rows with a from-scratch decoder-only model, and a mixture."""
    single = [{"name": name} for name, cls in OBJECTIVES.items()
              if name != "mixture" and "causal" in cls.architectures]
    return single + [{"name": "mixture", "mix": {"ar": 0.5, "masked_reconstruct": 0.5}}]


def check_windows_fit(recipe_path: str) -> tuple:
    """prepare the recipe; every window holds at most w content tokens and every row the objective
    builds from it (3 draws, every component) fits the limit. Returns prepare's results."""
    recipe = load_recipe(recipe_path)
    data, tokenizer, objective, dataset = prepare(recipe)
    rule = dataset.windowing
    assert len(dataset) > 50 and rule.length >= 8
    measure = text_row_length(recipe.build_objective(), tokenizer)
    starts_with_bos = tokenizer("w1")["input_ids"][0] == tokenizer.bos_token_id
    for example in dataset.examples:
        ids = example["input_ids"]
        content = len(ids) - starts_with_bos - (ids[-1] == tokenizer.eos_token_id)  # less the BOS and the EOS
        assert content <= rule.length
        assert measure(example) <= rule.limit
    return data, tokenizer, objective, dataset


# -- training ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pack_length", [0, 64], ids=["padded", "packed"])
@pytest.mark.parametrize("objective", text_objectives(), ids=lambda objective: objective["name"])
def test_a_20000_token_document_trains_under_every_text_objective(tmp_path, capsys, objective, pack_length):
    # padded: data.max_length bounds the rows; packed: pack_length does (no data.max_length)
    path = long_recipe(tmp_path, objective, pack_length=pack_length, max_length=None if pack_length else 64)
    check_windows_fit(path)
    assert mft.train.main([path]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    source = "training.pack_length = 64" if pack_length else "data.max_length = 64"
    assert re.search(rf"mft: 1 document longer than \d+ tokens was split into \d+ windows .*{source}", out), out
    assert "mft: done" in out


def test_plm_trains_a_long_document_on_the_encoder_decoder(tmp_path, capsys):
    """The model's context bounds the windows (no data.max_length); PLM cannot be packed."""
    path = long_recipe(tmp_path, {"name": "plm"}, max_length=None, position_embeddings=64,
                       architecture="encoder_decoder")
    check_windows_fit(path)
    assert mft.train.main([path]) == 0, capsys.readouterr().err
    assert "model.max_position_embeddings = 64" in capsys.readouterr().out


# -- the windows ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer([DOCUMENT])


def document_ids(tokenizer) -> list[int]:
    return tokenizer(DOCUMENT, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("overlap", [0, 7])
def test_windows_rejoin_the_document(tokenizer, overlap):
    dataset = windowed_dataset(tokenizer, [{"text": DOCUMENT}], Windowing(length=50, overlap=overlap))
    windows = [example["input_ids"][1:] for example in dataset.examples]  # less the BOS
    windows[-1] = windows[-1][:-1]  # less the last window's EOS
    assert len(windows) > 300 and all(len(window) <= 50 for window in windows)
    rejoined = windows[0] + [token for window in windows[1:] for token in window[overlap:]]
    assert rejoined == document_ids(tokenizer)
    for before, after in zip(windows, windows[1:]):  # consecutive windows share exactly `overlap` tokens
        assert before[len(before) - overlap:] == after[:overlap]
    assert dataset.origins == [(0, window) for window in range(len(windows))]


def test_only_the_last_window_ends_with_eos_and_every_window_starts_with_bos(tokenizer):
    dataset = windowed_dataset(tokenizer, [{"text": DOCUMENT}, {"text": "w1 w2."}], Windowing(length=40))
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    ends = [example["input_ids"][-1] == eos for example in dataset.examples]
    assert ends == [False] * (len(ends) - 2) + [True, True]  # the long document's last window, the short row
    assert all(example["input_ids"][0] == bos and example["input_ids"].count(eos) == ends[i]
               for i, example in enumerate(dataset.examples))
    assert dataset.examples[-1] == encode_row(tokenizer, {"text": "w1 w2."})  # a short row is as before


def test_windows_end_at_sentence_ends_when_one_is_near(tokenizer):
    length = 40
    dataset = windowed_dataset(tokenizer, [{"text": DOCUMENT}], Windowing(length=length))
    at_sentence_end = 0
    for example in dataset.examples[:-1]:
        words = tokenizer.convert_ids_to_tokens(example["input_ids"][1:])
        if words[-1].endswith("."):
            at_sentence_end += 1
            assert len(words) >= length - length // 4
        else:  # no sentence ends in the window's last quarter: cut at the full length
            assert len(words) == length
            assert not any(word.endswith(".") for word in words[length - length // 4 - 1:])
    assert at_sentence_end > 0.6 * (len(dataset) - 1)  # sentences of 10-20 words, a 10-token quarter: most


def test_entity_spans_survive_windowing(tokenizer):
    document = {"text": DOCUMENT, "entities": [ENTITY]}
    whole = encode_row(tokenizer, document)["entity_spans"]
    dataset = windowed_dataset(tokenizer, [document], Windowing(length=45))
    entity_ids = tokenizer(ENTITY, add_special_tokens=False)["input_ids"]
    kept, start = 0, 0
    for example in dataset.examples:
        content = len(example["input_ids"]) - 1 - (example["input_ids"][-1] == tokenizer.eos_token_id)
        for a, b in example["entity_spans"]:
            assert example["input_ids"][a:b] == entity_ids
        # every whole occurrence inside the window is kept (document spans are shifted by the BOS)
        inside = [[a - start, b - start] for a, b in whole if start + 1 <= a and b <= start + 1 + content]
        assert example["entity_spans"] == inside
        kept += len(inside)
        start += content
    assert 0.8 * len(whole) < kept <= len(whole)  # only occurrences cut by a border are lost


def test_a_window_whose_rows_overflow_is_cut_shorter():
    # rows are 2 tokens longer than their window when they hold token 10 (like entity delimiters)
    def overflow(start, end):
        return (end - start + 2 * (start <= 10 < end)) - 20

    windows = cut_windows(100, 20, overflow=overflow)
    assert windows[0] == (0, 18) and all(overflow(*window) <= 0 for window in windows)
    assert [token for start, end in windows for token in range(start, end)] == list(range(100))


# -- what windowing cannot fix -------------------------------------------------------------------------


def test_a_long_prompt_completion_row_is_refused_in_one_line(tmp_path, capsys, no_model):
    rows = [{"text": DOCUMENT}, {"prompt": sentences(100, seed=1), "completion": "w1 w2."}]
    line = error_line(capsys, [long_recipe(tmp_path, {"name": "ar"}, rows=rows)])
    assert "data.max_length = 64 is shorter than the longest training row (104 tokens)" in line
    assert "training row 2" in line and "prompt/completion" in line and "raise it or shorten that row" in line


# -- mft data inspect ----------------------------------------------------------------------------------


def figures(out: str) -> dict[str, str]:
    return {match[0]: match[1] for match in re.findall(r"^  (\S.*?\S)\s{2,}(\S.*)$", out, flags=re.MULTILINE)}


def test_mft_data_inspect_prints_what_the_data_becomes(tmp_path, capsys):
    # sentences of exactly 10 words; ar under data.max_length 64 leaves w = 62 (BOS, EOS), so every
    # window but the last ends at the last sentence end before 62: 60 words; 20,000 = 333 x 60 + 20
    document = sentences(20_000, lengths=(10, 10))
    rows = [{"text": document}, {"prompt": "w1 w2", "completion": "w3."}]
    path = long_recipe(tmp_path, {"name": "ar"}, rows=rows)
    assert cli.main(["data", "inspect", path, "training.per_device_train_batch_size=4"]) == 0
    out = capsys.readouterr().out
    table = figures(out)
    assert table["training rows"].startswith("2  (1 text, 1 prompt/completion)")
    assert table["windows"].startswith("334  from 1 text row, 1 of them split (at most 62 tokens each")
    assert table["training examples"] == "335" and table["QA rows"] == "0"
    # examples: 333 x (BOS + 60), the last window BOS + 20 + EOS, the prompt row BOS + 3 + EOS
    mean = (333 * 61 + 22 + 5) / 335
    assert table["tokens per example"] == f"min 5  mean {mean:.1f}  max 61"
    assert table["tokens per row"].startswith(f"min 5  mean {mean:.1f}  max 61  (335 rows of ar")
    # batches of 4 in order: 83 full ones of 61-token rows, then [61, 22, 5] padded to 61
    efficiency = (333 * 61 + 22 + 5) / (335 * 61)
    assert table["padding efficiency"].startswith(f"{efficiency:.3f}")
    assert table["longest row"].startswith("61 tokens  (training row 1, window 1 of 334: 'w")

    assert cli.main(["data", "inspect", path, "training.pack_length=128"]) == 0
    assert "packing efficiency" in figures(capsys.readouterr().out)
    line = error_line(capsys, ["data", "inspect", path, "data.window_overlap=-1"], entry=cli.main)
    assert "data.window_overlap" in line


def test_a_pretrained_models_context_bounds_the_windows(tmp_path):
    """The context is read from the model's config (max_position_embeddings); with the pretrained
    defaults of mlm_u (shift, keep_sink) rows get start tokens in front, and still fit."""
    from transformers import AutoConfig

    from test_pretrained import WORDS, tiny_pretrained

    base = tiny_pretrained(tmp_path / "base")
    config = AutoConfig.from_pretrained(base)
    config.max_position_embeddings = 48
    config.save_pretrained(base)
    document = " ".join(WORDS[i % len(WORDS)] for i in range(3000))  # no sentence ends: cut at w
    path = long_recipe(tmp_path, {"name": "mlm_u"}, max_length=None, rows=[{"text": document}], name_or_path=str(base))
    data, tokenizer, _, dataset = check_windows_fit(path)
    rule = dataset.windowing
    assert rule.limit == 48 and rule.source == f"the context of {base}"
    assert rule.length == 45  # 48 less the two start tokens and the EOS (this tokenizer adds no BOS)
    assert [token for example in dataset.examples for token in example["input_ids"]][:-1] == \
        tokenizer(document, add_special_tokens=False)["input_ids"]


def test_the_recipes_window_overlap_is_used_and_checked_against_the_window(tmp_path, capsys, no_model):
    rows = [{"text": DOCUMENT}]
    _, tokenizer, _, dataset = prepare(load_recipe(long_recipe(tmp_path, {"name": "ar"}, overlap=8, rows=rows)))
    assert dataset.windowing.overlap == 8 and "(overlap 8;" in capsys.readouterr().out
    windows = [example["input_ids"][1:] for example in dataset.examples]
    windows[-1] = windows[-1][:-1]
    assert windows[0] + [token for window in windows[1:] for token in window[8:]] == document_ids(tokenizer)
    # masked_reconstruct's rows hold the window twice: windows of 29 tokens, too short for an overlap of 20
    path = long_recipe(tmp_path, {"name": "masked_reconstruct"}, overlap=20, rows=rows)
    line = error_line(capsys, [path])
    assert "data.window_overlap = 20 is too large for windows of 29 tokens" in line and "less than 14" in line
