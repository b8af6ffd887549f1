"""Models: building from scratch or loading, and attention masks for bidirectional objectives."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from ..config import ModelConfig
from ..errors import RecipeError
from .attention import attention_implementation, attention_mask_4d, to_model_mask
from .encoder_decoder import EncoderDecoderConfig, EncoderDecoderForMaskedPrediction


def build_model(config: ModelConfig, tokenizer):
    """A model loaded from `config.name_or_path`, or built from scratch with random weights
    (`config.architecture` and sizes, vocabulary = the tokenizer's)."""
    if config.name_or_path:
        return AutoModelForCausalLM.from_pretrained(config.name_or_path, attn_implementation=config.attn_implementation)
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    if config.architecture == "encoder_decoder":
        return EncoderDecoderForMaskedPrediction(EncoderDecoderConfig(
            vocab_size=len(tokenizer), hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
            max_position_embeddings=config.max_position_embeddings, rope_theta=config.rope_theta,
            cross_attention=config.cross_attention, attention_sink=config.attention_sink,
            dropout=config.attention_dropout, **ids))
    if config.architecture == "gpt2":  # GPT-2 names its sizes differently
        sizes = {"n_embd": config.hidden_size, "n_layer": config.num_hidden_layers, "n_head": config.num_attention_heads,
                 "n_inner": config.intermediate_size, "n_positions": config.max_position_embeddings,
                 "attn_pdrop": config.attention_dropout, "resid_pdrop": 0.0, "embd_pdrop": 0.0}
    else:
        sizes = {"hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
                 "num_attention_heads": config.num_attention_heads, "intermediate_size": config.intermediate_size,
                 "max_position_embeddings": config.max_position_embeddings}
        if config.architecture == "bert":
            sizes.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=config.attention_dropout)
        else:
            sizes.update(num_key_value_heads=config.num_key_value_heads or config.num_attention_heads,
                         rope_theta=config.rope_theta, attention_dropout=config.attention_dropout)
    model_config = AutoConfig.for_model(config.architecture, vocab_size=len(tokenizer), tie_word_embeddings=False,
                                        **sizes, **ids)
    return auto_model_class(model_config).from_config(model_config, attn_implementation=config.attn_implementation)


def auto_model_class(config):
    """BERT is a masked LM (its causal-LM class is a different model); everything else loads as a
    causal LM (the encoder-decoder model is registered under that class too)."""
    return AutoModelForMaskedLM if config.model_type == "bert" else AutoModelForCausalLM


def load_tokenizer(config: ModelConfig):
    """The pretrained model's tokenizer, from the same source `load_pretrained` resolves."""
    from .loading import hub_options, resolve_model_source

    if not config.name_or_path:
        raise RecipeError("model.name_or_path is empty: a from-scratch model takes its tokenizer from the task")
    source, gguf_file = resolve_model_source(config.name_or_path, config.gguf_file)
    kwargs = {"trust_remote_code": config.trust_remote_code, **hub_options(source)}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except OSError:
        raise RecipeError(f"model.name_or_path = {config.name_or_path}: not found locally and the Hub is "
                          f"unreachable; download it first or give a local path") from None
    if config.system_prompt is not None:
        set_system_prompt(tokenizer, config.system_prompt)
    return tokenizer


def set_system_prompt(tokenizer, system_prompt: str) -> None:
    """Make `system_prompt` the system message of every conversation that does not bring its own,
    by prefixing the tokenizer's chat template (so the saved tokenizer keeps the rule)."""
    from jinja2.exceptions import TemplateError

    if not getattr(tokenizer, "chat_template", None) or not isinstance(tokenizer.chat_template, str):
        raise RecipeError("model.system_prompt is set but the tokenizer has no (single) chat template; "
                          "remove model.system_prompt")
    # A top-level Jinja `set` rebinds `messages` for the rest of the template; json.dumps gives a
    # string literal that Jinja reads back unchanged.
    prefix = ("{%- if not messages or messages[0]['role'] != 'system' %}{%- set messages = "
              f"[{{'role': 'system', 'content': {json.dumps(system_prompt)}}}] + messages %}}{{%- endif %}}")
    tokenizer.chat_template = prefix + tokenizer.chat_template
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "a"}], tokenize=False, add_generation_prompt=True)
    except TemplateError as error:
        raise RecipeError(f"model.system_prompt: this chat template refuses a system message ({error}); "
                          f"remove model.system_prompt") from None


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; under DeepSpeed ZeRO-3, whose parameters are partitioned
    (empty on every rank), their full sizes."""
    def size(p) -> int:
        return getattr(p, "ds_numel", None) or p.numel()

    total = sum(size(p) for p in model.parameters())
    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    return trainable, total


__all__ = ["attention_implementation", "attention_mask_4d", "build_model", "count_parameters", "load_tokenizer",
           "load_trained", "set_system_prompt", "to_model_mask"]


def load_trained(output_dir: str | Path, *, dtype: str = "auto"):
    """(model, tokenizer) of a finished run: a full model folder, or an adapter folder whose base is
    loaded from `base_model_name_or_path` and given the run's vocabulary (a mask token added during
    training) before the adapter is applied."""
    output_dir = Path(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    adapter_config = output_dir / "adapter_config.json"
    if not adapter_config.is_file():
        config = AutoConfig.from_pretrained(output_dir)
        return auto_model_class(config).from_pretrained(output_dir, dtype=dtype), tokenizer
    from peft import PeftModel

    from .loading import load_pretrained

    base_name = json.loads(adapter_config.read_text())["base_model_name_or_path"]
    base, _ = load_pretrained(base_name, dtype=dtype)
    if base.get_input_embeddings().weight.shape[0] < len(tokenizer):
        base.resize_token_embeddings(len(tokenizer))  # the rows trained with the adapter are restored by it
    return PeftModel.from_pretrained(base, output_dir), tokenizer
