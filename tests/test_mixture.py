"""Objective mixtures: per-example and per-batch draws, and per-objective loss logs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mft.train
from mft import MFTCollator
from mft.config import RecipeError, parse_recipe
from mft.data import build_word_tokenizer
from mft.objectives import Mixture

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = build_word_tokenizer(["a b c d e f g h"])


def examples(count: int, epoch: int = 0) -> list[dict]:
    ids = [TOKENIZER.bos_token_id] + TOKENIZER("a b c d e f g h", add_special_tokens=False)["input_ids"]
    return [{"input_ids": ids + [TOKENIZER.eos_token_id], "prompt_length": 0, "example_index": i, "epoch": epoch}
            for i in range(count)]


def test_per_example_draws_follow_the_weights():
    collator = MFTCollator(Mixture(mix={"ar": 0.25, "mlm_u": 0.75}), TOKENIZER, seed=0)
    batch = collator(examples(4000))
    sources = batch["source_ids"][:, 0]  # per token; every token of a row has its row's component
    assert (batch["source_ids"] == sources[:, None]).all()
    assert abs((sources == 1).float().mean().item() - 0.75) < 0.03
    # each row is what its component makes: causal AR rows, bidirectional MLM-U rows with masks
    mask = batch["attention_mask"]
    assert mask.dim() == 4
    for row in range(50):
        upper = torch.triu(torch.ones(mask.shape[-1], mask.shape[-1], dtype=torch.bool), 1)
        if sources[row] == 0:
            assert not (mask[row, 0] & upper).any()
            assert not (batch["input_ids"][row] == TOKENIZER.mask_token_id).any()
        else:
            assert (batch["input_ids"][row] == TOKENIZER.mask_token_id).any()


def test_per_batch_draws_one_component_per_batch():
    collator = MFTCollator(Mixture(mix={"ar": 0.5, "mlm_u": 0.5}, per="batch"), TOKENIZER, seed=0)
    chosen = []
    for epoch in range(200):
        sources = collator(examples(8, epoch))["source_ids"][:, 0]
        assert (sources == sources[0]).all()
        chosen.append(sources[0].item())
    assert 0.35 < sum(chosen) / len(chosen) < 0.65
    again = MFTCollator(Mixture(mix={"ar": 0.5, "mlm_u": 0.5}, per="batch"), TOKENIZER, seed=0)
    assert [again(examples(8, epoch))["source_ids"][0, 0].item() for epoch in range(200)] == chosen


def test_component_options_reach_the_components():
    mixture = Mixture(mix={"mlm": 1.0, "ar": 1.0}, options={"mlm": {"rate": 0.4}})
    assert mixture.components[0].rate == 0.4


@pytest.mark.parametrize("mix, options, match", [
    ({}, {}, "empty"),
    ({"ar": 0.5, "mlmu": 0.5}, {}, "unknown objective 'mlmu'"),
    ({"ar": -1.0}, {}, "weights are numbers >= 0"),
    ({"ar": 0.0}, {}, "sum to 0"),
    ({"ar": 1.0}, {"mlm_u": {}}, "not in objective.mix"),
])
def test_bad_mixtures_are_refused(mix, options, match):
    with pytest.raises(ValueError, match=match):
        Mixture(mix=mix, options=options)
    raw = {"task": {"name": "retrieval"}, "objective": {"name": "mixture", "mix": mix, "options": options}}
    with pytest.raises(RecipeError):
        parse_recipe(raw)


def mixture_trainer(tmp_path, mix):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mft import MFTConfig, MFTTrainer
    from mft.data import RetrievalTask, TokenizedDataset, row_texts

    data = RetrievalTask(num_pairs=8, seed=0).build()
    tokenizer = build_word_tokenizer([t for row in data.train for t in row_texts(row)])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=32,
                                         pad_token_id=tokenizer.pad_token_id))
    args = MFTConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, logging_steps=1,
                     save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True)
    return MFTTrainer(model=model, args=args, train_dataset=TokenizedDataset.from_rows(tokenizer, data.train),
                      data_collator=MFTCollator(Mixture(mix=mix), tokenizer, seed=0), processing_class=tokenizer)


def test_trainer_logs_each_components_loss(tmp_path):
    trainer = mixture_trainer(tmp_path / "both", {"ar": 0.5, "mlm_u": 0.5})
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry and "train_runtime" not in entry]
    assert len(logs) == 3
    for entry in logs:
        # the step loss is the weight-averaged mean of the two components' losses
        low, high = sorted((entry["loss_ar"], entry["loss_mlm_u"]))
        assert low - 1e-4 <= entry["loss"] <= high + 1e-4 and low < high

    only_ar = mixture_trainer(tmp_path / "ar", {"ar": 1.0, "mlm_u": 0.0})
    only_ar.train()
    logs = [entry for entry in only_ar.state.log_history if "loss" in entry and "train_runtime" not in entry]
    assert all(abs(entry["loss_ar"] - entry["loss"]) < 1e-4 and "loss_mlm_u" not in entry for entry in logs)


def test_mixture_recipe_trains_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    code = mft.train.main([
        str(ROOT / "recipes" / "quickstart.yaml"), "objective.name=mixture", "objective.mix={ar: 0.5, mlm_u: 0.5}",
        "task.num_pairs=8", "model.hidden_size=16", "model.num_hidden_layers=1", "model.intermediate_size=32",
        "training.max_steps=2", "training.eval_steps=2", f"training.output_dir={out}",
        "training.report_to=none", "training.save_strategy=no", "training.disable_tqdm=true"])
    assert code == 0
    assert "| objective | mixture |" in (out / "report.md").read_text()


def test_route_sends_each_row_kind_to_its_objective():
    collator = MFTCollator(Mixture(route={"text": "mlm_u", "prompt": "ar"}, options={"ar": {"predict_prompt": False}}),
                           TOKENIZER, seed=0)
    text = examples(3)
    prompted = [{**example, "prompt_length": 4, "example_index": 10 + i} for i, example in enumerate(examples(3))]
    batch = collator(text + prompted)
    assert batch["source_ids"][:, 0].tolist() == [0, 0, 0, 1, 1, 1]
    for row in range(3, 6):  # completion-only AR: nothing inside the prompt is a target
        targets = (batch["labels"][row] != -100).nonzero().flatten()
        assert targets.min() >= 3
    with pytest.raises(ValueError, match="route"):
        Mixture(route={"text": "ar"})
    with pytest.raises(ValueError, match="exclude"):
        Mixture(route={"text": "ar", "prompt": "ar"}, mix={"ar": 0.5, "mlm_u": 0.5})


def test_a_routed_recipe_resolves_to_a_loadable_recipe(tmp_path):
    """resolved_recipe.yaml (which `mft eval` and a rerun read) repeats the mix the route implies."""
    from mft.config import load_recipe
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "smollm2_facts_masked.yaml")
    assert recipe.build_objective().route == {"text": "masked_reconstruct", "prompt": "ar"}
    (tmp_path / "resolved.yaml").write_text(recipe.to_yaml())
    assert load_recipe(tmp_path / "resolved.yaml").build_objective() == recipe.build_objective()
