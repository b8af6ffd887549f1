"""Objectives carry their own rules (decoding, shift, sink, mask keys, architectures), and the bugs
that the side tables and probes let through stay fixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import mft.cli
import mft.eval
import mft.train
from mft import MFTConfig, SFTRowsCollator
from mft.collator import MFTCollator
from mft.config import load_recipe, parse_recipe
from mft.decoding import generate, generate_masked, generate_masked_any_order
from mft.errors import MFTError, RecipeError
from mft.objectives import AR, MLMU, OBJECTIVES, MaskedSFT, Mixture, build_objective
from mft.utils import redact

from test_config import data_recipe, error_line, no_model, tiny_raw, write_recipe  # noqa: F401 (a fixture)
from test_trainer import make_trainer, tiny_setup


# ---------------------------------------------------------------------------------------------
# the rules live on the objective


@pytest.mark.parametrize("name, decoding, kinds", [
    ("ar", "causal", {"causal", "encoder_decoder"}),
    ("ar_reverse_entity", "causal", {"causal", "encoder_decoder"}),
    ("mlm", "masked", {"causal", "bert", "encoder_decoder"}),
    ("mlm_u", "masked", {"causal", "bert", "encoder_decoder"}),
    ("plm", "masked", {"encoder_decoder"}),
    ("masked_reconstruct", "causal", {"causal", "encoder_decoder"}),
])
def test_every_objective_states_its_decoding_and_architectures(name, decoding, kinds):
    objective = OBJECTIVES[name]()
    assert objective.decoding == decoding and objective.architectures == kinds
    assert objective.components == (objective,)


def test_a_mixture_combines_its_components_rules():
    mixture = Mixture(mix={"ar": 0.3, "mlm_u": 0.7}, options={"mlm_u": {"shift": True, "keep_sink": True,
                                                                      "attend_to_masked": True}})
    assert mixture.decoding == "masked" and mixture.bidirectional and mixture.needs_mask_token
    assert mixture.decoding_options() == {"shift": True, "keep_sink": True, "attend_to_masked": True,
                                          "prompt_sees_answer": True}
    assert mixture.architectures == {"causal", "encoder_decoder"}  # ar cannot train BERT
    assert [component.name for component in mixture.components] == ["ar", "mlm_u"]


def test_a_routed_mixture_decodes_as_its_question_component():
    """Bug: with route every weight was 1.0, so the 'main component' was the first one listed."""
    assert Mixture(route={"text": "ar", "prompt": "mlm_u"}).decoding == "masked"
    assert Mixture(route={"text": "mlm_u", "prompt": "ar"}).decoding == "causal"
    assert Mixture(mix={"mlm_u": 0.2, "ar": 0.8}).decoding == "causal"  # a mix: the heaviest


def test_an_objective_used_before_setup_says_so():
    with pytest.raises(AttributeError, match="setup"):
        MLMU()({"input_ids": [1, 2, 3]}, torch.Generator())
    assert getattr(AR(), "no_such_attribute", "default") == "default"  # getattr defaults still work


def test_objective_setup_without_a_mask_token_is_a_recipe_error():
    tokenizer, *_ = tiny_setup()
    tokenizer.mask_token = None
    with pytest.raises(RecipeError, match="mask token"):
        MFTCollator(MLMU(), tokenizer)


# ---------------------------------------------------------------------------------------------
# decoding


def test_an_unknown_decoding_is_an_error_not_causal_decoding():
    tokenizer, model, *_ = tiny_setup()
    with pytest.raises(RecipeError, match="beam"):
        generate(model, tokenizer, [[tokenizer.bos_token_id]], "beam", max_new_tokens=2)


def hidden_keys_seen(model, tokenizer, decode, attend_to_masked: bool) -> list[bool]:
    """For each forward pass of `decode`: whether some query could attend to another position's
    mask slot (a slot always sees itself)."""
    seen = []
    forward = model.forward

    def recording(input_ids=None, attention_mask=None, **kwargs):
        slots = input_ids == tokenizer.mask_token_id  # [B, L]
        others = ~torch.eye(slots.shape[1], dtype=torch.bool)
        seen.append(bool((attention_mask.bool()[:, 0] & slots[:, None, :] & others).any()))
        return forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    model.forward = recording
    decode(model, tokenizer, [[tokenizer.bos_token_id, 5, 6], [tokenizer.bos_token_id, 7]], max_new_tokens=3,
           attend_to_masked=attend_to_masked)
    model.forward = forward
    return seen


@pytest.mark.parametrize("decode", [generate_masked, generate_masked_any_order])
def test_masked_decoding_follows_attend_to_masked(decode):
    tokenizer, model, *_ = tiny_setup()
    assert not any(hidden_keys_seen(model, tokenizer, decode, attend_to_masked=False))
    assert all(hidden_keys_seen(model, tokenizer, decode, attend_to_masked=True))


def test_a_model_trained_with_visible_masks_is_evaluated_with_visible_masks(tmp_path, monkeypatch):
    """Bug: decoding never received attend_to_masked, so such a model was asked with hidden slots."""
    trainer = make_trainer(tmp_path, objective_options={"attend_to_masked": True})
    received = {}

    def fake_generate(model, tokenizer, prompts, decoding, max_new_tokens, batch_size, **rules):
        received.update(rules, decoding=decoding, max_new_tokens=max_new_tokens)
        return [[] for _ in prompts]

    monkeypatch.setattr(mft.eval, "generate", fake_generate)
    trainer.evaluate_qa(trainer.eval_dataset or mft.eval.QASet(
        [{"question": "a", "answer": "b", "direction": "forward"}]))
    assert received == {"shift": False, "keep_sink": False, "attend_to_masked": True, "prompt_sees_answer": True,
                        "decoding": "masked",
                        "max_new_tokens": 16}


def test_mft_eval_uses_the_runs_answer_length(tmp_path, monkeypatch, capsys):
    """Bug: mft eval defaulted to 32 new tokens while the run evaluated with training.max_new_tokens."""
    raw = tiny_raw(tmp_path)
    raw["training"].update(max_new_tokens=5, eval_strategy="no")
    assert mft.train.main([write_recipe(tmp_path, raw)]) == 0
    run_dir = Path(raw["training"]["output_dir"])
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "[value_of] x :", "answer": "y", "direction": "forward"}) + "\n")
    received = {}
    real = mft.eval.evaluate_qa

    def recording(model, tokenizer, qa_rows, decoding, max_new_tokens, batch_size, **rules):
        received.update(rules, decoding=decoding, max_new_tokens=max_new_tokens)
        return real(model, tokenizer, qa_rows, decoding, max_new_tokens, batch_size, **rules)

    monkeypatch.setattr(mft.eval, "evaluate_qa", recording)
    mft.eval.evaluate_run(run_dir, qa)
    assert received["max_new_tokens"] == 5 and received["decoding"] == "masked"
    mft.eval.evaluate_run(run_dir, qa, max_new_tokens=3)
    assert received["max_new_tokens"] == 3


def test_mft_eval_refuses_a_model_folder_without_a_tokenizer(tmp_path, capsys):
    # (a folder without a decoding spec or a recipe is a plain causal LM: tests/test_inference.py)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "q", "answer": "a", "direction": "forward"}) + "\n")
    line = error_line(capsys, ["eval", str(run_dir), "--qa", str(qa)], entry=mft.cli.main)
    assert "no tokenizer" in line


def test_max_new_tokens_below_one_is_refused(tmp_path, capsys):
    raw = tiny_raw(tmp_path)
    line = error_line(capsys, [write_recipe(tmp_path, raw), "training.max_new_tokens=0"])
    assert "max_new_tokens" in line


# ---------------------------------------------------------------------------------------------
# the trainer refuses what would silently go wrong


def test_batches_without_loss_weights_are_refused(tmp_path):
    """Bug: get_batch_samples returned no denominator while loss_is_scaled_for_ga stayed true, so
    another collator's loss would have been multiplied by the accumulation steps."""
    trainer = make_trainer(tmp_path)
    batches = iter([{"input_ids": torch.ones(2, 3, dtype=torch.long), "labels": torch.ones(2, 3, dtype=torch.long)}])
    with pytest.raises(RecipeError, match="loss_weights"):
        trainer.get_batch_samples(batches, 1, torch.device("cpu"))


