"""Bad input (issue 17): each case exits with status 2 and one line on stderr that names the field,
row or path, before any model is built (`no_model`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import mft.train
from mft import cli
from mft.config import load_recipe

from test_config import data_recipe, error_line, no_model, tiny_raw, write_recipe  # noqa: F401 (a fixture)


@pytest.mark.parametrize("override, named", [
    ("training.learning_rate=-0.1", "learning_rate"),
    ("training.per_device_train_batch_size=0", "per_device_train_batch_size"),
    ("training.per_device_eval_batch_size=0", "per_device_eval_batch_size"),
    ("training.gradient_accumulation_steps=0", "gradient_accumulation_steps"),
    ("training.output_dir=", "training.output_dir"),
    ("training.max_new_tokens=0", "max_new_tokens"),
    ("training.max_new_tokens=-1", "max_new_tokens"),
])
def test_impossible_training_values_are_one_line(tmp_path, capsys, no_model, override, named):
    line = error_line(capsys, [write_recipe(tmp_path, tiny_raw(tmp_path)), override])
    assert named in line
    assert not (tmp_path / "out" / "resolved_recipe.yaml").exists()


def test_save_steps_zero_with_step_saving_is_refused(tmp_path, capsys, no_model):
    line = error_line(capsys, [write_recipe(tmp_path, tiny_raw(tmp_path)), "training.save_strategy=steps",
                               "training.save_steps=0"])
    assert "save_steps" in line


def test_a_key_given_twice_is_refused_with_its_lines(tmp_path, capsys, no_model):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("task: {name: retrieval}\nobjective: {name: mlm_u}\ntraining:\n  max_steps: 10\n"
                      "  learning_rate: 1.0e-3\n  max_steps: 20\n")
    line = error_line(capsys, [str(recipe)])
    assert "'max_steps' is given twice" in line and "lines 4 and 6" in line


def test_a_yaml_syntax_error_names_its_line_and_column(tmp_path, capsys, no_model):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("task: {name: retrieval\nobjective: x\n")
    line = error_line(capsys, [str(recipe)])
    assert "line 2, column" in line


@pytest.mark.parametrize("row, named", [
    ({"text": "alpha beta gamma", "entites": ["alpha"]}, "'entites'; did you mean 'entities'"),
    ({"text": "alpha beta", "prompt": "alpha", "completion": "beta"}, "not both"),
    ({"prompmt": "alpha", "completion": "beta"}, "did you mean 'prompt'"),
])
def test_bad_training_rows_are_refused(tmp_path, capsys, no_model, row, named):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps(row) + "\n")
    line = error_line(capsys, [write_recipe(tmp_path, data_recipe(tmp_path, train))])
    assert named in line and "line 1" in line


def test_a_misspelled_qa_key_is_refused(tmp_path, capsys, no_model):
    train, qa = tmp_path / "train.jsonl", tmp_path / "qa.jsonl"
    train.write_text(json.dumps({"text": "alpha beta"}) + "\n")
    qa.write_text(json.dumps({"question": "alpha", "answer": "beta", "direction": "forward",
                              "incorect_answer": "gamma"}) + "\n")
    line = error_line(capsys, [write_recipe(tmp_path, data_recipe(tmp_path, train, qa))])
    assert "did you mean 'incorrect_answer'" in line


def test_extra_metadata_keys_of_a_row_are_not_an_error(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"text": "alpha beta", "id": 7, "source": "notes"}) + "\n")
    raw = data_recipe(tmp_path, train)
    recipe = load_recipe(write_recipe(tmp_path, raw))
    data, *_ = mft.train.prepare(recipe)
    assert data.train == [{"text": "alpha beta"}]


def test_unknown_lora_target_modules_are_refused_with_a_suggestion(tmp_path, capsys):
    raw = tiny_raw(tmp_path)
    raw["peft"] = {"method": "lora", "target_modules": ["q_projj"]}
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "peft.target_modules" in line and "did you mean q_proj" in line


# -- models -------------------------------------------------------------------------------------

def saved_checkpoint(folder):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mft.data import build_word_tokenizer

    tokenizer = build_word_tokenizer(["a b c"])
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("damage, named", [
    (lambda folder: (folder / "config.json").write_text("{not json"), "config.json is not valid JSON"),
    (lambda folder: [p.unlink() for p in folder.glob("*.safetensors")], "holds no weights"),
    (lambda folder: [p.unlink() for p in folder.glob("tokenizer*")], "holds no tokenizer"),
])
def test_a_damaged_checkpoint_folder_is_one_line(tmp_path, capsys, no_model, damage, named):
    folder = saved_checkpoint(tmp_path / "base")
    damage(folder)
    capsys.readouterr()  # the save's progress bar
    raw = tiny_raw(tmp_path)
    raw["model"] = {"name_or_path": str(folder)}
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert named in line and "model.name_or_path" in line


def test_a_fake_gguf_file_is_one_line(tmp_path, capsys, no_model):
    fake = tmp_path / "model.gguf"
    fake.write_text("not a gguf file")
    raw = tiny_raw(tmp_path)
    raw["model"] = {"name_or_path": str(fake)}
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "is not a GGUF file" in line


# -- data files -----------------------------------------------------------------------------------

def test_a_byte_that_is_not_utf8_names_the_file_line_and_offset(tmp_path, capsys, no_model):
    train = tmp_path / "train.jsonl"
    train.write_bytes(b'{"text": "alpha beta"}\n{"text": "caf\xe9"}\n')
    line = error_line(capsys, [write_recipe(tmp_path, data_recipe(tmp_path, train))])
    assert str(train) in line and "line 2" in line and "byte 36" in line and "UTF-8" in line


def test_a_utf8_file_with_a_byte_order_mark_is_read(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_bytes(b"\xef\xbb\xbf" + b'{"text": "alpha beta"}\n')
    data, *_ = mft.train.prepare(load_recipe(write_recipe(tmp_path, data_recipe(tmp_path, train))))
    assert data.train == [{"text": "alpha beta"}]


# -- paths ----------------------------------------------------------------------------------------

def test_an_output_dir_that_is_a_file_or_under_one_is_refused(tmp_path, capsys, no_model):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for output_dir, named in [(blocker, "is a file"), (blocker / "run", "lies under")]:
        line = error_line(capsys, [write_recipe(tmp_path, tiny_raw(tmp_path)), f"training.output_dir={output_dir}"])
        assert "training.output_dir" in line and named in line


def test_a_read_only_output_dir_is_refused(tmp_path, capsys, no_model):
    """A folder no file can be created in: a read-only folder, or (root writes through permission
    bits) procfs, which refuses new files to everyone."""
    if os.geteuid() == 0:
        output_dir = Path("/proc/mft-run")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        output_dir = locked / "run"
    line = error_line(capsys, [write_recipe(tmp_path, tiny_raw(tmp_path)), f"training.output_dir={output_dir}"])
    assert "training.output_dir" in line and "cannot be written" in line


def test_mft_data_out_that_is_a_file_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = error_line(capsys, ["data", "retrieval", "--out", str(blocker)], entry=cli.main)
    assert "--out" in line and "is a file" in line


def eval_setup(tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "q", "answer": "a", "direction": "forward"}) + "\n")
    run = tmp_path / "run"
    run.mkdir()
    return run, qa


def test_mft_eval_on_a_killed_run_names_its_latest_checkpoint(tmp_path, capsys):
    run, qa = eval_setup(tmp_path)
    (run / "checkpoint-10").mkdir()
    (run / "checkpoint-30").mkdir()
    line = error_line(capsys, ["eval", str(run), "--qa", str(qa)], entry=cli.main)
    assert "not a finished run" in line and "checkpoint-30" in line


def test_mft_eval_on_a_folder_that_is_no_run_is_refused(tmp_path, capsys):
    run, qa = eval_setup(tmp_path)
    line = error_line(capsys, ["eval", str(run), "--qa", str(qa)], entry=cli.main)
    assert "holds no model" in line


def test_mft_eval_checks_its_out_path_and_batch_size_before_evaluating(tmp_path, capsys, monkeypatch):
    import mft.eval

    run, qa = eval_setup(tmp_path)
    (run / "config.json").write_text("{}")
    monkeypatch.setattr(mft.eval, "load_trained", lambda *a: pytest.fail("evaluated"), raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = error_line(capsys, ["eval", str(run), "--qa", str(qa), "--out", str(blocker / "m.json")], entry=cli.main)
    assert "--out" in line and "is a file" in line
    line = error_line(capsys, ["eval", str(run), "--qa", str(qa), "--batch-size", "0"], entry=cli.main)
    assert "--batch-size" in line


@pytest.mark.parametrize("route, named", [
    ({"txt": "masked_reconstruct", "prompt": "ar"}, "objective.route.txt: unknown row kind; did you mean text?"),
    ({"prompt": "ar"}, "objective.route.text is missing"),
    ({"text": "masked_recon", "prompt": "ar"}, "objective.route.text: unknown objective 'masked_recon'"),
])
def test_route_errors_name_the_bad_key(tmp_path, capsys, no_model, route, named):
    raw = tiny_raw(tmp_path)
    raw["objective"] = {"name": "mixture", "route": route}
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert named in line


# -- the Hub, unreachable -------------------------------------------------------------------------

def test_an_unreachable_hub_fails_at_once_for_a_model_and_a_dataset(tmp_path, capsys, no_model, monkeypatch):
    import time

    import mft.data.schema
    import mft.models.loading

    monkeypatch.setattr(mft.models.loading, "hub_reachable", lambda: False)
    monkeypatch.setattr(mft.data.schema, "hub_reachable", lambda: False)
    raw = tiny_raw(tmp_path)
    raw["model"] = {"name_or_path": "someone/no-such-model"}
    started = time.time()
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "someone/no-such-model" in line and "Hub is unreachable" in line
    raw = data_recipe(tmp_path, tmp_path / "unused")
    raw["data"] = {"train_dataset": "someone/no-such-dataset"}
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "data.train_dataset = someone/no-such-dataset" in line
    assert time.time() - started < 10  # no retries (36-57 s before)


# -- one line per field: a table of overrides of the tiny quickstart recipe -----------------------

@pytest.mark.parametrize("overrides, named", [
    (["objective.low=-0.1"], "objective.low"),
    (["objective.weighting=sqrt"], "objective.weighting"),
    (["objective.keep_sink=true"], "keep_sink"),
    (["objective.name=ar_reverse_segment", "objective.max_segment_length=0"], "objective.max_segment_length"),
    (["objective.name=mixture", "objective.mix={ar: -1}"], "objective.mix.ar"),
    (["objective.name=mixture", "objective.mix={}"], "objective.mix is empty"),
    (["objective.name=mixture", "objective.mix={arr: 1}"], "unknown objective 'arr'"),
    (["objective.name=mixture", "objective.mix={ar: 1}", "objective.per=sometimes"], "objective.per"),
    (["objective.name=mixture", "objective.mix={ar: 1}", "objective.options={mlm: {}}"], "objective.options.mlm"),
    (["objective.name=mixture", "objective.mix={ar: 0, mlm_u: 0}"], "sum to 0"),
    (["task.tokens_per_entity=0"], "task.tokens_per_entity"),
    (["task.query_fraction=1.5"], "task.query_fraction"),
    (["task.seed=x"], "task.seed"),
    (["model.hidden_size=15"], "model.hidden_size"),
    (["model.attention_sink=true"], "model.attention_sink"),
    (["model.architecture=transformer"], "model.architecture"),
    (["model.attn_implementation=flash_attention_2"], "flash_attention_2"),
    (["model.architecture=bert", "objective.name=ar"], "bert"),
    (["peft.r=0"], "peft.r"),
    (["peft.dropout=1.5"], "peft.dropout"),
    (["peft.method=qlora"], "peft.method = qlora"),
    (["peft.method=dora"], "peft.method"),
    (["training.pack_length=-1"], "pack_length"),
    (["training.attention_anneal_steps=-1"], "attention_anneal_steps"),
    (["training.push_to_hub=true"], "training.hub_model_id"),
    (["training.dataloader_persistent_workers=true"], "dataloader_persistent_workers"),
    (["training.decoding=beam"], "training.decoding"),
    (["training.max_steps=ten"], "training.max_steps"),
    (["training.seed=1.5"], "training.seed"),
    (["training.lr_scheduler_type=wiggly"], "wiggly"),
    (["training.eval_strategy=sometimes"], "sometimes"),
    (["training.pack_length=64", "objective.name=plm", "model.architecture=encoder_decoder"], "pack_length"),
])
def test_a_bad_value_is_one_line_naming_its_field(tmp_path, capsys, no_model, overrides, named):
    line = error_line(capsys, [write_recipe(tmp_path, tiny_raw(tmp_path)), *overrides])
    assert named in line
    assert not (tmp_path / "out").exists()  # nothing written: no folder, no resolved_recipe.yaml


def test_a_run_refused_over_its_data_leaves_no_folder(tmp_path, capsys, no_model):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"txt": "alpha"}) + "\n")
    raw = data_recipe(tmp_path, train)
    error_line(capsys, [write_recipe(tmp_path, raw)])
    assert not (tmp_path / "out").exists()
