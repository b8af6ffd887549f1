"""What is trained: full fine-tuning, LoRA, or QLoRA, through PEFT and bitsandbytes.

QLoRA is decided at load time (the base weights are quantized to 4-bit NF4 as they load), so
`quantization_config` is asked for before loading and `apply_peft` wraps the loaded model.
"""

from __future__ import annotations

import torch

from ..config import PeftOptions


def quantization_config(options: PeftOptions, compute_dtype: torch.dtype = torch.float32):
    """The bitsandbytes config for QLoRA (NF4 weights, double quantization), else None."""
    if options.method != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def apply_peft(model, options: PeftOptions, *, trainable_token_ids: list[int] | None = None,
               activation_checkpointing: bool = False):
    """Wrap `model` for the chosen method. `trainable_token_ids` are embedding rows trained in full
    even under (Q)LoRA — the mask token when it was added to the vocabulary, whose row would
    otherwise stay at its initial value."""
    if options.method == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if options.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=activation_checkpointing)
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        modules_to_save=options.modules_to_save,
        trainable_token_indices=list(trainable_token_ids) if trainable_token_ids else None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
