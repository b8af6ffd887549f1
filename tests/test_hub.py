"""Publishing a finished run (mft.hub), offline: the files sent, the model card, the push through a
fake `HfApi` (and through the real one with its two methods replaced), failures, and secrets.

No test reaches the network: every socket connection attempt fails (see `no_network`)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import requests
import torch
import yaml
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import filter_repo_objects
from transformers import LlamaConfig, LlamaForCausalLM

from mft.data import build_word_tokenizer
from mft.errors import HubError, MFTError, RecipeError
from mft.hub import files_to_push, model_card, push_run, redact

TOKEN = "hf_SuperSecretPushToken123"
REPO = "someone/mft-retrieval"

RUN_FILES = {"resolved_recipe.yaml", "eval_results.json", "report.md", "accuracy.png"}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}
FULL_MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors"} | TOKENIZER_FILES | RUN_FILES
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md"} | TOKENIZER_FILES | RUN_FILES

FULL_RECIPE = {
    "task": {"name": "retrieval", "num_pairs": 200, "tokens_per_entity": 2, "query_fraction": 0.8, "seed": 0},
    "model": {"name_or_path": None, "architecture": "llama", "hidden_size": 16, "num_hidden_layers": 1},
    "peft": {"method": "full", "r": 16, "alpha": 16.0, "dropout": 0.0, "target_modules": "all-linear",
             "modules_to_save": None},
    "objective": {"name": "mlm_u", "weighting": "1/r", "low": 0.0, "high": 1.0},
    "training": {"output_dir": "runs/quickstart", "max_steps": 2, "learning_rate": 0.001, "max_new_tokens": 16},
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails at once, so a test that would reach the Hub fails."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=32))


def write_run_files(output_dir: Path, recipe: dict, results: dict) -> None:
    """What mft.train leaves besides the model: the run's files, a checkpoint, logs, pickled args."""
    (output_dir / "resolved_recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    import json
    (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "report.md").write_text("# mlm_u on retrieval\n\n| direction | exact match | n |\n")
    (output_dir / "accuracy.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    checkpoint = output_dir / "checkpoint-2"
    checkpoint.mkdir()
    for name in ("config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                 "trainer_state.json", "training_args.bin", "tokenizer.json"):
        (checkpoint / name).write_bytes(b"checkpoint " + name.encode())
    logs = output_dir / "runs" / "Jan01_00-00-00_host"
    logs.mkdir(parents=True)
    (logs / "events.out.tfevents.1.host").write_bytes(b"tensorboard")
    (output_dir / "training_args.bin").write_bytes(b"pickled TrainingArguments")


@pytest.fixture
def full_run(tmp_path) -> Path:
    """A from-scratch MLM-U run: full model, word-level tokenizer with its own <mask>."""
    output_dir = tmp_path / "quickstart"
    tokenizer = build_word_tokenizer(["k1 k2 : v1 v2", "[value_of] k1 k2 : v1 v2"])
    tiny_llama(len(tokenizer)).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_run_files(output_dir, FULL_RECIPE, {"forward": {"exact_match": 0.975, "n": 40},
                                              "backward": {"exact_match": 0.925, "n": 40}})
    return output_dir


@pytest.fixture
def adapter_run(tmp_path) -> Path:
    """A LoRA run of a mixture objective on a pretrained (Hub id) base, data from files; the mask token
    <|mask|> was added to the vocabulary. PEFT's save_pretrained writes its own README.md."""
    from peft import LoraConfig, get_peft_model

    output_dir = tmp_path / "lora-run"
    tokenizer = build_word_tokenizer(["the cat sat on the mat"])
    tokenizer.add_special_tokens({"mask_token": "<|mask|>"})
    model = get_peft_model(tiny_llama(len(tokenizer)), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                                  task_type="CAUSAL_LM"))
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    recipe = {
        "data": {"train_file": str(tmp_path / "private" / "wiki_train.jsonl"),
                 "qa_file": str(tmp_path / "private" / "wiki_qa.jsonl")},
        "model": {"name_or_path": "base-org/base-model-1b", "architecture": "llama"},
        "peft": {"method": "lora", "r": 2, "alpha": 4.0, "dropout": 0.0, "target_modules": ["q_proj"],
                 "modules_to_save": None},
        "objective": {"name": "mixture", "mix": {"ar": 0.5, "mlm_u": 0.5}, "per": "example",
                      "options": {"mlm_u": {"shift": True}}},
        "training": {"output_dir": str(output_dir), "max_steps": 2},
    }
    write_run_files(output_dir, recipe, {"forward": {"exact_match": 0.5, "n": 4, "rouge1_recall": 0.75},
                                         "backward": {"exact_match": 0.25, "n": 4, "rouge1_recall": 0.5}})
    return output_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


class FakeApi:
    """Records `create_repo` and `upload_folder` calls; `fail` makes `fail_at` raise it."""

    def __init__(self, fail: Exception | None = None, fail_at: str = "create_repo"):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail, self.fail_at = fail, fail_at

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))
        if self.fail is not None and self.fail_at == "create_repo":
            raise self.fail
        return f"https://huggingface.co/{args[0] if args else kwargs['repo_id']}"

    def upload_folder(self, *args, **kwargs):
        self.calls.append(("upload_folder", args, kwargs))
        if self.fail is not None and self.fail_at == "upload_folder":
            raise self.fail
        return "commit"


