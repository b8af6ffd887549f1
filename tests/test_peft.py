"""What is trained: LoRA, QLoRA (4-bit NF4 on CPU through bitsandbytes), full fine-tuning, and the
paper's Mistral-7B LoRA recipe checked on the meta device (nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from mft.config import PeftOptions, RecipeError, load_recipe
from mft.models import count_parameters
from mft.models.peft import apply_peft, quantization_config

ROOT = Path(__file__).resolve().parents[1]
MISTRAL_7B = json.loads((ROOT / "tests" / "fixtures" / "mistral-7b-v0.1-config.json").read_text())


def tiny_llama(tie=False, seed=0, hidden_size=32):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=hidden_size, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        intermediate_size=2 * hidden_size, tie_word_embeddings=tie))


def mistral_wiki(tmp_path):
    for name in ("train.jsonl", "qa.jsonl"):
        (tmp_path / name).write_text(json.dumps({"text": "x"} if name == "train.jsonl" else
                                                {"question": "q", "answer": "a", "direction": "forward"}) + "\n")
    return load_recipe(ROOT / "recipes" / "mistral_wiki.yaml",
                       [f"data.train_file={tmp_path / 'train.jsonl'}", f"data.qa_file={tmp_path / 'qa.jsonl'}",
                        "training.use_cpu=true"])  # bf16 on a machine without a GPU needs use_cpu


def test_mistral_wiki_recipe_trains_109m_lora_parameters_on_mistral_7b(tmp_path):
    recipe = mistral_wiki(tmp_path)
    assert recipe.model.name_or_path == "mistralai/Mistral-7B-v0.1"
    assert (recipe.peft.method, recipe.peft.r, recipe.peft.alpha) == ("lora", 256, 256)
    args = recipe.training
    assert args.learning_rate == 1e-4 and args.weight_decay == 0.0 and args.bf16 and args.activation_checkpointing
    assert args.get_warmup_steps(10_000) == 100  # 1% warm-up
    with torch.device("meta"):
        model = MistralForCausalLM(MistralConfig(**MISTRAL_7B))
    assert count_parameters(model)[1] == 7_241_732_096  # Mistral-7B-v0.1
    model = apply_peft(model, recipe.peft)
    trainable, _ = count_parameters(model)
    # 32 layers x r x ((4096 + 4096) for q_proj + (4096 + 1024) for v_proj)
    assert trainable == 32 * 256 * (8192 + 5120) == 109_051_904


def test_lora_trains_only_the_adapters_and_modules_to_save():
    model = apply_peft(tiny_llama(), PeftOptions(method="lora", r=4, alpha=8, target_modules=["q_proj", "v_proj"],
                                                 modules_to_save=["lm_head"]))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "lm_head" in name for name in trainable)
    lora = sum(p.numel() for name, p in model.named_parameters() if p.requires_grad and "lora_" in name)
    # per layer: q 4 x (32 + 32), v 4 x (32 + 16) (2 kv heads of 8)
    assert lora == 2 * 4 * ((32 + 32) + (32 + 16))
    head = sum(p.numel() for name, p in model.named_parameters() if p.requires_grad and "lm_head" in name)
    assert head == 64 * 32


def test_full_finetuning_trains_everything():
    model = apply_peft(tiny_llama(), PeftOptions(method="full"))
    trainable, total = count_parameters(model)
    assert trainable == total


def test_trainable_token_rows_learn_under_lora():
    """The mask token added to a vocabulary must be learnt even though the embeddings are frozen."""
    model = apply_peft(tiny_llama(), PeftOptions(method="lora", r=4, target_modules=["q_proj", "v_proj"]),
                       trainable_token_ids=[63])
    before = model.get_input_embeddings()(torch.arange(64)).detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    ids = torch.tensor([[1, 63, 5, 63, 7]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    after = model.get_input_embeddings()(torch.arange(64)).detach()
    changed = (after - before).abs().sum(-1) > 0
    assert changed[63] and changed.sum() == 1


def test_qlora_runs_on_cpu(tmp_path):
    tiny_llama(hidden_size=128).save_pretrained(tmp_path / "base")  # 4-bit blocks need >= 64 inputs
    options = PeftOptions(method="qlora", r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=quantization_config(options),
                                                 device_map="cpu")
    import bitsandbytes as bnb

    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    model = apply_peft(model, options)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for name, p in model.named_parameters() if "lora_B" in name]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(not p.requires_grad for name, p in model.named_parameters() if "lora_" not in name)


def test_qlora_without_bitsandbytes_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(RecipeError, match=r"peft.method = qlora needs bitsandbytes"):
        PeftOptions(method="qlora")


def test_qlora_on_a_from_scratch_model_is_refused_before_building(tmp_path, capsys, monkeypatch):
    import mft.train

    monkeypatch.setattr(mft.train, "load_model", lambda *a, **k: pytest.fail("a model was built"))
    code = mft.train.main([str(ROOT / "recipes" / "quickstart.yaml"), "peft.method=qlora",
                           f"training.output_dir={tmp_path}"])
    assert code == 2 and "peft.method = qlora" in capsys.readouterr().err


@pytest.mark.parametrize("objective", ["mlm_u_shift", "ar"])
def test_gradient_checkpointing_with_lora_keeps_loss_and_updates(tmp_path, objective):
    """Gradient checkpointing + LoRA + a bidirectional 4D mask (mlm_u) or causal rows (ar): two SGD
    steps give the same losses and the same adapter weights as without checkpointing (and the
    adapters do move: frozen embeddings must not cut the gradient at the checkpoint boundary)."""
    from test_selected_logits import OBJECTIVES, make_trainer

    runs = {}
    for checkpointing in (False, True):
        trainer = make_trainer(tmp_path / str(checkpointing), objective, OBJECTIVES[objective], lora=True,
                               max_steps=2, optim="sgd", learning_rate=0.5, logging_steps=1,
                               activation_checkpointing=checkpointing)
        before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters() if p.requires_grad])
        trainer.train()
        after = torch.cat([p.detach().flatten() for p in trainer.model.parameters() if p.requires_grad])
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        runs[checkpointing] = (losses, after - before)
    (plain_losses, plain_update), (checkpointed_losses, checkpointed_update) = runs[False], runs[True]
    assert plain_update.abs().max() > 1e-4
    assert checkpointed_losses == pytest.approx(plain_losses, abs=1e-6)
    assert torch.allclose(checkpointed_update, plain_update, atol=1e-6)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bf16_autocast_with_bidirectional_masks_and_lora(tmp_path, attn):
    """training.bf16 on CPU (autocast) under a 4D bidirectional mask: the loss stays finite and close
    to the fp32 loss of the same batch (the eager mask's minimum is taken in the compute dtype)."""
    from test_selected_logits import make_trainer

    losses = {}
    for bf16 in (False, True):
        trainer = make_trainer(tmp_path / str(bf16), "mlm_u", {}, lora=True, max_steps=2, logging_steps=1, bf16=bf16)
        trainer.model.config._attn_implementation = attn
        trainer._attn_implementation = attn
        trainer.train()
        losses[bf16] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert all(torch.isfinite(torch.tensor(losses[True])))
    assert losses[True] == pytest.approx(losses[False], abs=0.05)
