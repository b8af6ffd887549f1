"""Masked fine-tuning objectives (Pan et al.): masked_reconstruct and masked_sft."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mft.train
from mft.config import load_recipe
from mft.data import build_word_tokenizer
from mft.objectives import IGNORE, MaskedReconstruct, MaskedSFT, SpecialTokens

WORDS = "a b c d e f g h i j k l m n o p q r s t"
TOKENIZER = build_word_tokenizer([WORDS, "Recover the masked passage.", "Recover the masked answer.",
                                  "<|user|> <|assistant|> <|end|>"])


def encode(text: str) -> list[int]:
    return TOKENIZER(text, add_special_tokens=False)["input_ids"]


def example(text: str, prompt: str | None = None) -> dict:
    if prompt is None:
        return {"input_ids": [TOKENIZER.bos_token_id] + encode(text) + [TOKENIZER.eos_token_id], "prompt_length": 0}
    ids = [TOKENIZER.bos_token_id] + encode(prompt) + encode(text) + [TOKENIZER.eos_token_id]
    return {"input_ids": ids, "prompt_length": 1 + len(encode(prompt))}


def ready(objective, tokenizer=TOKENIZER):
    objective.setup(SpecialTokens.from_tokenizer(tokenizer), tokenizer)
    return objective


def test_masked_reconstruct_layout_and_labels():
    objective = ready(MaskedReconstruct())
    content = torch.tensor(encode(WORDS))
    prefix, middle = [TOKENIZER.bos_token_id], encode("Recover the masked passage.")
    for seed in range(30):
        row = objective(example(WORDS), torch.Generator().manual_seed(seed))[0]
        n = len(content)
        head = len(prefix) + n + len(middle)
        assert row.causal and row.hidden is None
        assert row.input_ids[: len(prefix)].tolist() == prefix
        copy = row.input_ids[len(prefix): len(prefix) + n]
        masked = copy == TOKENIZER.mask_token_id
        assert masked.any()
        assert torch.equal(copy[~masked], content[~masked])  # the copy is the document, some tokens masked
        assert row.input_ids[len(prefix) + n: head].tolist() == middle
        assert torch.equal(row.input_ids[head: head + n], content)  # then the whole original document
        assert row.input_ids[-1] == TOKENIZER.eos_token_id
        # position i predicts token i+1 for every target token (document + EOS) and nothing else
        expected = torch.full_like(row.input_ids, IGNORE)
        expected[head - 1: -1] = row.input_ids[head:]
        assert torch.equal(row.labels, expected)
        assert torch.equal(row.weights, (expected != IGNORE).float())


def test_masked_reconstruct_ratio_is_uniform_between_low_and_high():
    objective = ready(MaskedReconstruct(low=0.05, high=0.95))
    text = " ".join(["a", "b", "c", "d"] * 25)  # 100 tokens
    n = 100
    fractions = []
    for seed in range(2000):
        row = objective(example(text), torch.Generator().manual_seed(seed))[0]
        fractions.append((row.input_ids[1: 1 + n] == TOKENIZER.mask_token_id).float().mean().item())
    fractions = torch.tensor(fractions)
    assert abs(fractions.mean().item() - 0.5) < 0.02
    assert fractions.min() >= 0.04 and fractions.max() <= 0.96
    assert abs(fractions.var().item() - 0.9 ** 2 / 12) < 0.01  # U(0.05, 0.95)


def test_masks_are_redrawn_for_every_draw():
    objective = ready(MaskedReconstruct())
    rows = [objective(example(WORDS), torch.Generator().manual_seed(seed))[0].input_ids for seed in range(5)]
    assert len({tuple(r.tolist()) for r in rows}) == 5
    again = objective(example(WORDS), torch.Generator().manual_seed(3))[0].input_ids
    assert torch.equal(again, rows[3])


def test_masked_sft_masks_only_the_answer_and_predicts_only_its_masked_tokens():
    objective = ready(MaskedSFT())
    prompt, answer = "a b c d", "e f g h i j"
    p, a = torch.tensor(encode(prompt)), torch.tensor(encode(answer))
    middle = encode("Recover the masked answer.")
    for seed in range(30):
        row = objective(example(answer, prompt), torch.Generator().manual_seed(seed))[0]
        ids = row.input_ids
        assert torch.equal(ids[1: 1 + len(p)], p)  # prompt shown intact
        copy = ids[1 + len(p): 1 + len(p) + len(a)]
        masked = copy == TOKENIZER.mask_token_id
        assert masked.any() and torch.equal(copy[~masked], a[~masked])
        head = 1 + len(p) + len(a) + len(middle)
        assert torch.equal(ids[head: head + len(a)], a) and ids[-1] == TOKENIZER.eos_token_id  # target = answer
        predicted = torch.cat([masked, torch.tensor([True])])  # masked answer tokens + EOS
        expected = torch.full_like(ids, IGNORE)
        expected[head - 1: -1] = torch.where(predicted, ids[head:], IGNORE)
        assert torch.equal(row.labels, expected)


def test_chat_template_wraps_the_masked_document():
    tokenizer = build_word_tokenizer([WORDS, "Recover the masked passage.", "<|user|> <|assistant|> <|end|>"])
    tokenizer.chat_template = ("{% for m in messages %}<|user|> {{ m['content'] }} <|end|> {% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    objective = ready(MaskedReconstruct(), tokenizer)
    assert objective.prefix == tokenizer("<|user|>", add_special_tokens=False)["input_ids"]
    assert objective.middle == tokenizer("Recover the masked passage. <|end|> <|assistant|>",
                                         add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kwargs", [{"low": -0.1}, {"high": 1.5}, {"low": 0.9, "high": 0.1}])
def test_bad_ratios_are_refused(kwargs):
    with pytest.raises(ValueError, match="objective"):
        MaskedReconstruct(**kwargs)


def test_masked_reconstruct_trains_from_a_recipe(tmp_path):
    out = tmp_path / "run"
    code = mft.train.main([
        str(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"), "objective.name=masked_reconstruct", "task.num_pairs=8", "model.hidden_size=16",
        "model.num_hidden_layers=1", "model.intermediate_size=32", "model.max_position_embeddings=64",
        "training.max_steps=2", "training.eval_steps=2", f"training.output_dir={out}", "training.report_to=none",
        "training.save_strategy=no", "training.disable_tqdm=true"])
    assert code == 0
    assert load_recipe(out / "resolved_recipe.yaml").objective_name == "masked_reconstruct"
    assert (out / "eval_results.json").exists()


def test_the_length_check_counts_the_masked_copy(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mft.train, "load_model", lambda *a, **k: pytest.fail("a model was built"))
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml")
    # retrieval examples are at most 8 tokens and fit in 16 positions; their reconstruction rows are
    # bos + 6 masked copy + 4 instruction words + 6 target + eos = 18 tokens
    code = mft.train.main([recipe, "objective.name=masked_reconstruct", "model.max_position_embeddings=16",
                           f"training.output_dir={tmp_path}"])
    error = capsys.readouterr().err
    assert code == 2 and "model.max_position_embeddings = 16" in error and "(18 tokens)" in error
