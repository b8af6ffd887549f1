"""The LM head applied only at predicted positions gives the same loss and gradients as full logits."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from mft import MFTCollator, MFTConfig, MFTTrainer
from mft.data import FactsTask, TokenizedDataset, build_word_tokenizer, row_texts
from mft.objectives import build_objective
from mft.trainer import keep_predicted_hidden_states

ROWS = FactsTask(num_people=12, qa_fraction=0.5, seed=0).build().train  # documents and prompt/completion rows
OBJECTIVES = {
    "ar": {},
    "ar_completion_only": {"predict_prompt": False},
    "mlm_u": {"weighting": "1/r"},
    "mlm_u_shift": {"shift": True},
    "masked_reconstruct": {},
    "masked_sft": {},
}


def make_trainer(tmp_path, objective, options, lora=False, full_logits=False, **args):
    name = "ar" if objective.startswith("ar") else "mlm_u" if objective.startswith("mlm_u") else objective
    tokenizer = build_word_tokenizer([t for row in ROWS for t in row_texts(row)] + ["recover the masked text"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id))
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 init_lora_weights=False))
    rows = [row for row in ROWS if "prompt" in row] if name == "masked_sft" else ROWS
    collator = MFTCollator(build_objective(name, **options), tokenizer, seed=0)
    settings = dict(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, report_to="none",
                    use_cpu=True, seed=0, disable_tqdm=True, save_strategy="no", full_logits=full_logits)
    settings.update(args)
    return MFTTrainer(model=model, args=MFTConfig(**settings), train_dataset=TokenizedDataset.from_rows(tokenizer, rows),
                      data_collator=collator, processing_class=tokenizer)


def loss_and_gradient(trainer, batch):
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    gradient = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.requires_grad])
    return loss.detach(), gradient


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_selected_positions_give_the_full_logits_loss_and_gradients(tmp_path, objective, lora):
    full = make_trainer(tmp_path / "full", objective, OBJECTIVES[objective], lora, full_logits=True)
    selected = make_trainer(tmp_path / "selected", objective, OBJECTIVES[objective], lora)
    chunked = make_trainer(tmp_path / "chunked", objective, OBJECTIVES[objective], lora, logits_chunk_size=3)
    batch = full.data_collator([full.train_dataset[i] for i in range(8)])
    predicted = (batch["labels"] != -100).sum().item()
    assert 3 < predicted < batch["labels"].numel()  # some positions predicted, not all, several chunks

    reference_loss, reference_gradient = loss_and_gradient(full, batch)
    assert reference_gradient.abs().max() > 1e-4
    for trainer in (selected, chunked):
        loss, gradient = loss_and_gradient(trainer, batch)
        assert torch.allclose(loss, reference_loss, atol=1e-5), (loss, reference_loss)
        assert torch.allclose(gradient, reference_gradient, atol=1e-5)


def test_selected_path_never_builds_full_logits(tmp_path):
    """The LM head sees only the predicted positions (and, during the model's own forward, none)."""
    trainer = make_trainer(tmp_path, "mlm_u", {})
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    shapes = []
    head = trainer.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda module, args, output: shapes.append(tuple(output.shape)))
    trainer.model.train()
    trainer.compute_loss(trainer.model, dict(batch))
    handle.remove()
    vocabulary = head.out_features
    predicted = (batch["labels"] != -100).sum().item()
    assert shapes == [(8, 0, vocabulary), (predicted, vocabulary)]


def test_gradient_accumulation_with_selected_positions(tmp_path):
    """One SGD step: 4 x 2 micro-batches on the selected path = one batch of 8 on the full path."""
    common = dict(optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", max_grad_norm=0.0)
    updates = []
    for name, args in [("full", dict(full_logits=True)),
                       ("accumulated", dict(per_device_train_batch_size=4, gradient_accumulation_steps=2))]:
        trainer = make_trainer(tmp_path / name, "mlm_u", {"weighting": "1/r"}, lora=True, **common, **args)
        before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
        trainer.train()
        updates.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]) - before)
    assert updates[0].abs().max() > 1e-4
    assert torch.allclose(updates[0], updates[1], atol=1e-5)


def test_a_model_that_skips_its_head_is_refused():
    head = torch.nn.Linear(4, 5)
    with pytest.raises(RuntimeError, match="full_logits"):
        with keep_predicted_hidden_states(head, torch.ones(1, 2, dtype=torch.bool)):
            pass
