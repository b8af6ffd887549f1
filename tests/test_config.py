"""Recipes: loading, overrides, and one clear line (exit status 2) for every kind of bad input,
raised before any model is built. Plus an end-to-end run of the CLI on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import mft.train
from mft.eval import direction_results
from mft import cli
from mft.config import Recipe, RecipeError, load_recipe
from mft.data import RetrievalTask

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
RETRIEVAL_RECIPES = ["quickstart", "retrieval_ar", "retrieval_ar_reverse", "retrieval_mlm", "retrieval_mlmu"]


# ---------------------------------------------------------------------------------------------
# helpers


def tiny_raw(tmp_path: Path) -> dict:
    """recipes/quickstart.yaml with tiny sizes, so that a run takes about a second on a CPU."""
    raw = yaml.safe_load((RECIPES / "quickstart.yaml").read_text())
    raw["task"]["num_pairs"] = 10
    raw["model"].update(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=32)
    raw["training"].update(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=8,
                           warmup_steps=0, logging_steps=1, eval_steps=2, save_strategy="no",
                           report_to="none", disable_tqdm=True)
    return raw


def write_recipe(tmp_path: Path, raw: dict, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def data_recipe(tmp_path: Path, train_file, qa_file=None) -> dict:
    raw = tiny_raw(tmp_path)
    del raw["task"]
    raw["data"] = {"train_file": str(train_file)}
    if qa_file is not None:
        raw["data"]["qa_file"] = str(qa_file)
    else:
        raw["training"]["eval_strategy"] = "no"
    return raw


@pytest.fixture
def no_model(monkeypatch):
    """Bad input must be reported before a model exists: building one fails the test."""
    def build_model(*args, **kwargs):
        raise AssertionError("a model was built although the input is bad")
    monkeypatch.setattr(mft.train, "load_model", build_model)




def error_line(capsys, argv: list[str], entry=mft.train.main) -> str:
    """Run the CLI, expect exit status 2 and exactly one stderr line 'mft: error: ...'; return it."""
    status = entry(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, f"exit status {status}, stderr: {err!r}"
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("mft: error:"), lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------
# unknown keys


@pytest.mark.parametrize("section,typo,right", [
    ("training", "learning_rat", "training.learning_rate"),
    ("model", "hiden_size", "model.hidden_size"),
    ("objective", "weigting", "objective.weighting"),
    ("task", "num_pair", "task.num_pairs"),
])
def test_unknown_key_suggests_the_right_one(tmp_path, capsys, no_model, section, typo, right):
    raw = tiny_raw(tmp_path)
    raw[section][typo] = raw[section].get(right.split(".")[1], 1)
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert f"{section}.{typo}" in line
    assert "did you mean" in line
    assert right in line


def test_unknown_key_in_override_suggests_the_right_one(tmp_path, capsys, no_model):
    line = error_line(capsys, [write_recipe(tmp_path, tiny_raw(tmp_path)), "model.hiden_size=64"])
    assert "model.hiden_size" in line and "did you mean model.hidden_size" in line


def test_unknown_section_suggests_the_right_one(tmp_path, capsys, no_model):
    raw = tiny_raw(tmp_path)
    raw["trainig"] = raw.pop("training")
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "trainig" in line and "did you mean" in line and "training" in line


# ---------------------------------------------------------------------------------------------
# wrong types


@pytest.mark.parametrize("section,key,value,expected", [
    ("model", "hidden_size", "big", "int"),
    ("training", "max_steps", 1.5, "int"),
    ("training", "learning_rate", "fast", "float"),
    ("model", "architecture", "gpt9", "llama"),
    ("training", "use_cpu", "maybe", "bool"),
])
def test_wrong_type_names_the_field(tmp_path, capsys, no_model, section, key, value, expected):
    raw = tiny_raw(tmp_path)
    raw[section][key] = value
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert f"{section}.{key}" in line
    assert repr(value) in line or str(value) in line
    assert expected in line


def test_wrong_type_in_override_names_the_field(tmp_path, capsys, no_model):
    line = error_line(capsys, [write_recipe(tmp_path, tiny_raw(tmp_path)), "training.max_steps=1.5"])
    assert "training.max_steps" in line and "int" in line


def test_impossible_model_size_names_the_field(tmp_path, capsys, no_model):
    raw = tiny_raw(tmp_path)
    raw["model"]["num_attention_heads"] = 3  # 16 is not divisible by 3
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "model.num_attention_heads" in line and "model.hidden_size" in line


# ---------------------------------------------------------------------------------------------
# missing files


def test_missing_train_file(tmp_path, capsys, no_model):
    raw = data_recipe(tmp_path, "does/not/exist.jsonl")
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "data.train_file" in line and "does/not/exist.jsonl" in line and "not found" in line


def test_missing_qa_file(tmp_path, capsys, no_model):
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "a b : c d"}\n')
    raw = data_recipe(tmp_path, train, tmp_path / "missing_qa.jsonl")
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "data.qa_file" in line and "missing_qa.jsonl" in line


def test_missing_recipe_file(tmp_path, capsys, no_model):
    missing = tmp_path / "no_such_recipe.yaml"
    line = error_line(capsys, [str(missing)])
    assert "no_such_recipe.yaml" in line and "not found" in line


# ---------------------------------------------------------------------------------------------
# objective name and option values


def test_unknown_objective_name_suggests_mlm_u(tmp_path, capsys, no_model):
    raw = tiny_raw(tmp_path)
    raw["objective"] = {"name": "mlmu"}
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "objective.name" in line and "mlmu" in line
    assert "did you mean" in line and "mlm_u" in line


def test_unknown_task_name_suggests_retrieval(tmp_path, capsys, no_model):
    raw = tiny_raw(tmp_path)
    raw["task"]["name"] = "retreival"
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "task.name" in line and "retrieval" in line


@pytest.mark.parametrize("objective,field,value", [
    ({"name": "mlm"}, "rate", 1.5),
    ({"name": "mlm"}, "rate", -0.1),
    ({"name": "mlm_u"}, "high", 2),
    ({"name": "mlm_u"}, "low", -1),
])
def test_rate_outside_unit_interval(tmp_path, capsys, no_model, objective, field, value):
    raw = tiny_raw(tmp_path)
    raw["objective"] = {**objective, field: value}
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert f"objective.{field}" in line
    assert "[0, 1]" in line


def test_low_above_high(tmp_path, capsys, no_model):
    raw = tiny_raw(tmp_path)
    raw["objective"] = {"name": "mlm_u", "low": 0.8, "high": 0.2}
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "objective.low" in line and "objective.high" in line


# ---------------------------------------------------------------------------------------------
# empty datasets and bad rows


def test_empty_train_file(tmp_path, capsys, no_model):
    train = tmp_path / "train.jsonl"
    train.write_text("")
    line = error_line(capsys, [write_recipe(tmp_path, data_recipe(tmp_path, train))])
    assert "data.train_file" in line and "empty" in line


def test_zero_pairs(tmp_path, capsys, no_model):
    raw = tiny_raw(tmp_path)
    raw["task"]["num_pairs"] = 0
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "task.num_pairs" in line and "empty" in line


def test_bad_train_row_names_file_and_line(tmp_path, capsys, no_model):
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "a b : c d"}\n'
                     '{"prompt": "[key_of] c d :", "completion": "a b"}\n'
                     '\n'
                     '{"question": "no text nor prompt here"}\n')
    line = error_line(capsys, [write_recipe(tmp_path, data_recipe(tmp_path, train))])
    assert f"{train} line 4" in line
    assert "text" in line and "prompt" in line


def test_invalid_json_row_names_file_and_line(tmp_path, capsys, no_model):
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "a b : c d"}\n{"text": oops}\n')
    line = error_line(capsys, [write_recipe(tmp_path, data_recipe(tmp_path, train))])
    assert f"{train} line 2" in line


def test_bad_qa_row_names_file_and_line(tmp_path, capsys, no_model):
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "a b : c d"}\n')
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "[key_of] c d :", "answer": "a b", "direction": "backward"}\n'
                  '{"question": "[value_of] a b :", "answer": "c d", "direction": "sideways"}\n')
    line = error_line(capsys, [write_recipe(tmp_path, data_recipe(tmp_path, train, qa))])
    assert f"{qa} line 2" in line and "direction" in line


def test_sequences_longer_than_max_position_embeddings(tmp_path, capsys, no_model):
    raw = tiny_raw(tmp_path)
    raw["model"]["max_position_embeddings"] = 4
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "model.max_position_embeddings" in line


def test_evaluation_without_qa_rows(tmp_path, capsys, no_model):
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "a b : c d"}\n')
    raw = data_recipe(tmp_path, train)
    raw["training"]["eval_strategy"] = "steps"
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "training.eval_strategy" in line and "qa_file" in line


def test_zero_model_size(tmp_path, capsys, no_model):
    raw = tiny_raw(tmp_path)
    raw["model"]["num_hidden_layers"] = 0
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "model.num_hidden_layers" in line


# ---------------------------------------------------------------------------------------------
# YAML details


def test_command_line_overrides_apply(tmp_path):
    recipe = load_recipe(RECIPES / "retrieval_mlm.yaml", ["training.max_steps=7", "objective.rate=0.4",
                                                          f"training.output_dir={tmp_path / 'out'}"])
    assert isinstance(recipe, Recipe)
    assert recipe.training.max_steps == 7
    assert recipe.objective_options["rate"] == 0.4
    assert recipe.build_objective().rate == 0.4
    assert recipe.training.output_dir == str(tmp_path / "out")
    # the rest of the recipe is untouched
    assert recipe.training.per_device_train_batch_size == 64
    assert recipe.task_options["num_pairs"] == 200


def test_override_of_a_mlm_u_option(tmp_path):
    recipe = load_recipe(RECIPES / "quickstart.yaml", ["objective.high=0.5", "task.num_pairs=12"])
    assert recipe.build_objective().high == 0.5
    assert recipe.build_task().num_pairs == 12


def test_bad_override_syntax(tmp_path, capsys, no_model):
    line = error_line(capsys, [write_recipe(tmp_path, tiny_raw(tmp_path)), "max_steps"])
    assert "section.key=value" in line


@pytest.mark.parametrize("override, field", [("training.logits_chunk_size=0", "logits_chunk_size"),
                                             ("training.attention_anneal_steps=-5", "attention_anneal_steps")])
def test_bad_mft_training_values_are_one_line(tmp_path, capsys, no_model, override, field):
    line = error_line(capsys, [write_recipe(tmp_path, tiny_raw(tmp_path)), override])
    assert field in line


def test_yaml_1e_minus_4_is_accepted_for_a_float(tmp_path):
    raw = tiny_raw(tmp_path)
    raw["training"]["learning_rate"] = 0.5
    text = yaml.safe_dump(raw, sort_keys=False).replace("learning_rate: 0.5", "learning_rate: 1e-4")
    assert yaml.safe_load(text)["training"]["learning_rate"] == "1e-4"  # YAML 1.1 reads it as a string
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    recipe = load_recipe(path)
    assert recipe.training.learning_rate == pytest.approx(1e-4)
    assert isinstance(recipe.training.learning_rate, float)
    assert load_recipe(path, ["training.learning_rate=3e-5"]).training.learning_rate == pytest.approx(3e-5)


def test_yaml_python_tags_are_refused(tmp_path, capsys, no_model):
    marker = tmp_path / "pwned"
    text = yaml.safe_dump(tiny_raw(tmp_path), sort_keys=False)
    text += f"extra: !!python/object/apply:os.system ['touch {marker}']\n"
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    line = error_line(capsys, [str(path)])
    assert "YAML" in line
    assert not marker.exists()

    path.write_text("training: !!python/object:collections.OrderedDict {}\n")
    error_line(capsys, [str(path)])
    with pytest.raises(RecipeError):
        load_recipe(path)


def test_invalid_yaml(tmp_path, capsys, no_model):
    path = tmp_path / "broken.yaml"
    path.write_text("model: {hidden_size: 16\n")
    line = error_line(capsys, [str(path)])
    assert "broken.yaml" in line and "YAML" in line


def test_cli_train_subcommand_reports_errors(tmp_path, capsys, no_model):
    raw = tiny_raw(tmp_path)
    raw["training"]["learning_rat"] = 0.1
    line = error_line(capsys, ["train", write_recipe(tmp_path, raw)], entry=cli.main)
    assert "did you mean training.learning_rate" in line


# ---------------------------------------------------------------------------------------------
# the recipes shipped with mft


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads(path, tmp_path):
    overrides = []
    raw = yaml.safe_load(path.read_text())
    if "data" in raw:  # the recipe names data built elsewhere (e.g. WikiReversal): stand-in files
        train, qa = tmp_path / "train.jsonl", tmp_path / "qa.jsonl"
        train.write_text(json.dumps({"text": "a b"}) + "\n")
        qa.write_text(json.dumps({"question": "a", "answer": "b", "direction": "forward"}) + "\n")
        overrides += [f"data.train_file={train}", f"data.qa_file={qa}"]
    if raw.get("training", {}).get("bf16"):
        overrides.append("training.use_cpu=true")  # bf16 without a GPU needs use_cpu
    recipe = load_recipe(path, overrides)
    assert isinstance(recipe, Recipe)
    recipe.build_objective()
    if recipe.task_name:
        recipe.build_task()
    yaml.safe_load(recipe.to_yaml())


def test_retrieval_recipes_differ_only_in_objective_and_output_dir():
    raws = {name: yaml.safe_load((RECIPES / f"{name}.yaml").read_text()) for name in RETRIEVAL_RECIPES}
    reference = raws["quickstart"]
    for name, raw in raws.items():
        assert set(raw) == {"task", "model", "objective", "training"}, name
        assert raw["task"] == reference["task"], name
        assert raw["model"] == reference["model"], name
        training = {k: v for k, v in raw["training"].items() if k != "output_dir"}
        assert training == {k: v for k, v in reference["training"].items() if k != "output_dir"}, name
    output_dirs = [raw["training"]["output_dir"] for raw in raws.values()]
    assert len(set(output_dirs)) == len(output_dirs)
    objectives = {name: load_recipe(RECIPES / f"{name}.yaml").objective_name for name in RETRIEVAL_RECIPES}
    assert objectives == {"quickstart": "mlm_u", "retrieval_ar": "ar", "retrieval_ar_reverse": "ar_reverse",
                          "retrieval_mlm": "mlm", "retrieval_mlmu": "mlm_u"}
    assert raws["quickstart"]["objective"] == raws["retrieval_mlmu"]["objective"]


def test_quickstart_uses_mlm_u():
    recipe = load_recipe(RECIPES / "quickstart.yaml")
    assert recipe.objective_name == "mlm_u"
    assert recipe.task_name == "retrieval"


# ---------------------------------------------------------------------------------------------
# end to end


def _check_run_outputs(out: Path, expected_n: dict[str, int]) -> dict:
    assert (out / "config.json").is_file()
    assert (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file()
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results) == {"forward", "backward", "baseline"}  # baseline: step 0, the untouched model
    assert set(results["baseline"]) == {"forward", "backward"}
    results = direction_results(results)
    for direction, metrics in results.items():
        assert set(metrics) - {"borrowed"} == {"exact_match", "rouge1_recall", "n"}
        assert isinstance(metrics["exact_match"], float) and 0.0 <= metrics["exact_match"] <= 1.0
        assert 0.0 <= metrics["rouge1_recall"] <= 1.0 and metrics["rouge1_recall"] >= metrics["exact_match"]
        assert isinstance(metrics["n"], int) and not isinstance(metrics["n"], bool)
        assert metrics["n"] == expected_n[direction]
    return results


def test_end_to_end_tiny_run(tmp_path, capsys, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = write_recipe(tmp_path, tiny_raw(tmp_path))
    out = tmp_path / "run"
    status = mft.train.main([path, "training.max_steps=4", f"training.output_dir={out}", "training.eval_steps=2"])
    assert status == 0, capsys.readouterr().err

    original = load_recipe(path, ["training.max_steps=4", f"training.output_dir={out}"])
    qa = original.build_task().build().qa
    expected_n = {d: sum(item["direction"] == d for item in qa) for d in ("forward", "backward")}
    assert expected_n == {"forward": 2, "backward": 2}
    results = _check_run_outputs(out, expected_n)

    # the saved model and tokenizer load back
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.hidden_size == 16
    assert tokenizer.mask_token is not None

    # resolved_recipe.yaml is a recipe again, the same one
    resolved = load_recipe(out / "resolved_recipe.yaml")
    assert resolved.model == original.model
    assert resolved.build_task() == original.build_task()
    assert resolved.build_objective() == original.build_objective()
    assert resolved.objective_name == "mlm_u"
    assert resolved.training.max_steps == 4
    assert resolved.training.output_dir == str(out)

    report = (out / "report.md").read_text()
    full_results = json.loads((out / "eval_results.json").read_text())
    assert "| direction | step 0 | exact match | wrong answers borrowed | ROUGE-1 recall | n |" in report
    for direction, metrics in results.items():
        base = full_results["baseline"][direction]["exact_match"]
        assert (f"| {direction} | {base:.3f} | {metrics['exact_match']:.3f} | {metrics['borrowed']:.3f} | "
                f"{metrics['rouge1_recall']:.3f} | {metrics['n']} |" in report)

    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for direction, metrics in results.items():
        rows = [row for row in predictions if row["direction"] == direction]
        assert len(rows) == metrics["n"]
        assert sum(row["exact_match"] for row in rows) / len(rows) == pytest.approx(metrics["exact_match"])
        assert all(isinstance(row["prediction"], str) and row["question"] and row["answer"] for row in rows)

    png = (out / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    image = matplotlib.image.imread(out / "accuracy.png")
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def test_cli_data_writes_files_a_data_recipe_trains_on(tmp_path, capsys, one_thread):
    data_dir = tmp_path / "data"
    status = cli.main(["data", "retrieval", "--out", str(data_dir), "--option", "num_pairs=10"])
    assert status == 0
    train_rows = [json.loads(line) for line in (data_dir / "train.jsonl").read_text().splitlines()]
    qa_rows = [json.loads(line) for line in (data_dir / "qa.jsonl").read_text().splitlines()]
    task = RetrievalTask(num_pairs=10).build()
    assert train_rows == task.train
    assert qa_rows == task.qa
    assert len(train_rows) == 10 + 2 * 8 and len(qa_rows) == 4

    raw = data_recipe(tmp_path, data_dir / "train.jsonl", data_dir / "qa.jsonl")
    out = tmp_path / "run"
    raw["training"]["output_dir"] = str(out)
    status = mft.train.main([write_recipe(tmp_path, raw), "training.max_steps=2"])
    assert status == 0, capsys.readouterr().err
    _check_run_outputs(out, {"forward": 2, "backward": 2})
    resolved = yaml.safe_load((out / "resolved_recipe.yaml").read_text())
    assert resolved["data"]["train_file"] == str(data_dir / "train.jsonl")


def test_cli_data_bad_option(tmp_path, capsys):
    line = error_line(capsys, ["data", "retrieval", "--out", str(tmp_path), "--option", "num_pair=10"],
                      entry=cli.main)
    assert "task.num_pair" in line and "did you mean task.num_pairs" in line
    assert not (tmp_path / "train.jsonl").exists()


def test_overriding_the_objective_name_drops_the_old_objectives_options():
    recipe = load_recipe(RECIPES / "quickstart.yaml", ["objective.name=ar"])  # quickstart sets weighting: 1/r
    assert recipe.objective_name == "ar" and recipe.objective_options == {}
    recipe = load_recipe(RECIPES / "retrieval_mlm.yaml", ["objective.name=mlm_u", "objective.low=0.2"])
    assert recipe.objective_options == {"low": 0.2}
    recipe = load_recipe(RECIPES / "retrieval_mlm.yaml", ["objective.name=mlm", "objective.rate=0.4"])
    assert recipe.objective_options == {"rate": 0.4}  # same name: the file's options stay overridable


def test_a_saved_datasets_dataset_trains_like_a_file(tmp_path, capsys):
    import datasets

    rows = RetrievalTask(num_pairs=6).build()
    columns = [{key: row.get(key) for key in ("text", "prompt", "completion")} for row in rows.train]
    datasets.Dataset.from_list(columns).save_to_disk(str(tmp_path / "ds"))  # absent fields are None
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(row) + "\n" for row in rows.qa))
    raw = data_recipe(tmp_path, tmp_path / "unused", qa)
    raw["data"] = {"train_dataset": str(tmp_path / "ds"), "qa_file": str(qa)}
    assert mft.train.main([write_recipe(tmp_path, raw)]) == 0
    assert "mft: done" in capsys.readouterr().out
    raw["data"]["train_split"] = "validation"
    assert mft.train.main([write_recipe(tmp_path, raw)]) == 2
    assert "data.train_split" in capsys.readouterr().err
    raw["data"] = {"train_file": str(qa), "train_dataset": str(tmp_path / "ds")}
    assert mft.train.main([write_recipe(tmp_path, raw)]) == 2
    assert "exactly one of data.train_file" in capsys.readouterr().err


def test_from_scratch_run_without_bos(tmp_path, capsys, one_thread):
    """model.add_bos_token = false: no row starts with BOS, in training or at evaluation, and the
    saved tokenizer keeps that choice."""
    from transformers import AutoTokenizer

    from mft.collator import MFTCollator
    from mft.data import build_word_tokenizer, encode_prompt

    out = tmp_path / "run"
    overrides = ["model.add_bos_token=false", f"training.output_dir={out}", "training.max_steps=2"]
    recipe = load_recipe(write_recipe(tmp_path, tiny_raw(tmp_path)), overrides)
    data, tokenizer, objective, dataset = mft.train.prepare(recipe)
    assert all(example["input_ids"][0] != tokenizer.bos_token_id for example in dataset.examples)
    collator = MFTCollator(objective, tokenizer)
    assert all(tokenizer.bos_token_id not in row.input_ids.tolist()
               for example in dataset.examples for row in collator.rows(example))
    first_words = {row["text"].split()[0] for row in data.train if "text" in row}
    assert {tokenizer.convert_ids_to_tokens(int(example["input_ids"][0])) for example in dataset.examples} >= first_words

    assert mft.train.main([write_recipe(tmp_path, tiny_raw(tmp_path)), *overrides]) == 0, capsys.readouterr().err
    saved = AutoTokenizer.from_pretrained(out)
    question = data.qa[0]["question"]
    assert encode_prompt(saved, question) == saved(question, add_special_tokens=False)["input_ids"]
    default = build_word_tokenizer([question])
    assert encode_prompt(default, question)[0] == default.bos_token_id  # the default still starts with BOS


def test_add_bos_token_false_is_refused_for_a_pretrained_model(tmp_path, capsys, no_model):
    raw = tiny_raw(tmp_path)
    raw["model"] = {"name_or_path": "smollm2-135m", "add_bos_token": False}
    line = error_line(capsys, [write_recipe(tmp_path, raw)])
    assert "model.add_bos_token" in line


def test_prompt_gradient_false_trains_a_causal_objective_and_is_refused_elsewhere(tmp_path, capsys, one_thread):
    raw = tiny_raw(tmp_path)
    raw["objective"] = {"name": "masked_reconstruct"}
    raw["model"]["max_position_embeddings"] = 64  # rows hold the masked copy and the document
    raw["training"].update(prompt_gradient=False, eval_strategy="no")
    assert mft.train.main([write_recipe(tmp_path, raw)]) == 0, capsys.readouterr().err
    assert "mft: done" in capsys.readouterr().out
    line = error_line(capsys, [write_recipe(tmp_path, raw), "objective.name=mlm_u"])
    assert "prompt_gradient" in line and "mlm_u" in line
    line = error_line(capsys, [write_recipe(tmp_path, raw), "training.activation_checkpointing=true"])
    assert "prompt_gradient" in line and "activation_checkpointing" in line
