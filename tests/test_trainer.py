"""MFTTrainer keeps the Trainer machinery working: loss normalisation under gradient accumulation,
checkpoints and resume, logging/report_to, seeds, evaluation during training, DataLoader workers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from mft import MFTCollator, MFTConfig, MFTTrainer, QASet
from mft.data import RetrievalTask, TokenizedDataset, build_word_tokenizer, row_texts
from mft.models import to_model_mask
from mft.objectives import IGNORE, MLMU, build_objective

TASK = RetrievalTask(num_pairs=8, tokens_per_entity=2, query_fraction=0.5, seed=3)


def tiny_setup(objective="mlm_u", seed=0, **objective_options):
    data = TASK.build()
    tokenizer = build_word_tokenizer([t for row in data.train + data.qa for t in row_texts(row)])
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=32, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    collator = MFTCollator(build_objective(objective, **objective_options), tokenizer, seed=seed)
    dataset = TokenizedDataset.from_rows(tokenizer, data.train)
    return tokenizer, model, collator, dataset, QASet(data.qa)


def make_trainer(tmp_path, objective="mlm_u", seed=0, objective_options=None, **args):
    tokenizer, model, collator, dataset, qa = tiny_setup(objective, seed, **(objective_options or {}))
    defaults = dict(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
                    logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=seed,
                    disable_tqdm=True)
    defaults.update(args)
    eval_dataset = qa if defaults.get("eval_strategy", "no") != "no" else None
    return MFTTrainer(model=model, args=MFTConfig(**defaults), train_dataset=dataset, eval_dataset=eval_dataset,
                      data_collator=collator, processing_class=tokenizer)


class StopAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def parameters(trainer):
    return torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])


def manual_step_loss(model, batch):
    """The documented loss, written out: sum_i w_i CE_i / sum_i w_i over the whole batch."""
    mask = to_model_mask(batch["attention_mask"], "sdpa", torch.float32)
    logits = model(input_ids=batch["input_ids"], attention_mask=mask).logits
    labels, weights = batch["labels"], batch["loss_weights"]
    selected = labels != IGNORE
    token_loss = F.cross_entropy(logits[selected], labels[selected], reduction="none")
    return (token_loss * weights[selected]).sum() / weights.sum()


def test_compute_loss_is_the_weighted_mean(tmp_path):
    trainer = make_trainer(tmp_path, objective_options={"weighting": "1/r"})
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    assert len(set(batch["loss_weights"][batch["loss_weights"] > 0].tolist())) > 1  # really unequal weights
    expected = manual_step_loss(trainer.model, {k: v.clone() for k, v in batch.items()})
    got = trainer.compute_loss(trainer.model, dict(batch))
    assert torch.allclose(got, expected, atol=1e-6)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """One SGD step on 8 examples: batch 8, 4 x 2 and 2 x 4 micro-batches give the same update, and
    that update is the gradient of the documented loss. SGD, because Adam's first step only sees
    the gradient's sign and would hide a normalisation error."""
    common = dict(max_steps=1, optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", max_grad_norm=0.0)
    results = {}
    for batch_size, accumulation in [(8, 1), (4, 2), (2, 4)]:
        trainer = make_trainer(tmp_path / f"b{batch_size}", objective_options={"weighting": "1/r"},
                               per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                               **common)
        before = parameters(trainer)
        trainer.train()
        results[batch_size] = (parameters(trainer) - before, trainer.state.log_history[0]["loss"])

    reference_update, reference_loss = results[8]
    assert reference_update.abs().max() > 1e-4
    for batch_size in (4, 2):
        update, loss = results[batch_size]
        assert torch.allclose(update, reference_update, atol=1e-6), batch_size
        assert abs(loss - reference_loss) < 1e-5, (batch_size, loss, reference_loss)

    # ... and it is exactly minus the gradient of the weighted mean over the 8 examples.
    trainer = make_trainer(tmp_path / "manual", objective_options={"weighting": "1/r"},
                           per_device_train_batch_size=8, **common)
    examples = [trainer.train_dataset[i] for i in next(iter(trainer.get_train_dataloader().batch_sampler))]
    batch = trainer.data_collator(examples)
    loss = manual_step_loss(trainer.model, batch)
    loss.backward()
    gradient = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
    assert torch.allclose(-gradient, reference_update, atol=1e-6)
    assert abs(loss.item() - reference_loss) < 1e-5


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    """Stop after a checkpoint, resume: same final weights and same losses after the checkpoint,
    including the epoch change (16 examples / batch 4 = 4 steps per epoch) and the mask draws."""
    args = dict(max_steps=6, save_strategy="steps", save_steps=3, per_device_train_batch_size=4)
    full = make_trainer(tmp_path / "full", **args)
    full.train()
    full_losses = [e["loss"] for e in full.state.log_history if "loss" in e]

    first = make_trainer(tmp_path / "resumed", **args)
    first.add_callback(StopAfter(3))  # stop where the checkpoint is, as a killed run would
    first.train()
    assert first.state.global_step == 3
    resumed = make_trainer(tmp_path / "resumed", seed=0, **args)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    resumed_losses = [e["loss"] for e in resumed.state.log_history if "loss" in e]

    assert len(resumed_losses) == 6
    assert resumed_losses[3:] == full_losses[3:]
    assert torch.allclose(parameters(resumed), parameters(full), atol=1e-6)


def test_seed_reproduces_and_differs(tmp_path):
    runs = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        trainer = make_trainer(tmp_path / name, seed=seed)
        trainer.train()
        runs[name] = parameters(trainer)
    assert torch.equal(runs["a"], runs["b"])
    assert not torch.allclose(runs["a"][: runs["c"].numel()], runs["c"], atol=1e-3)


def test_dataloader_workers_give_the_same_training(tmp_path):
    plain = make_trainer(tmp_path / "w0", dataloader_num_workers=0)
    plain.train()
    workers = make_trainer(tmp_path / "w2", dataloader_num_workers=2)
    workers.train()
    assert torch.allclose(parameters(plain), parameters(workers), atol=1e-6)


def test_masks_change_between_epochs(tmp_path):
    trainer = make_trainer(tmp_path)
    dataset, collator = trainer.train_dataset, trainer.data_collator
    dataset.set_epoch(0)
    first = collator([dataset[i] for i in range(8)])["input_ids"]
    again = collator([dataset[i] for i in range(8)])["input_ids"]
    dataset.set_epoch(1)
    later = collator([dataset[i] for i in range(8)])["input_ids"]
    assert torch.equal(first, again)
    assert not torch.equal(first, later)


def test_logging_eval_and_tensorboard(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2, report_to="tensorboard",
                           logging_steps=1)
    trainer.train()
    history = trainer.state.log_history
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3, 4]
    eval_steps = [e["step"] for e in history if "eval_forward_exact_match" in e]
    assert eval_steps == [2, 4]
    for entry in history:
        for key in ("eval_forward_exact_match", "eval_backward_exact_match"):
            if key in entry:
                assert 0.0 <= entry[key] <= 1.0
    events = list(tmp_path.rglob("events.out.tfevents*"))
    assert events and events[0].stat().st_size > 0