def test_sft_rows_without_a_prompt_are_refused_where_the_objective_reads_the_prompt():
    """Bug: rows without labels were taken as plain text, silently breaking predict_prompt: false,
    masked_sft and routed mixtures."""
    tokenizer, *_ = tiny_setup()
    ids = [tokenizer.bos_token_id] + tokenizer("a b c", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    for objective in (MLMU(predict_prompt=False), MaskedSFT(), Mixture(route={"text": "mlm_u", "prompt": "ar"})):
        with pytest.raises(RecipeError, match="prompt"):
            SFTRowsCollator(objective, tokenizer, seed=0)([{"input_ids": ids}])
    assert SFTRowsCollator(MLMU(), tokenizer, seed=0)([{"input_ids": ids}])["input_ids"].shape == (1, len(ids))
    # TRL's completion_mask marks the completion as labels do
    example = SFTRowsCollator.example({"input_ids": ids, "completion_mask": [0, 0, 1, 1, 1]})
    assert example["prompt_length"] == 2 and "completion_mask" not in example


def test_component_losses_are_summed_as_tensors_and_logged_per_component(tmp_path):
    """Per-component losses: one running sum per component (no .item() per micro-batch); at log
    time each component's weighted mean over everything since the last log."""
    trainer = make_trainer(tmp_path, objective="mixture", objective_options={"mix": {"ar": 0.5, "mlm_u": 0.5}})
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    assert set(batch["source_ids"][:, 0].tolist()) == {0, 1}  # both components in the batch
    trainer.model.train()
    for _ in range(2):
        trainer.compute_loss(trainer.model, {k: v.clone() for k, v in batch.items()},
                             num_items_in_batch=torch.tensor(1.0))
    assert isinstance(trainer._component_losses, torch.Tensor) and trainer._component_losses.shape == (2, 2)
    trainer.log({"loss": 1.0})
    logged = trainer.state.log_history[-1]
    inputs = trainer._attention_inputs({k: v.clone() for k, v in batch.items()
                                        if k not in ("labels", "loss_weights", "source_ids")}, annealing=False)
    with torch.no_grad():
        per_position, _ = trainer.token_loss(trainer.model, inputs, batch["labels"], batch["loss_weights"],
                                       selected_only=False)
    for index, name in enumerate(["ar", "mlm_u"]):
        tokens = batch["source_ids"] == index
        expected = per_position[tokens].sum() / batch["loss_weights"][tokens].sum()
        assert abs(logged[f"loss_{name}"] - expected.item()) < 1e-4
    assert (trainer._component_losses == 0).all()  # reset after the log


# ---------------------------------------------------------------------------------------------
# one validation pass; the resolved recipe holds every resolved value


def test_pretrained_defaults_are_resolved_while_parsing():
    """Bug: default_options_for_pretrained changed the recipe after parsing, so the Python API and
    the CLI got different objectives."""
    recipe = parse_recipe({"task": {"name": "retrieval"}, "model": {"name_or_path": "someone/some-model"},
                           "objective": {"name": "mlm_u"}, "training": {"output_dir": "unused"}})
    assert recipe.objective_options["shift"] is True and recipe.objective_options["keep_sink"] is True
    mixture = parse_recipe({"task": {"name": "retrieval"}, "model": {"name_or_path": "someone/some-model"},
                            "objective": {"name": "mixture", "mix": {"ar": 0.5, "mlm_u": 0.5}},
                            "training": {"output_dir": "unused"}})
    assert mixture.objective_options["options"]["mlm_u"] == {"shift": True, "keep_sink": True}
    assert mixture.build_objective().shift


def test_the_resolved_recipe_holds_every_resolved_value_and_parses_back(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, tiny_raw(tmp_path)))
    resolved = yaml.safe_load(recipe.to_yaml())
    training = resolved["training"]
    assert training["max_new_tokens"] == 16 and training["decoding"] is None  # mft defaults, written
    assert training["adam_beta1"] == 0.9 and "lr_scheduler_type" in training  # transformers defaults, written
    assert "hub_token" not in training and "gradient_checkpointing" not in training
    again = parse_recipe(resolved)
    assert again.training.to_dict() == recipe.training.to_dict()
    assert again.build_objective() == recipe.build_objective()


