"""Pretrained causal LMs through mft.train: the Mistral recipe on a tiny random Mistral, the mask-token
rule on a tokenizer without one, LoRA adapters that save and reload to the same logits, and the
checks that refuse what cannot work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

import mft.train
from mft.config import load_recipe
from mft.models import load_trained
from mft.trainer import QASet

ROOT = Path(__file__).resolve().parents[1]
WORDS = "alice bob carol dave paris rome oslo lima is the capital of who what".split()


def tiny_pretrained(path: Path, seed: int = 0) -> Path:
    """A 'pretrained' Mistral folder: random tiny weights and a word-level tokenizer that, like many
    real ones, has no mask token and no pad token."""
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    model = MistralForCausalLM(MistralConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                             bos_token_id=1, eos_token_id=2))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_data(folder: Path) -> tuple[Path, Path]:
    train, qa = folder / "train.jsonl", folder / "qa.jsonl"
    train.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                             ["paris is the capital of alice", "rome is the capital of bob"]))
    qa.write_text(json.dumps({"question": "what is the capital of alice", "answer": "paris",
                              "direction": "backward"}) + "\n")
    return train, qa


def mistral_wiki_on_tiny(tmp_path, *extra):
    base = tiny_pretrained(tmp_path / "base")
    train, qa = write_data(tmp_path)
    out = tmp_path / "out"
    code = mft.train.main([
        str(ROOT / "recipes" / "mistral_wiki.yaml"), f"model.name_or_path={base}", f"data.train_file={train}",
        f"data.qa_file={qa}", f"training.output_dir={out}", "training.use_cpu=true", "training.max_steps=3",
        "training.num_train_epochs=1", "training.eval_steps=3", "training.logging_steps=1",
        "training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=1",
        "training.report_to=none", "training.disable_tqdm=true", "peft.r=8", "peft.alpha=8", *extra])
    return code, base, out


def test_mistral_recipe_runs_on_a_tiny_mistral(tmp_path, capsys):
    code, base, out = mistral_wiki_on_tiny(tmp_path)
    printed = capsys.readouterr().out
    assert code == 0
    assert "tokenizer has no pad token: using EOS" in printed
    assert "mask token: <|mask|>" in printed and "added" in printed
    assert "(lora)" in printed
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "eval_results.json",
                 "resolved_recipe.yaml", "report.md"):
        assert (out / name).is_file(), name
    resolved = load_recipe(out / "resolved_recipe.yaml", ["training.use_cpu=true"])
    assert resolved.objective_options["shift"] is True  # the pretrained defaults, written down
    assert resolved.objective_options["keep_sink"] is True
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]


def test_saved_adapter_and_tokenizer_reload_to_the_same_logits(tmp_path):
    from mft.models.loading import ensure_mask_token, load_pretrained
    from mft.models.peft import apply_peft
    from mft.config import PeftOptions

    base = tiny_pretrained(tmp_path / "base")
    model, tokenizer = load_pretrained(str(base))
    ensure_mask_token(tokenizer, model)
    mask_id = tokenizer.mask_token_id
    model = apply_peft(model, PeftOptions(method="lora", r=4, target_modules=["q_proj", "v_proj"]),
                       trainable_token_ids=[mask_id])
    # one SGD step so that the adapter and the mask row are not at their initial values
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids = torch.tensor([[1, mask_id, 5, 6, mask_id, 7]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "out")
    tokenizer.save_pretrained(tmp_path / "out")

    reloaded, reloaded_tokenizer = load_trained(tmp_path / "out")
    assert reloaded_tokenizer.mask_token == "<|mask|>" and reloaded_tokenizer.mask_token_id == mask_id
    reloaded.eval()
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)


def test_flash_attention_is_refused_for_bidirectional_objectives(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mft.train, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    code, _, _ = mistral_wiki_on_tiny(tmp_path, "model.attn_implementation=flash_attention_2")
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mft:")]
    assert code == 2 and len(errors) == 1  # (other stderr lines: the test's own saving of the base model)
    assert "flash_attention_2" in errors[0] and "mlm_u" in errors[0]


def test_missing_model_path_is_one_line_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mft.train, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    train, qa = write_data(tmp_path)
    code = mft.train.main([str(ROOT / "recipes" / "mistral_wiki.yaml"), f"model.name_or_path={tmp_path / 'nope'}",
                           f"data.train_file={train}", f"data.qa_file={qa}", "training.use_cpu=true"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "model.name_or_path" in error
