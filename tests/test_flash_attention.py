"""flash_attention_2 (issue 20): the masks it can express (causal rows; bidirectional rows in which
every visible token is a key, through the attention modules' causal flag; packed rows through the
variable-length path) and one-line refusals naming flex_attention for the rest. The kernel itself
needs a GPU (`benchmarks/gpu_check.sh`); here the rules and the flag switching."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mft import MFTCollator
from mft.config import load_recipe, validate_recipe
from mft.data import build_word_tokenizer
from mft.errors import RecipeError
from mft.models.attention import attention_mask_4d
from mft.objectives import build_objective

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = build_word_tokenizer([" ".join(f"w{i}" for i in range(30))])


def examples(lengths=(6, 9, 4)):
    return [{"input_ids": TOKENIZER(" ".join(f"w{i}" for i in range(n)))["input_ids"], "prompt_length": 0,
             "example_index": i, "epoch": 0} for i, n in enumerate(lengths)]


@pytest.mark.parametrize("overrides, message", [
    (["objective.name=mlm_u"], "attend_to_masked: false hides masked keys"),
    (["objective.name=mlm_u", "objective.attend_to_masked=true", "objective.shift=true", "objective.keep_sink=true"],
     "keep_sink: true keeps the first token causal"),
    (["objective.name=mlm_u", "objective.attend_to_masked=true", "objective.prompt_sees_answer=false"],
     "prompt_sees_answer: false"),
    (["objective.name=mlm_u", "objective.attend_to_masked=true", "training.attention_anneal_steps=10"],
     "cannot anneal attention"),
    (["objective.name=mixture", "objective.mix={ar: 0.5, mlm_u: 0.5}", "objective.options={mlm_u: {attend_to_masked: true}}"],
     "set objective.per: batch"),
])
def test_masks_flash_attention_cannot_express_are_refused_naming_flex(overrides, message):
    with pytest.raises(RecipeError, match=message) as refused:
        validate_recipe(load_recipe(ROOT / "recipes" / "quickstart.yaml",
                                    ["model.attn_implementation=flash_attention_2", *overrides]))
    assert "flex_attention" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("overrides", [
    ["objective.name=ar"], ["objective.name=masked_reconstruct"],
    ["objective.name=mlm_u", "objective.attend_to_masked=true"],
    ["objective.name=mlm_u", "objective.attend_to_masked=true", "training.pack_length=64"],
    ["objective.name=mixture", "objective.mix={ar: 0.5, mlm_u: 0.5}", "objective.per=batch",
     "objective.options={mlm_u: {attend_to_masked: true}}"],
])
def test_masks_flash_attention_can_express_pass(overrides):
    validate_recipe(load_recipe(ROOT / "recipes" / "quickstart.yaml",
                                ["model.attn_implementation=flash_attention_2", *overrides]))


def test_the_flash_collator_gives_a_padding_mask_and_the_causal_flag():
    causal = MFTCollator(build_objective("ar"), TOKENIZER, seed=0, attention="flash")(examples())
    assert causal["attention_mask"].dim() == 2 and "is_causal" not in causal
    bidirectional = MFTCollator(build_objective("mlm_u", attend_to_masked=True), TOKENIZER, seed=0,
                                attention="flash")(examples())
    assert bidirectional["attention_mask"].dim() == 2 and bidirectional["is_causal"] is False
    packed = MFTCollator(build_objective("mlm_u", attend_to_masked=True), TOKENIZER, seed=0, attention="flash",
                         pack_length=32)(examples())
    assert "attention_mask" not in packed and packed["is_causal"] is False
    assert (packed["position_ids"][0] == 0).sum() >= 3  # the documents restart their positions
    with pytest.raises(RecipeError, match="flex_attention"):
        MFTCollator(build_objective("mlm_u"), TOKENIZER, seed=0, attention="flash")(examples())
    # a mixture drawn per batch: one flag for the batch, and the per-component loss logs keep their sources
    mixture = build_objective("mixture", mix={"ar": 0.5, "mlm_u": 0.5}, per="batch",
                              options={"mlm_u": {"attend_to_masked": True}})
    for pack_length in (0, 32):
        batch = MFTCollator(mixture, TOKENIZER, seed=0, attention="flash", pack_length=pack_length)(examples())
        assert "source_ids" in batch and (batch["source_ids"] >= 0).any()


@torch.no_grad()
def test_the_causal_flag_reaches_every_attention_module():
    """is_causal=False without a mask is the bidirectional rule with every token a key: the same
    logits as the dense 4D mask of `attend_to_masked: true` rows (sdpa here; flash-attention takes
    the same flag)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(TOKENIZER), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)).eval()
    model.config._attn_implementation = "sdpa"
    batch = MFTCollator(build_objective("mlm_u", attend_to_masked=True), TOKENIZER, seed=0,
                        attention="flash")(examples((8, 8, 8)))
    assert batch["attention_mask"].all()  # no padding: the flag alone decides
    flagged = model(input_ids=batch["input_ids"], is_causal=batch["is_causal"]).logits
    dense = attention_mask_4d(torch.ones(3, batch["input_ids"].shape[1], dtype=torch.bool), torch.zeros(3, dtype=torch.bool))
    assert torch.allclose(flagged, model(input_ids=batch["input_ids"], attention_mask=dense).logits, atol=1e-5)
    causal = model(input_ids=batch["input_ids"]).logits
    assert not torch.allclose(flagged, causal, atol=1e-3)  # the flag changed the attention
