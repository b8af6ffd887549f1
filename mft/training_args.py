"""`MFTConfig`: the Trainer's arguments, i.e. `transformers.TrainingArguments` plus mft's options
(TRL's SFTConfig pattern). A recipe's `training:` section sets these fields.

This is the one module of the recipe layer that imports transformers (~4 s with peft and
bitsandbytes): `mft.config` checks a recipe against `training_field_table()`, cached per
transformers version, and builds an `MFTConfig` only once the recipe is known to be good.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Literal, get_type_hints

from transformers import TrainingArguments

from .checks import check_training, type_spec

__all__ = ["MFTConfig", "mft_option", "training_field_table"]


def _default_report_to() -> str:
    return "tensorboard" if importlib.util.find_spec("tensorboard") else "none"


@dataclass
class MFTConfig(TrainingArguments):
    """`TrainingArguments` with mft's defaults and evaluation options (TRL's SFTConfig pattern)."""

    decoding: Literal["causal", "masked", "masked_any_order"] | None = field(
        default=None,
        metadata={"help": "How answers are generated at evaluation: 'causal' (left-to-right with causal "
                          "attention), 'masked' (left-to-right masked decoding, bidirectional attention) or "
                          "'masked_any_order' (masked decoding, the most confident slot first). "
                          "Default: the objective's natural one."},
    )
    max_new_tokens: int = field(
        default=16, metadata={"help": "Longest answer generated at evaluation (also mft eval's and the model card's)."})
    attention_anneal_steps: int = field(
        default=0,
        metadata={"help": "Anneal bidirectional objectives from causal attention over the first N steps: at "
                          "step t each permission to attend to a later token is kept with probability t/N. "
                          "0 = no annealing."},
    )
    full_logits: bool = field(
        default=False,
        metadata={"help": "Compute full-vocabulary logits at every position, the straightforward path. By "
                          "default the LM head runs only on the positions a loss is taken at, in chunks."},
    )
    logits_chunk_size: int = field(
        default=2048,
        metadata={"help": "Predicted positions per LM-head chunk; above one chunk each chunk's logits are "
                          "recomputed in the backward pass instead of being kept."},
    )
    loss_kernel: Literal["auto", "chunked", "liger", "cce"] = field(
        default="auto",
        metadata={"help": "How the LM head and cross-entropy run at the predicted positions: 'chunked' (pure "
                          "PyTorch, logits_chunk_size positions at a time; the CPU path and the fallback), 'cce' "
                          "(cut-cross-entropy's fused kernel) or 'liger' (liger-kernel's fused linear cross-entropy), "
                          "both GPU only and never building the logits. 'auto': cce, else liger, when installed and "
                          "on a GPU; else chunked."},
    )
    prompt_gradient: bool = field(
        default=True,
        metadata={"help": "Backpropagate through each row's prompt (the positions before its first predicted "
                          "token). false: the prompt columns run once without gradient and the rest attends to "
                          "their cached keys and values: the same loss, a gradient that reaches the weights only "
                          "through the predicted part (an approximation), and a cheaper step for long prompts "
                          "(masked_reconstruct: ~1.4x ar instead of ~2.2x). It costs the reversal: on "
                          "recipes/smollm2_facts_masked.yaml backward exact match fell from 0.67 to 0.07 "
                          "(BENCHMARKS.md); not for learning facts. Causal objectives only, without packing or "
                          "gradient checkpointing."},
    )
    pack_length: int = field(
        default=0,
        metadata={"help": "Pack each batch's rows into rows of exactly this many tokens (each example attending "
                          "only inside itself, positions restarting): no compute on padding. 0 = no packing."},
    )
    report_to: None | str | list[str] = field(
        default_factory=_default_report_to,
        metadata={"help": "Logging integrations; tensorboard when it is installed."},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "mft's collator needs every column."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in an output_dir that holds an earlier run's checkpoints, deleting them. "
                          "false: such a folder is refused (resume it, or choose another folder)."},
    )
    eval_on_start: bool | None = field(
        default=None,
        metadata={"help": "Evaluate before the first step. null: mft.train does when there are QA rows (the "
                          "untouched model's answers and retention are the baseline in eval_results.json, report.md "
                          "and the plot) and the run is not resumed; other Trainer scripts do not."},
    )
    resume_from_checkpoint: str | bool | None = field(
        default=None,
        metadata={"help": "A checkpoint folder to resume from, or true: the last complete checkpoint in "
                          "output_dir when there is one, else a fresh start (for jobs that are requeued)."},
    )

    def __post_init__(self):
        check_training(self)
        super().__post_init__()


def mft_option(args, name: str) -> Any:
    """mft's option `name` from a Trainer's arguments: an `MFTConfig`, or any other
    `TrainingArguments` (e.g. TRL's SFTConfig), which then gets MFTConfig's default."""
    return getattr(args, name, MFTConfig.__dataclass_fields__[name].default)


def training_field_table() -> dict[str, dict[str, Any]]:
    """Every field a recipe's `training:` section may set: name -> {"type": its type spec, "default":
    its default as JSON data (enum members as their values; null where it is not plain data)}."""
    hints = get_type_hints(MFTConfig)
    table = {}
    for spec in dataclasses.fields(MFTConfig):
        if not spec.init:
            continue
        default = (spec.default if spec.default is not dataclasses.MISSING else
                   spec.default_factory() if spec.default_factory is not dataclasses.MISSING else None)
        if isinstance(default, enum.Enum):
            default = default.value
        if not _is_plain_data(default):
            default = None
        table[spec.name] = {"type": type_spec(hints[spec.name]), "default": default}
    return table


def _is_plain_data(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(_is_plain_data(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain_data(item) for key, item in value.items())
    return False
