"""Every model carries its decoding spec; `mft.load` + `generate` answers as in-training evaluation did;
`mft generate` and `mft merge` (issue 19)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import mft
import mft.train
from mft import cli
from mft.decoding import SPEC_FILE, DecodingSpec
from mft.errors import RecipeError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["task.num_pairs=10", "model.hidden_size=16", "model.num_hidden_layers=1", "model.intermediate_size=32",
        "training.max_steps=30", "training.learning_rate=1e-2", "training.eval_strategy=no",
        "training.report_to=none", "training.save_strategy=steps", "training.save_steps=20",
        "training.disable_tqdm=true", "training.max_new_tokens=6"]

# (objective options, training options): causal, masked, any-order, masked keys as keys, kept sink
RUNS = {
    "ar": ["objective.name=ar"],
    "mlm_u": ["objective.name=mlm_u"],
    "mlm_u_any_order": ["objective.name=mlm_u", "training.decoding=masked_any_order"],
    "mlm_u_attend_to_masked": ["objective.name=mlm_u", "objective.attend_to_masked=true"],
    "mlm_u_keep_sink_shift": ["objective.name=mlm_u", "objective.keep_sink=true", "objective.shift=true"],
    "mlm_u_prompt_blocked": ["objective.name=mlm_u", "objective.prompt_sees_answer=false"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    made = {}
    for name, options in RUNS.items():
        out = tmp_path_factory.mktemp(name) / "run"
        assert mft.train.main([str(ROOT / "recipes" / "quickstart.yaml"), *TINY, *options,
                               f"training.output_dir={out}"]) == 0
        made[name] = out
    return made


def test_every_saved_model_carries_the_spec_of_its_training(runs):
    expected = {"ar": ("causal", False, False, False), "mlm_u": ("masked", False, False, False),
                "mlm_u_any_order": ("masked_any_order", False, False, False),
                "mlm_u_attend_to_masked": ("masked", False, False, True),
                "mlm_u_keep_sink_shift": ("masked", True, True, False),
                "mlm_u_prompt_blocked": ("masked", False, False, False)}
    for name, run in runs.items():
        assert len(list(run.glob("checkpoint-*"))) == 1
        for folder in (run, *run.glob("checkpoint-*")):
            spec = DecodingSpec.read(folder)
            assert spec is not None, folder
            assert (spec.decoding, spec.shift, spec.keep_sink, spec.attend_to_masked) == expected[name], name
            assert spec.objective == ("ar" if name == "ar" else "mlm_u") and spec.max_new_tokens == 6
            assert spec.mask_token == "<mask>" and spec.chat is False  # a word tokenizer has no chat template
            assert spec.prompt_sees_answer is (name != "mlm_u_prompt_blocked")
        assert mft.load(run).spec == DecodingSpec.read(run)


@pytest.mark.parametrize("name", list(RUNS))
def test_load_and_generate_answer_as_in_training_evaluation(runs, name):
    run = runs[name]
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    trained = mft.load(run)
    # one batch mixing every prompt length, and the prompts one at a time: the same answers
    answers = trained.generate([row["question"] for row in rows], batch_size=len(rows))
    assert answers == [row["prediction"] for row in rows]
    assert [trained.generate(row["question"])[0] for row in rows[:4]] == answers[:4]
    if name == "mlm_u_prompt_blocked":  # trained block-causal: the prompt cache is exact
        assert trained.generate([row["question"] for row in rows], prompt_cache=True) == answers


def test_a_checkpoint_without_a_spec_uses_its_runs_and_a_legacy_run_its_recipe(runs, tmp_path):
    run = runs["mlm_u_keep_sink_shift"]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    [checkpoint] = copy.glob("checkpoint-*")
    (checkpoint / SPEC_FILE).unlink()
    assert mft.load(checkpoint).spec == DecodingSpec.read(copy)
    (copy / SPEC_FILE).unlink()  # a run saved before specs existed: its resolved recipe says the same
    legacy = mft.load(copy).spec
    assert legacy.rules() == DecodingSpec.read(run).rules() and legacy.decoding == "masked"
    plain = tmp_path / "plain"  # weights and tokenizer alone: a plain causal LM
    trained = mft.load(run)
    trained.model.save_pretrained(plain)
    trained.tokenizer.save_pretrained(plain)
    assert mft.load(plain).spec == DecodingSpec()


def test_merge_keeps_the_spec_and_folds_a_lora_adapter_into_the_weights(runs, tmp_path):
    from peft import LoraConfig, get_peft_model

    trained = mft.load(runs["mlm_u_keep_sink_shift"])
    torch.manual_seed(0)
    adapted = get_peft_model(trained.model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False, task_type="CAUSAL_LM"))
    adapter = tmp_path / "adapter"
    mft.TrainedModel(adapted, trained.tokenizer, trained.spec).save(adapter)
    # the adapter's base: where its adapter_config.json points
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(runs["mlm_u_keep_sink_shift"])
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert mft.load(adapter).spec == trained.spec

    merged = tmp_path / "merged"
    assert cli.main(["merge", str(adapter), "--out", str(merged)]) == 0
    assert (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists()
    assert DecodingSpec.read(merged) == trained.spec
    prompts = [json.loads(line)["question"] for line in (runs["mlm_u"] / "predictions.jsonl").read_text().splitlines()]
    assert mft.load(merged).generate(prompts) == mft.load(adapter).generate(prompts)
    assert cli.main(["merge", str(adapter), "--out", str(merged)]) == 2  # never over an existing model


def test_the_spec_goes_to_the_hub_and_loads_from_the_local_cache_offline(runs, tmp_path, monkeypatch):
    from mft.hub import files_to_push, model_card

    run = runs["mlm_u_keep_sink_shift"]
    assert SPEC_FILE in files_to_push(run)
    card = model_card(run, repo_id="someone/tiny-mlmu")
    assert 'mft.load(snapshot_download("someone/tiny-mlmu"))' in card
    assert '"masked", max_new_tokens=6, shift=True, keep_sink=True)[0]' in card
    # the Hugging Face cache layout, as a download leaves it: refs/main names the snapshot
    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-mlmu"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in files_to_push(run):
        shutil.copy(run / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from_cache = mft.load("someone/tiny-mlmu")
    assert from_cache.spec == DecodingSpec.read(run)
    prompts = ["[value_of] k1", "k1 k2 :"]
    assert from_cache.generate(prompts) == mft.load(run).generate(prompts)


def test_generate_command_reads_arguments_or_stdin(runs, capsys, monkeypatch):
    import io

    run = runs["mlm_u"]
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()][:3]
    assert cli.main(["generate", str(run), *[row["question"] for row in rows]]) == 0
    assert capsys.readouterr().out.splitlines() == [row["prediction"] for row in rows]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(row["question"] + "\n" for row in rows)))
    assert cli.main(["generate", str(run), "--jsonl", "--max-new-tokens", "6"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == [{"prompt": row["question"], "answer": row["prediction"]} for row in rows]


def test_generate_bad_input_is_one_line_and_status_2(runs, tmp_path, capsys, monkeypatch):
    import io

    no_mask = tmp_path / "no-mask"
    trained = mft.load(runs["ar"])
    trained.model.save_pretrained(no_mask)
    trained.tokenizer.mask_token = None
    trained.tokenizer.save_pretrained(no_mask)
    cases = [
        (["generate", str(tmp_path / "missing"), "q"], "no such model folder"),
        (["generate", "./nowhere/model", "q"], "no such model folder"),
        (["generate", "someone/never-downloaded", "q"], "not in the local Hugging Face cache"),
        (["generate", str(no_mask), "--decoding", "masked", "k1"], "has no mask token"),
        (["generate", str(runs["ar"]), "  "], "prompt 1 is empty"),
        (["generate", str(runs["ar"]), "k1", ""], "prompt 2 is empty"),
        (["generate", str(runs["ar"]), "--max-new-tokens", "0", "k1"], "max_new_tokens = 0"),
        (["generate", str(runs["ar"])], "no prompts"),  # and nothing on stdin
        (["generate", str(tmp_path), "q"], "holds no model"),
        (["generate", str(tmp_path / "missing"), "--answer-cache", "q"], "set prompt_cache too"),  # before loading
        (["generate", str(runs["ar"]), "--threshold", "1.5", "q"], "use a probability in (0, 1]"),
        (["generate", str(runs["ar"]), "--decoding", "causal", "--prompt-cache", "q"], "prompt_cache applies to masked"),
    ]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsys.readouterr()
    for argv, message in cases:
        monkeypatch.setattr("sys.stdin", io.StringIO(""))
        assert cli.main(argv) == 2, argv
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and message in error, (argv, error)


def test_a_spec_that_is_not_one_is_refused_naming_the_field(tmp_path):
    for raw, field in [({"decoding": "beam"}, "decoding"), ({"shift": "yes"}, "shift"),
                       ({"max_new_tokens": 0}, "max_new_tokens"), ({"colour": 1}, "colour"), ([1], "list")]:
        (tmp_path / SPEC_FILE).write_text(json.dumps(raw))
        with pytest.raises(RecipeError, match=field):
            DecodingSpec.read(tmp_path)
    (tmp_path / SPEC_FILE).write_text("{not json")
    with pytest.raises(RecipeError, match="not readable JSON"):
        DecodingSpec.read(tmp_path)