def test_default_decoding_follows_the_objective(tmp_path):
    assert make_trainer(tmp_path / "a", objective="ar").decoding == "causal"
    assert make_trainer(tmp_path / "m", objective="mlm_u").decoding == "masked"
    assert make_trainer(tmp_path / "o", objective="ar", decoding="masked").decoding == "masked"


def test_mlmu_objective_is_the_collators():
    tokenizer, model, collator, dataset, qa = tiny_setup()
    assert isinstance(collator.objective, MLMU)


def test_attention_annealing_goes_from_causal_to_bidirectional(tmp_path):
    from mft.models.attention import anneal_to_bidirectional

    trainer = make_trainer(tmp_path, attention_anneal_steps=10, per_device_train_batch_size=8)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    full = batch["attention_mask"]
    future = torch.ones(full.shape[-1], full.shape[-1], dtype=torch.bool).triu(1)
    assert (full & future).any()
    seen = {}

    def capture(**inputs):
        seen["mask"] = inputs["attention_mask"]
        return original(**inputs)

    original = trainer.model.forward
    trainer.model.forward = capture
    trainer.model.train()
    for step, expected_fraction in [(0, 0.0), (5, 0.5), (10, 1.0)]:
        trainer.state.global_step = step
        trainer.compute_loss(trainer.model, {k: v.clone() for k, v in batch.items()})
        mask = seen["mask"]
        kept = (mask & future).sum().item() / (full & future).sum().item()
        assert abs(kept - expected_fraction) < 0.1, (step, kept)
        assert torch.equal(mask & ~future, full & ~future)  # the past, padding and hidden keys unchanged
        assert not (mask & ~full).any()  # annealing only removes permissions
    assert torch.equal(anneal_to_bidirectional(full, 1.0, seed=0), full)
