"""The paper's encoder-decoder MLM-U model, PLM, and the GPT-2 / BERT baselines."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM

from mft.config import RecipeError, load_recipe, validate_recipe
from mft.data import build_word_tokenizer, encode_row
from mft.models.attention import attention_mask_4d
from mft.models import encoder_decoder
from mft.models.encoder_decoder import EncoderDecoderConfig, EncoderDecoderForMaskedPrediction
from mft.objectives import PLM, SpecialTokens
from mft.train import run


def tiny_model(cross_attention="last", seed=0, attention_sink=False):
    torch.manual_seed(seed)
    config = EncoderDecoderConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, cross_attention=cross_attention, attention_sink=attention_sink)
    return EncoderDecoderForMaskedPrediction(config).eval()


@pytest.mark.parametrize("cross_attention,attention_sink", [("last", False), ("corresponding", False), ("corresponding", True)])
def test_no_prediction_reads_a_hidden_token(cross_attention, attention_sink):
    model = tiny_model(cross_attention, attention_sink=attention_sink)
    ids = torch.randint(4, 40, (3, 9))
    hidden = torch.rand(3, 9) < 0.4
    hidden[:, 0] = False
    mask = attention_mask_4d(torch.ones(3, 9, dtype=torch.bool), torch.zeros(3, dtype=torch.bool), hidden)
    changed = torch.where(hidden, torch.randint(4, 40, (3, 9)), ids)
    with torch.no_grad():
        assert torch.allclose(model(ids, attention_mask=mask).logits, model(changed, attention_mask=mask).logits, atol=1e-5)
        # ...while a visible token does change the predictions at the hidden positions
        visible_changed = ids.clone()
        visible_changed[:, 0] = (ids[:, 0] + 1 - 4) % 36 + 4
        assert not torch.allclose(model(ids, attention_mask=mask).logits[hidden],
                                  model(visible_changed, attention_mask=mask).logits[hidden], atol=1e-5)


def test_causal_mode_sees_only_the_past_and_handles_left_padding():
    model = tiny_model()
    ids = torch.randint(4, 40, (2, 8))
    later = ids.clone()
    later[:, 5:] = 3
    with torch.no_grad():
        assert torch.allclose(model(ids).logits[:, :5], model(later).logits[:, :5], atol=1e-5)
        padded = torch.cat([torch.zeros(2, 3, dtype=torch.long), ids], dim=1)
        attention = torch.cat([torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 8, dtype=torch.long)], dim=1)
        assert torch.allclose(model(padded, attention_mask=attention).logits[:, 3:], model(ids).logits, atol=1e-5)


def test_decoder_input_is_one_shared_vector_and_position_picks_the_token():
    """Two positions with the same visible keys differ only through RoPE positions."""
    model = tiny_model()
    assert model.query.shape == (32,)
    ids = torch.randint(4, 40, (1, 6))
    hidden = torch.tensor([[False, False, True, True, True, False]])
    mask = attention_mask_4d(torch.ones(1, 6, dtype=torch.bool), torch.zeros(1, dtype=torch.bool), hidden)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits[0]
    assert not torch.allclose(logits[2], logits[3], atol=1e-4)


def test_save_and_reload_through_the_auto_classes(tmp_path):
    model = tiny_model("corresponding")
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "mft_encoder_decoder"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is EncoderDecoderForMaskedPrediction
    ids = torch.randint(4, 40, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)


def test_attention_sink_is_one_more_key_without_a_position(tmp_path):
    """softmax over [q.k_sink, q.k_1, ..., q.k_L] / sqrt(d), values [v_sink, v_1, ..., v_L]."""
    model = tiny_model("corresponding", attention_sink=True)
    attention = model.encoder[0].attention
    with torch.no_grad():
        attention.sink_key.normal_()
        attention.sink_value.normal_()
    x = torch.randn(1, 5, 32)
    positions = torch.arange(5)[None]
    allowed = torch.rand(1, 1, 5, 5) < 0.6
    allowed[..., 0] = True
    keys_values = attention.keys_values(x, positions)
    with torch.no_grad():
        out = attention(x, positions, keys_values, allowed)
        q = encoder_decoder.rotate(attention._heads(attention.q_proj(x)), positions, attention.theta)
        k = torch.cat([attention.sink_key[None], keys_values[0]], dim=2)
        v = torch.cat([attention.sink_value[None], keys_values[1]], dim=2)
        scores = q @ k.transpose(-1, -2) / 8 ** 0.5
        scores = scores.masked_fill(~torch.cat([torch.ones(1, 1, 5, 1, dtype=torch.bool), allowed], dim=-1), float("-inf"))
        expected = attention.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 5, 32))
    assert torch.allclose(out, expected, atol=1e-5)
    # the sink is learned and saved: it changes the output and survives save/reload
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(4, 40, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
        attention.sink_value.zero_()
        attention.sink_key.fill_(10.0)
        assert not torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-4)


def test_corresponding_decoder_reads_the_encoder_blocks_keys_and_values():
    """`corresponding` reads the keys/values each encoder block computes from its input, so the last
    encoder block's MLP (which only shapes the encoder's final output) cannot change a prediction;
    `last` reads that final output."""
    ids = torch.randint(4, 40, (1, 6))
    hidden = torch.tensor([[False, True, False, False, True, False]])
    mask = attention_mask_4d(torch.ones(1, 6, dtype=torch.bool), torch.zeros(1, dtype=torch.bool), hidden)
    for mode, invariant in (("corresponding", True), ("last", False)):
        model = tiny_model(mode)
        assert hasattr(model.decoder[0].cross_attention, "k_proj") == (mode == "last")
        with torch.no_grad():
            before = model(ids, attention_mask=mask).logits
            model.encoder[-1].mlp.down_proj.weight.mul_(3.0)
            assert torch.allclose(before, model(ids, attention_mask=mask).logits, atol=1e-6) == invariant, mode


def test_config_refuses_impossible_shapes():
    with pytest.raises(ValueError, match="corresponding"):
        EncoderDecoderConfig(num_hidden_layers=4, num_decoder_layers=2, cross_attention="corresponding")
    with pytest.raises(ValueError, match="cross_attention"):
        EncoderDecoderConfig(cross_attention="first")


# -- PLM ------------------------------------------------------------------------------------------

def _plm(predict_prompt=True):
    tokenizer = build_word_tokenizer(["a b c d q"])
    objective = PLM(predict_prompt=predict_prompt)
    objective.setup(SpecialTokens.from_tokenizer(tokenizer), tokenizer)
    return objective, tokenizer


def test_plm_masks_follow_one_order():
    objective, tokenizer = _plm()
    example = encode_row(tokenizer, {"text": "a b c d"})  # <s> a b c d </s>
    (row,) = objective(example, torch.Generator().manual_seed(0))
    content, query = row.attention, row.query_attention
    assert torch.equal(query, content & ~torch.eye(len(row), dtype=torch.bool)), "query stream = content minus self"
    order = sorted(range(len(row)), key=lambda i: int(query[i].sum()))  # i's context size = its rank
    assert order[0] == 0, "BOS comes first in every order"
    for t, position in enumerate(order):
        assert set(torch.nonzero(query[position]).flatten().tolist()) == set(order[:t])
    assert row.labels[0] == -100 and (row.labels[1:] == row.input_ids[1:]).all()


def test_plm_predicts_every_token_from_every_subset_of_the_others():
    """Over draws, each target sees every subset of the other content tokens (plus BOS), with context
    sizes uniform, as PLM averages over all factorization orders."""
    objective, tokenizer = _plm()
    example = encode_row(tokenizer, {"text": "a b c"})  # <s> a b c </s>: content positions 1..4
    content = [1, 2, 3, 4]
    counts, sizes = Counter(), Counter()
    draws = 2000
    for seed in range(draws):
        (row,) = objective(example, torch.Generator().manual_seed(seed))
        for target in content:
            visible = frozenset(torch.nonzero(row.query_attention[target]).flatten().tolist()) - {0}
            counts[(target, visible)] += 1
            sizes[len(visible)] += 1
    expected = {(t, frozenset(s)) for t in content for k in range(4)
                for s in itertools.combinations([c for c in content if c != t], k)}
    assert set(counts) == expected
    for size in range(4):  # each context size in a quarter of the predictions
        assert abs(sizes[size] / (4 * draws) - 0.25) < 0.03


def test_plm_without_predict_prompt_puts_the_prompt_first():
    objective, tokenizer = _plm(predict_prompt=False)
    example = encode_row(tokenizer, {"prompt": "q a", "completion": "b c"})  # <s> q a b c </s>
    (row,) = objective(example, torch.Generator().manual_seed(3))
    assert (row.labels[:3] == -100).all() and (row.labels[3:] == row.input_ids[3:]).all()
    for target in (3, 4, 5):
        assert row.query_attention[target, :3].all(), "every completion token sees the whole prompt"


# -- through mft.train ----------------------------------------------------------------------------

def _recipe(tmp_path, objective, architecture="encoder_decoder", steps=200, training=None, **model):
    recipe = {
        "task": {"name": "retrieval", "num_pairs": 16, "tokens_per_entity": 2, "query_fraction": 0.5, "seed": 0},
        "model": {"architecture": architecture, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "intermediate_size": 64, "max_position_embeddings": 32, **model},
        "objective": objective,
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": steps, "per_device_train_batch_size": 16,
                     "learning_rate": 3.0e-3, "logging_steps": 10, "eval_strategy": "no", "save_strategy": "no",
                     "seed": 0, "use_cpu": True, "report_to": "none", "disable_tqdm": True, **(training or {})},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return load_recipe(path)


def _losses(output_dir):
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.parametrize("objective,architecture,model", [
    ({"name": "mlm_u"}, "encoder_decoder", {}),
    ({"name": "mlm_u"}, "encoder_decoder", {"attention_sink": True, "add_bos_token": False}),
    ({"name": "plm"}, "encoder_decoder", {}),
    ({"name": "ar"}, "encoder_decoder", {}),
    ({"name": "ar"}, "gpt2", {}),
    ({"name": "mlm", "rate": 0.4}, "bert", {}),
])
def test_trains_through_mft_and_answers(tmp_path, objective, architecture, model):
    recipe = _recipe(tmp_path, objective, architecture, **model)
    results = run(recipe)
    if model.get("attention_sink"):
        trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
        assert trained.config.attention_sink and trained.encoder[0].attention.sink_value.abs().sum() > 0
    losses = _losses(recipe.training.output_dir)
    assert losses[-1] < 0.85 * losses[0], losses
    assert {"forward", "backward"} <= results.keys()  # answered by the objective's decoding
    predictions = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert predictions and all(isinstance(p["prediction"], str) for p in predictions)


def test_attention_sink_is_refused_for_other_architectures(tmp_path):
    with pytest.raises(RecipeError, match="model.attention_sink applies to architecture encoder_decoder"):
        _recipe(tmp_path, {"name": "mlm_u"}, "llama", attention_sink=True)


@pytest.mark.parametrize("objective,architecture,match", [
    ({"name": "plm"}, "llama", "separate query stream"),
    ({"name": "mixture", "mix": {"plm": 0.5, "mlm_u": 0.5}}, "gpt2", "separate query stream"),
    ({"name": "ar"}, "bert", "bert attends to every token"),
    ({"name": "mlm_u", "shift": True}, "encoder_decoder", "shift"),
    ({"name": "plm", "pack": True}, "encoder_decoder", "cannot be packed"),
    ({"name": "mixture", "mix": {"ar": 0.5, "mlm_u": 0.5}}, "encoder_decoder", "cannot combine"),
])
def test_impossible_objective_and_model_pairs_are_refused(tmp_path, objective, architecture, match):
    """Refused while the recipe is read (`validate_recipe`), before any data or model exists."""
    objective = dict(objective)
    pack = objective.pop("pack", False)
    with pytest.raises(RecipeError, match=match):
        _recipe(tmp_path, objective, architecture, training={"pack_length": 32} if pack else {})


def test_a_saved_encoder_decoder_run_may_continue_with_plm(tmp_path):
    """The two-stream check reads a saved model's config.json (no network, no loading)."""
    saved = tmp_path / "saved"
    tiny_model().save_pretrained(saved)
    recipe = _recipe(tmp_path, {"name": "plm"})
    recipe.model.name_or_path = str(saved)
    validate_recipe(recipe)
    (saved / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(RecipeError, match="separate query stream"):
        validate_recipe(recipe)
