"""Models: building from scratch or loading, and attention masks for bidirectional objectives."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..config import ModelConfig, RecipeError
from .attention import attention_implementation, attention_mask_4d, to_model_mask


def build_model(config: ModelConfig, tokenizer):
    """A causal LM: loaded from `config.name_or_path`, or built from scratch with random weights
    (`config.architecture` and sizes, vocabulary = the tokenizer's)."""
    if config.name_or_path:
        return AutoModelForCausalLM.from_pretrained(config.name_or_path, attn_implementation=config.attn_implementation)
    model_config = AutoConfig.for_model(
        config.architecture,
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads or config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=config.rope_theta,
        attention_dropout=config.attention_dropout,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(model_config, attn_implementation=config.attn_implementation)


def load_tokenizer(config: ModelConfig):
    if not config.name_or_path:
        raise RecipeError("model.name_or_path is empty: a from-scratch model takes its tokenizer from the task")
    tokenizer = AutoTokenizer.from_pretrained(config.name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


__all__ = ["attention_implementation", "attention_mask_4d", "build_model", "count_parameters", "load_tokenizer", "to_model_mask"]
