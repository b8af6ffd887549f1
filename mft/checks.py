"""The recipe checks that need no heavy library: value types, and the rules of the training section.

A recipe is checked before torch's training stack loads, so a mistake is reported in about two
seconds instead of the ~6 s that importing transformers (and, through it, peft and bitsandbytes)
takes (BENCHMARKS.md). Two things make that possible:

- Types are checked against a *type spec*, a JSON-able description of an annotation (`type_spec`),
  so the training section's ~120 fields and their types can be read from a cached table
  (`mft.config.training_fields`) instead of from `TrainingArguments` itself.
- The training rules (`check_training`) read attributes only: they run on the recipe's values
  before `MFTConfig` exists, and again in `MFTConfig.__post_init__` for Python users.
"""

from __future__ import annotations

import enum
import os
import types
import typing
from typing import Any, Literal

from .errors import RecipeError


def type_spec(annotation: Any) -> Any:
    """A JSON-able description of a type annotation: "any", "null", "bool", "int", "float", "str",
    "dict", {"list": item}, {"union": [...]}, {"literal": [...]} or {"enum": name, "values": [...]}.
    Annotations it does not know (classes, callables) accept anything."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return {"union": [type_spec(option) for option in args]}
    if origin is Literal:
        return {"literal": list(args)}
    if annotation is type(None):
        return "null"
    if annotation in (bool, int, float, str):
        return annotation.__name__
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"enum": annotation.__name__, "values": [member.value for member in annotation]}
    if origin is list or annotation is list:
        return {"list": type_spec(args[0]) if args else "any"}
    if origin is dict or annotation is dict:
        return "dict"
    return "any"


def check_type(path: str, value: Any, spec: Any) -> Any:
    """`value` (converted where YAML is ambiguous, e.g. '1e-4' for a float) if it fits the type
    spec (or annotation), else a RecipeError naming `path`."""
    if not isinstance(spec, (str, dict)):
        spec = type_spec(spec)
    ok, converted = _fits(value, spec)
    if not ok:
        raise RecipeError(f"{path} = {value!r} has the wrong type: expected {describe_type(spec)}")
    return converted


def _fits(value: Any, spec: Any) -> tuple[bool, Any]:
    if spec == "any":
        return True, value
    if spec == "null":
        return value is None, value
    if spec == "bool":
        return isinstance(value, bool), value
    if spec == "int":
        return isinstance(value, int) and not isinstance(value, bool), value
    if spec == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if spec == "str":
        return isinstance(value, str), value
    if spec == "dict":
        return isinstance(value, dict), value
    if "union" in spec:
        if value is None:
            return "null" in spec["union"], None
        for option in spec["union"]:
            if option != "null":
                ok, converted = _fits(value, option)
                if ok:
                    return True, converted
        return False, value
    if "literal" in spec:
        return value in spec["literal"], value
    if "enum" in spec:
        return value in spec["values"], value
    if "list" in spec:
        if not isinstance(value, list):
            return False, value
        converted = []
        for item in value:
            ok, item = _fits(item, spec["list"])
            if not ok:
                return False, value
            converted.append(item)
        return True, converted
    return True, value


def describe_type(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    if "union" in spec:
        return " or ".join(describe_type(option) for option in spec["union"])
    if "literal" in spec:
        return "one of " + ", ".join(repr(value) for value in spec["literal"])
    if "enum" in spec:
        return "one of " + ", ".join(repr(value) for value in spec["values"])
    if "list" in spec:
        return f"list of {describe_type(spec['list'])}"
    return str(spec)


def check_training(args: Any) -> None:
    """mft's rules for the training section, on anything with its fields as attributes (an
    `MFTConfig`, or the recipe's values over the defaults before one is built). Each violation is
    a RecipeError that names the field and the fix."""
    if args.learning_rate < 0:
        raise RecipeError(f"learning_rate = {args.learning_rate}; use a learning rate >= 0, e.g. 1e-4")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise RecipeError(f"{name} = {getattr(args, name)}; use at least 1")
    if str(getattr(args.save_strategy, "value", args.save_strategy)) == "steps" and args.save_steps <= 0:
        raise RecipeError(f"save_steps = {args.save_steps} with save_strategy: steps would write no checkpoint "
                          f"until the end (a killed run would lose everything); give save_steps > 0, or "
                          f"save_strategy: no / epoch")
    if args.logits_chunk_size < 1:
        raise RecipeError(f"logits_chunk_size = {args.logits_chunk_size}; use a positive number of positions")
    if args.pack_length < 0:
        raise RecipeError(f"pack_length = {args.pack_length}; use 0 (no packing) or a row length in tokens")
    if not args.prompt_gradient and (args.activation_checkpointing or args.gradient_checkpointing):
        raise RecipeError("prompt_gradient = false reuses the prompt's cached keys and values, which activation "
                          "checkpointing drops; set activation_checkpointing: false or prompt_gradient: true")
    if not args.prompt_gradient and args.pack_length:
        raise RecipeError("prompt_gradient = false needs one example per row; set pack_length: 0 or "
                          "prompt_gradient: true")
    if args.max_new_tokens < 1:
        raise RecipeError(f"max_new_tokens = {args.max_new_tokens}; an answer needs at least 1 new token")
    if args.attention_anneal_steps < 0:
        raise RecipeError(f"attention_anneal_steps = {args.attention_anneal_steps}; use 0 (off) or more steps")
    if args.deepspeed and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes"):
        raise RecipeError("deepspeed is set in the recipe and the accelerate config turns DeepSpeed on too; keep "
                          "one source of truth: drop training.deepspeed (the accelerate config names its JSON) "
                          "or launch without a DeepSpeed accelerate config")
    if isinstance(args.deepspeed, str) and not os.path.isfile(args.deepspeed):
        raise RecipeError(f"deepspeed = {args.deepspeed}: no such file; give a DeepSpeed JSON such as "
                          f"accelerate_configs/deepspeed/zero2.json")