def test_redact_keeps_options_that_merely_mention_tokens():
    """Bug: every string-valued key containing "token" was dropped from the resolved recipe."""
    recipe = {"objective": {"mask_token_text": "<m>"}, "training": {"hub_token": "secret", "bos_token": "<s>"}}
    assert redact(recipe) == {"objective": {"mask_token_text": "<m>"}, "training": {"bos_token": "<s>"}}


# ---------------------------------------------------------------------------------------------
# every error a user can cause is one line; the rest names the stage and the traceback file


def test_an_entity_that_is_not_whole_tokens_is_one_line(tmp_path, capsys, no_model):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"text": "alpha beta gamma", "entities": ["lph"]}) + "\n")
    raw = data_recipe(tmp_path, train)
    raw["objective"] = {"name": "ar_reverse_entity"}
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "lph" in line


def test_an_unforeseen_failure_names_the_stage_and_keeps_the_traceback(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the disk caught fire\nsecond line")

    monkeypatch.setattr(mft.train, "load_model", broken)
    raw = tiny_raw(tmp_path)
    assert mft.train.main([write_recipe(tmp_path, raw)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "loading the model" in lines[0] and "the disk caught fire" in lines[0]
    log = Path(raw["training"]["output_dir"]) / "error.log"
    assert str(log) in lines[0] and "Traceback" in log.read_text() and "second line" in log.read_text()


def test_every_mft_error_is_caught_by_the_commands():
    assert issubclass(RecipeError, MFTError) and issubclass(RecipeError, ValueError)
    with pytest.raises(RecipeError):
        build_objective("no_such_objective")


def test_an_unforeseen_failure_of_mft_eval_is_one_line_too(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("weights")

    monkeypatch.setattr(mft.eval, "evaluate_run", broken)
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "q", "answer": "a", "direction": "forward"}) + "\n")
    assert mft.cli.main(["eval", str(tmp_path), "--qa", str(qa)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "running mft eval" in lines[0] and "KeyError" in lines[0]
    log = Path(lines[0].rsplit("full traceback: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text()
