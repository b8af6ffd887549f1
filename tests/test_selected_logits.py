"""The LM head applied only at predicted positions gives the same loss and gradients as full logits."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from mft import MFTCollator, MFTConfig, MFTTrainer
from mft.data import FactsTask, TokenizedDataset, build_word_tokenizer, row_texts
from mft.objectives import build_objective
from mft.loss import keep_predicted_hidden_states, prompt_lengths

ROWS = FactsTask(num_people=12, qa_fraction=0.5, seed=0).build().train  # documents and prompt/completion rows
OBJECTIVES = {
    "ar": {},
    "ar_completion_only": {"predict_prompt": False},
    "mlm_u": {"weighting": "1/r"},
    "mlm_u_shift": {"shift": True},
    "masked_reconstruct": {},
    "masked_sft": {},
}


def make_trainer(tmp_path, objective, options, lora=False, full_logits=False, qa_only=False, gpt2=False, **args):
    name = "ar" if objective.startswith("ar") else "mlm_u" if objective.startswith("mlm_u") else objective
    tokenizer = build_word_tokenizer([t for row in ROWS for t in row_texts(row)] + ["recover the masked text"])
    torch.manual_seed(0)
    special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    if gpt2:  # absolute position embeddings: the positions must be passed right
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                             max_position_embeddings=128, **special))
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 init_lora_weights=False))
    rows = [row for row in ROWS if "prompt" in row] if name == "masked_sft" or qa_only else ROWS
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


def detached_prompt_keys_and_values(model, prompt: torch.Tensor) -> list:
    """Forward hooks making every layer's keys and values at the `prompt` positions ([B, L] bool)
    constants: the gradient `training.prompt_gradient: false` should give, computed in one full pass."""
    def detach_prompt(module, args, output):
        return torch.where(prompt[..., None], output.detach(), output)

    return [module.register_forward_hook(detach_prompt) for name, module in model.named_modules()
            if name.endswith(("self_attn.k_proj", "self_attn.v_proj"))]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("objective", ["masked_reconstruct", "masked_sft", "ar_completion_only"])
def test_prompt_without_gradient_keeps_the_loss_and_treats_the_prompt_as_constant(tmp_path, objective, lora):
    qa_only = objective == "ar_completion_only"  # documents have no prompt
    exact = make_trainer(tmp_path / "exact", objective, OBJECTIVES[objective], lora, qa_only=qa_only)
    cached = make_trainer(tmp_path / "cached", objective, OBJECTIVES[objective], lora, qa_only=qa_only,
                          prompt_gradient=False)
    batch = exact.data_collator([exact.train_dataset[i] for i in range(8)])
    prompts = prompt_lengths(batch["labels"], batch["attention_mask"])
    assert prompts.min() > 0 and len(set(prompts.tolist())) > 1  # rows of different prompt lengths
    prompt = torch.arange(batch["labels"].shape[1])[None] < prompts[:, None]

    exact_loss, exact_gradient = loss_and_gradient(exact, batch)
    handles = detached_prompt_keys_and_values(exact.model, prompt)
    reference_loss, reference_gradient = loss_and_gradient(exact, batch)
    for handle in handles:
        handle.remove()
    loss, gradient = loss_and_gradient(cached, batch)

    assert torch.allclose(loss, exact_loss, atol=1e-5), (loss, exact_loss)
    assert torch.allclose(reference_loss, exact_loss, atol=1e-6)
    assert torch.allclose(gradient, reference_gradient, atol=1e-5)
    assert not torch.allclose(gradient, exact_gradient, atol=1e-4)  # the prompt's share is really left out


def test_prompt_without_gradient_keeps_the_loss_of_a_gpt2_model(tmp_path):
    exact = make_trainer(tmp_path / "exact", "masked_reconstruct", {}, gpt2=True)
    cached = make_trainer(tmp_path / "cached", "masked_reconstruct", {}, gpt2=True, prompt_gradient=False)
    batch = exact.data_collator([exact.train_dataset[i] for i in range(8)])
    exact_loss, exact_gradient = loss_and_gradient(exact, batch)
    loss, gradient = loss_and_gradient(cached, batch)
    assert torch.allclose(loss, exact_loss, atol=1e-5), (loss, exact_loss)
    assert gradient.abs().max() > 1e-4 and not torch.allclose(gradient, exact_gradient, atol=1e-4)


def test_prompt_without_gradient_runs_the_backward_pass_on_the_rest_only(tmp_path):
    trainer = make_trainer(tmp_path, "masked_reconstruct", {}, prompt_gradient=False)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    prompts = prompt_lengths(batch["labels"], batch["attention_mask"])
    rests = batch["attention_mask"].sum(dim=1) - prompts
    lengths = []  # sequence length of each embedding output, and whether it joins the autograd graph
    embeddings = trainer.model.get_input_embeddings()
    handle = embeddings.register_forward_hook(
        lambda module, args, output: lengths.append((output.shape[1], torch.is_grad_enabled())))
    trainer.model.train()
    trainer.compute_loss(trainer.model, dict(batch))
    handle.remove()
    assert lengths == [(prompts.max().item(), False), (rests.max().item(), True)]
    assert rests.max() < batch["input_ids"].shape[1] / 2  # most of the row runs without a backward pass


def test_prompt_without_gradient_refuses_bidirectional_rows_and_checkpointing(tmp_path):
    trainer = make_trainer(tmp_path, "mlm_u", {}, prompt_gradient=False)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    trainer.model.train()
    with pytest.raises(ValueError, match="prompt_gradient"):
        trainer.compute_loss(trainer.model, dict(batch))
    with pytest.raises(ValueError, match="activation_checkpointing"):
        MFTConfig(output_dir=str(tmp_path), use_cpu=True, prompt_gradient=False, activation_checkpointing=True)
