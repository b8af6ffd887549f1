"""Packing: several examples per fixed-length row, each attending only inside itself, positions
restarting. The loss and gradients are those of the unpacked batch."""

from __future__ import annotations

import pytest
import torch

from mft import MFTCollator
from mft.config import RecipeError, load_recipe
from mft.objectives import build_objective
from mft.train import prepare

from test_selected_logits import make_trainer

CASES = {
    "ar": ("ar", {}),
    "ar_completion_only": ("ar", {"predict_prompt": False}),
    "mlm_u": ("mlm_u", {"weighting": "1/r"}),
    "mlm_u_shift_sink": ("mlm_u", {"shift": True, "keep_sink": True}),
    "mlm_u_prompt_blocked": ("mlm_u", {"shift": True, "keep_sink": True, "prompt_sees_answer": False}),
    "masked_reconstruct": ("masked_reconstruct", {}),
    "mixture": ("mixture", {"mix": {"ar": 0.5, "mlm_u": 0.5}}),
}
PACK = 96


def loss_and_gradient(trainer, batch):
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.requires_grad])


@pytest.mark.parametrize("case", CASES)
def test_packed_and_unpacked_batches_give_the_same_loss_and_gradients(tmp_path, case):
    name, options = CASES[case]
    trainer = make_trainer(tmp_path, name if name != "mixture" else "ar", options if name != "mixture" else {})
    objective = build_objective(name, **options)
    tokenizer = trainer.processing_class
    plain = MFTCollator(objective, tokenizer, seed=0)
    packed = MFTCollator(build_objective(name, **options), tokenizer, seed=0, pack_length=PACK)
    examples = [trainer.train_dataset[i] for i in range(12)]
    plain_batch, packed_batch = plain(examples), packed(examples)

    assert packed_batch["input_ids"].shape[0] < len(examples) and packed_batch["input_ids"].shape[1] == PACK
    assert (packed_batch["labels"] != -100).sum() == (plain_batch["labels"] != -100).sum()
    assert packed_batch["position_ids"][0, 0] == 0 and (packed_batch["position_ids"][0] == 0).sum() > 1  # restarts
    trainer.data_collator = plain
    plain_loss, plain_gradient = loss_and_gradient(trainer, plain_batch)
    trainer.data_collator = packed
    packed_loss, packed_gradient = loss_and_gradient(trainer, packed_batch)
    assert torch.allclose(packed_loss, plain_loss, atol=1e-5)
    assert torch.allclose(packed_gradient, plain_gradient, atol=1e-5)
    if name == "mixture":  # per-component losses are logged from per-token sources when packed
        assert trainer._component_names == ["ar", "mlm_u"]
        assert (trainer._component_losses[:, 1] > 0).all()  # both components' weights were summed


def test_packed_examples_do_not_see_each_other(tmp_path):
    """Changing one example changes no logits of the other examples in its packed row."""
    trainer = make_trainer(tmp_path, "mlm_u", {})
    collator = MFTCollator(build_objective("mlm_u"), trainer.processing_class, seed=0, pack_length=PACK)
    examples = [trainer.train_dataset[i] for i in range(4)]
    batch = collator(examples)
    segments_first = batch["position_ids"][0].tolist().index(0, 1)  # where the second example starts
    changed = batch["input_ids"].clone()
    changed[0, 1] = (changed[0, 1] + 1) % trainer.model.config.vocab_size
    trainer.model.eval()
    with torch.no_grad():
        mask = batch["attention_mask"]
        base = trainer.model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"]).logits
        other = trainer.model(input_ids=changed, attention_mask=mask, position_ids=batch["position_ids"]).logits
    assert (base[0, :segments_first] - other[0, :segments_first]).abs().max() > 1e-4  # its own example changes
    assert (base[0, segments_first:] - other[0, segments_first:]).abs().max() < 1e-6  # the others do not


def test_a_row_longer_than_pack_length_is_refused_before_training(tmp_path):
    recipe = load_recipe("recipes/quickstart.yaml", [f"training.output_dir={tmp_path}", "training.pack_length=4"])
    with pytest.raises(RecipeError, match="training.pack_length = 4 is shorter than the longest training row"):
        prepare(recipe)
