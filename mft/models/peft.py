"""What is trained: full fine-tuning, LoRA, or QLoRA, through PEFT and bitsandbytes.

QLoRA is decided at load time (the base weights are quantized to 4-bit NF4 as they load), so
`quantization_config` is asked for before loading and `apply_peft` wraps the loaded model.
"""

from __future__ import annotations

import difflib

import torch

from ..config import PeftOptions
from ..errors import RecipeError


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

    check_target_modules(model, options.target_modules)

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


def check_target_modules(model, target_modules: list[str] | str) -> None:
    """Every name in `peft.target_modules` (a list) must name modules of the model (the last part
    of their dotted names, as PEFT matches them); else a `RecipeError` suggesting the closest ones."""
    if isinstance(target_modules, str):
        return  # "all-linear", or a regular expression that PEFT matches itself
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear)})
    for target in target_modules:
        if target not in names:
            close = difflib.get_close_matches(target, linear, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise RecipeError(f"peft.target_modules: the model has no module named {target!r}; {hint}its linear "
                              f"layers are {', '.join(linear)} (or use all-linear)")