def uploaded(folder: Path, allow_patterns: list[str]) -> set[str]:
    """What `upload_folder(folder, allow_patterns=...)` selects: huggingface_hub's own filter over
    every file of the folder, checkpoints and logs included."""
    paths = [str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()]
    return set(filter_repo_objects(paths, allow_patterns=allow_patterns))


# ---------------------------------------------------------------------------------------------
# files_to_push


def test_files_to_push_full_model(full_run):
    assert set(files_to_push(full_run)) == FULL_MODEL_FILES


def test_files_to_push_adapter(adapter_run):
    files = set(files_to_push(adapter_run))
    assert files == ADAPTER_FILES
    assert not files & {"config.json", "model.safetensors", "training_args.bin"}


def test_files_to_push_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(RecipeError, match="no model"):
        files_to_push(tmp_path)
    with pytest.raises(RecipeError, match="no such folder"):
        files_to_push(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# push_run with a fake api


def test_push_run_full_model(full_run):
    api = FakeApi()
    url = push_run(full_run, REPO, token=TOKEN, private=True, api=api)
    assert url == f"https://huggingface.co/{REPO}"

    (name, args, kwargs), (name2, args2, kwargs2) = api.calls
    assert name == "create_repo" and (args[0] if args else kwargs["repo_id"]) == REPO
    assert kwargs["exist_ok"] is True and kwargs["private"] is True and kwargs["token"] == TOKEN
    assert name2 == "upload_folder" and not args2
    assert kwargs2["repo_id"] == REPO and Path(kwargs2["folder_path"]) == full_run and kwargs2["token"] == TOKEN
    expected = FULL_MODEL_FILES | {"README.md"}
    assert set(kwargs2["allow_patterns"]) == expected
    # huggingface_hub's filter picks exactly those: no checkpoint-2/, runs/ or training_args.bin
    assert uploaded(full_run, kwargs2["allow_patterns"]) == expected

    card = (full_run / "README.md").read_text()
    metadata = ModelCard(card).data
    assert metadata.library_name == "transformers" and metadata.base_model is None
    assert {"mft", "mlm_u"} <= set(metadata.tags)
    assert "trained from scratch (llama)" in card
    assert "`mlm_u`" in card and "| objective.weighting | 1/r |" in card
    assert "| objective.low | 0.0 |" in card and "| objective.high | 1.0 |" in card
    assert "full fine-tuning" in card
    assert "`<mask>`" in card
    assert "`retrieval`" in card and "| task.num_pairs | 200 |" in card and "| task.tokens_per_entity | 2 |" in card
    assert "| forward | 0.975 | 40 |" in card and "| backward | 0.925 | 40 |" in card
    assert '"masked"' in card  # MLM-U answers with masked decoding
    # the token passed to push_run is in no file of the run, README.md included
    assert all(TOKEN.encode() not in data for data in snapshot(full_run).values())


def test_push_run_adapter_card(adapter_run):
    api = FakeApi()
    push_run(adapter_run, REPO, api=api)
    upload = api.calls[1][2]
    assert set(upload["allow_patterns"]) == ADAPTER_FILES
    assert uploaded(adapter_run, upload["allow_patterns"]) == ADAPTER_FILES

    card = (adapter_run / "README.md").read_text()  # mft's card replaces PEFT's template
    metadata = ModelCard(card).data
    assert metadata.library_name == "peft" and metadata.base_model == "base-org/base-model-1b"
    assert {"mft", "mixture", "ar", "mlm_u", "lora"} <= set(metadata.tags)
    assert "lora (r=2, alpha=4.0" in card
    assert "| objective.mix |" in card and '"mlm_u": 0.5' in card and '"shift": true' in card
    assert "`<\\|mask\\|>`, added" in card and "resize_token_embeddings" in card
    assert "mft.load" in card and "PeftModel.from_pretrained" in card
    assert "| data.train_file | wiki_train.jsonl |" in card and "private" not in card  # names, not local paths
    assert "| forward | 0.500 | 0.750 | 4 |" in card and "ROUGE-1 recall" in card
    assert "| training.max_steps | 2 |" in card and "output_dir" not in card


def test_model_card_mask_token_none_and_local_base(full_run):
    recipe = yaml.safe_load((full_run / "resolved_recipe.yaml").read_text())
    recipe["model"]["name_or_path"] = str(full_run)  # a local folder is no Hub id
    recipe["objective"] = {"name": "ar", "predict_prompt": True}
    (full_run / "resolved_recipe.yaml").write_text(yaml.safe_dump(recipe))
    config = (full_run / "tokenizer_config.json")
    config.write_text(config.read_text().replace('"mask_token": "<mask>",', ""))
    card = model_card(full_run)
    assert ModelCard(card).data.base_model is None and "local checkpoint" in card
    assert "| mask token | none |" in card and '"causal"' in card


def edit_recipe(output_dir: Path, **sections) -> None:
    """Replace (None: delete) sections of the run's resolved_recipe.yaml; `training` is updated, not replaced."""
    recipe = yaml.safe_load((output_dir / "resolved_recipe.yaml").read_text())
    for name, section in sections.items():
        if section is None:
            recipe.pop(name, None)
        elif name == "training":
            recipe["training"].update(section)
        else:
            recipe[name] = section
    (output_dir / "resolved_recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))


def usage_line(card: str) -> str:
    return next(line for line in card.splitlines() if line.startswith("answer = generate("))


def test_card_snippet_uses_the_runs_max_new_tokens(full_run):
    edit_recipe(full_run, training={"max_new_tokens": 7})
    card = model_card(full_run, repo_id=REPO)
    assert usage_line(card) == 'answer = generate(model, tokenizer, [prompt], "masked", max_new_tokens=7)[0]'
    assert "| training.max_new_tokens | 7 |" in card


def test_card_snippet_default_max_new_tokens_is_mftconfigs(full_run):
    from mft.training_args import MFTConfig

    recipe = yaml.safe_load((full_run / "resolved_recipe.yaml").read_text())
    del recipe["training"]["max_new_tokens"]
    (full_run / "resolved_recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert f"max_new_tokens={MFTConfig.max_new_tokens})" in usage_line(model_card(full_run))


def test_card_snippet_repeats_the_objectives_decoding_rules(full_run):
    edit_recipe(full_run, objective={"name": "mlm_u", "shift": True, "keep_sink": True, "attend_to_masked": True})
    assert usage_line(model_card(full_run)) == ('answer = generate(model, tokenizer, [prompt], "masked", '
                                                'max_new_tokens=16, shift=True, keep_sink=True, '
                                                'attend_to_masked=True)[0]')
    # the question gets the start tokens the training rows had (shift and keep_sink decide them)
    assert 'prompt = encode_question(tokenizer, "your question", True, "masked", shift=True, keep_sink=True)' \
        in model_card(full_run).splitlines()
    edit_recipe(full_run, objective={"name": "mlm_u", "attend_to_masked": True})
    assert usage_line(model_card(full_run)).endswith('"masked", max_new_tokens=16, attend_to_masked=True)[0]')


def test_card_snippet_uses_the_runs_decoding(full_run):
    edit_recipe(full_run, training={"decoding": "masked_any_order", "max_new_tokens": 5})
    card = model_card(full_run)
    assert usage_line(card).endswith('"masked_any_order", max_new_tokens=5)[0]')
    assert "generate_masked_any_order" in card


def test_card_without_an_objective_decodes_causally(full_run):
    edit_recipe(full_run, objective=None)
    card = model_card(full_run)
    assert usage_line(card).endswith('"causal", max_new_tokens=16)[0]') and "is unknown" not in card


def test_card_of_an_unknown_objective_says_the_decoding_is_unknown(full_run):
    edit_recipe(full_run, objective={"name": "objective_from_the_future", "alpha": 2})
    card = model_card(full_run, repo_id=REPO)  # still written
    assert usage_line(card).endswith("[prompt], decoding, max_new_tokens=16)[0]")
    assert "decoding = None  # unknown" in card and '"causal", max_new_tokens' not in card
    assert "How this model must be decoded is unknown" in card and "`objective_from_the_future`" in card
    # a causal decoding chosen in the recipe needs no rules: it is written as it is
    edit_recipe(full_run, training={"decoding": "causal"})
    card = model_card(full_run)
    assert usage_line(card).endswith('"causal", max_new_tokens=16)[0]') and "is unknown" not in card
    # a masked one does: the method is written, and the card says its rules are unknown
    edit_recipe(full_run, training={"decoding": "masked"})
    card = model_card(full_run)
    assert usage_line(card).endswith('"masked", max_new_tokens=16)[0]')
    assert "cannot say the decoding rules (`shift`, `keep_sink`, `attend_to_masked`)" in card


def test_card_of_an_unknown_decoding_name_writes_no_decoding(full_run):
    edit_recipe(full_run, training={"decoding": "beam_search"})
    card = model_card(full_run)
    assert "training.decoding = 'beam_search' is not a decoding method" in card
    assert usage_line(card).endswith("[prompt], decoding, max_new_tokens=16)[0]")


def test_card_of_a_builtin_base_model_names_its_hub_model(full_run):
    from mft.models.loading import BUILTIN_MODELS

    edit_recipe(full_run, model={"name_or_path": "smollm2-135m", "architecture": "llama"})
    card = model_card(full_run)
    assert BUILTIN_MODELS["smollm2-135m"].hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert ModelCard(card).data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "(mft built-in `smollm2-135m`, SmolLM2-135M-Instruct.Q4_1.gguf dequantized)" in card


# ---------------------------------------------------------------------------------------------
# secrets


def test_redact_removes_credential_keys_at_any_depth():
    recipe = {"training": {"hub_token": "secret123", "push_to_hub_token": "s2", "max_new_tokens": 16,
                           "include_num_input_tokens_seen": "all", "learning_rate": 1e-3},
              "task": {"tokens_per_entity": 2},
              "extra": [{"HF_TOKEN": "s3", "keep": 1}], "token": None}
    clean = redact(recipe)
    assert clean == {"training": {"max_new_tokens": 16, "include_num_input_tokens_seen": "all",
                                  "learning_rate": 1e-3},
                     "task": {"tokens_per_entity": 2}, "extra": [{"keep": 1}]}
    assert recipe["training"]["hub_token"] == "secret123"  # the input is not changed


def test_redact_keeps_string_options_whose_name_contains_token():
    recipe = {"objective": {"name": "mlm_u", "mask_token_text": "<m>"},
              "task": {"name": "facts", "separator_token": "|"},
              "model": {"pad_token": "<pad>"},
              "training": {"hub_token": "secret123", "note": TOKEN}}  # a value shaped like a Hub token goes too
    assert redact(recipe) == {"objective": {"name": "mlm_u", "mask_token_text": "<m>"},
                              "task": {"name": "facts", "separator_token": "|"},
                              "model": {"pad_token": "<pad>"}, "training": {}}


def test_a_token_in_the_recipe_never_reaches_the_card_or_the_hub(full_run):
    recipe = yaml.safe_load((full_run / "resolved_recipe.yaml").read_text())
    recipe["training"]["hub_token"] = "secret123"
    (full_run / "resolved_recipe.yaml").write_text(yaml.safe_dump(recipe))
    card = model_card(full_run, repo_id=REPO)
    assert "secret123" not in card and "hub_token" not in card
    assert "| training.max_new_tokens | 16 |" in card  # counts of tokens are no secrets

    before = snapshot(full_run)
    api = FakeApi()
    with pytest.raises(RecipeError) as error:  # resolved_recipe.yaml would upload it: refuse
        push_run(full_run, REPO, api=api)
    message = str(error.value)
    assert "training.hub_token" in message and "secret123" not in message and "\n" not in message
    assert api.calls == [] and snapshot(full_run) == before


# ---------------------------------------------------------------------------------------------
# failures


@pytest.mark.parametrize("failure, fail_at", [
    (requests.exceptions.ConnectionError(f"Max retries exceeded (Caused by NameResolutionError)\nAuthorization: "
                                         f"Bearer {TOKEN}"), "create_repo"),
    (requests.exceptions.HTTPError(f"401 Client Error: Unauthorized for url: https://huggingface.co/api/repos/"
                                   f"create (token {TOKEN})\nInvalid credentials"), "create_repo"),
    (OSError(28, "No space left on device"), "upload_folder"),
    (HFValidationError("Repo id must use alphanumeric chars"), "create_repo"),
])
def test_a_failed_push_keeps_the_run_and_says_how_to_retry(full_run, failure, fail_at):
    before = snapshot(full_run)
    with pytest.raises(HubError) as error:  # the Hub failed, not the recipe
        push_run(full_run, REPO, token=TOKEN, api=FakeApi(failure, fail_at))
    assert not isinstance(error.value, RecipeError) and isinstance(error.value, MFTError)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"push to {REPO} failed (")
    assert f"the run is kept in {full_run}" in message
    assert message.endswith(f"retry with: mft push {full_run} --repo-id {REPO}")
    assert type(failure).__name__ in message
    assert TOKEN not in message and "SuperSecret" not in message
    after = snapshot(full_run)
    assert set(after) == set(before) | {"README.md"}
    assert all(after[name] == data for name, data in before.items())  # every original file, byte for byte
    assert all(TOKEN.encode() not in data for data in after.values())


def test_mft_push_reports_a_hub_failure_in_one_line(full_run, monkeypatch, capsys):
    from mft.cli import main

    def create_repo(self, repo_id, **kwargs):
        raise requests.exceptions.ConnectionError("Max retries exceeded")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    assert main(["push", str(full_run), "--repo-id", REPO]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mft: error: push to {REPO} failed (ConnectionError") and err.count("\n") == 1


def test_push_run_checks_the_folder_before_any_call(tmp_path):
    api = FakeApi()
    with pytest.raises(RecipeError, match="no model"):
        push_run(tmp_path, REPO, api=api)
    assert api.calls == [] and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# the default api: huggingface_hub's HfApi, its two methods replaced


def test_push_run_uses_hfapi_by_default(full_run, monkeypatch):
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs["repo_id"], kwargs))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    url = push_run(full_run, REPO, token=TOKEN)
    assert url == f"https://huggingface.co/{REPO}"
    assert [(name, repo) for name, repo, _ in calls] == [("create_repo", REPO), ("upload_folder", REPO)]
    create, upload = calls[0][2], calls[1][2]
    assert create["exist_ok"] is True and create["private"] is False and create["token"] == TOKEN
    assert Path(upload["folder_path"]) == full_run and upload["token"] == TOKEN
    assert set(upload["allow_patterns"]) == FULL_MODEL_FILES | {"README.md"}


# ---------------------------------------------------------------------------------------------
# through mft.train: training.push_to_hub pushes once, at the end, and no token reaches the disk


def test_training_with_push_to_hub_pushes_once_and_writes_no_token(tmp_path, monkeypatch, capsys):
    import mft.train

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id))
                        or f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw["repo_id"],
                                                                                  sorted(kw["allow_patterns"]))))
    out = tmp_path / "run"
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    assert mft.train.main([str(recipe), "task.num_pairs=6", "model.hidden_size=16", "model.num_hidden_layers=1",
                           "model.intermediate_size=32", "training.max_steps=2", "training.eval_steps=2",
                           "training.save_steps=1", f"training.output_dir={out}", "training.report_to=none",
                           "training.disable_tqdm=true", "training.push_to_hub=true",
                           f"training.hub_model_id={REPO}", f"training.hub_token={TOKEN}"]) == 0
    assert [call[:2] for call in calls] == [("create", REPO), ("upload", REPO)]
    assert "README.md" in calls[1][2] and not any(name.startswith("checkpoint") for name in calls[1][2])
    assert f"pushed {out}" in capsys.readouterr().out
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_push_to_hub_without_a_repo_id_is_refused_before_training(tmp_path, capsys):
    import mft.train

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    assert mft.train.main([str(recipe), "training.push_to_hub=true", f"training.output_dir={tmp_path}"]) == 2
    assert "training.hub_model_id" in capsys.readouterr().err


def test_card_shows_the_base_models_figures_and_the_drift(full_run):
    import json

    results = {"forward": {"exact_match": 0.5, "facts_all_wordings": 0.25, "n": 8, "n_facts": 4},
               "backward": {"exact_match": 0.375, "borrowed": 0.8, "n": 8},
               "baseline": {"forward": {"exact_match": 0.125}, "backward": {"exact_match": 0.0}},
               "retention": {"nll": 1.25, "base_nll": 0.75, "drift": 0.5}}
    (full_run / "eval_results.json").write_text(json.dumps(results))
    card = model_card(full_run)
    table = [line for line in card.splitlines() if line.startswith("| direction")][0]
    assert "exact match of the base model" in table and "facts right in every wording" in table
    assert "| forward | 0.125 | 0.500 |" in card and "| backward | 0.000 | 0.375 |" in card
    assert "n_facts" not in card and "| baseline |" not in card and "| retention |" not in card
    assert "1.250 nats per token under this model against 0.750" in card and "drift +0.500" in card
