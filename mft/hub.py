"""Publishing a finished run to the Hugging Face Hub: `mft push OUTPUT_DIR --repo-id ID [--private]`.

A run's `training.output_dir` holds more than a model: Trainer checkpoints, TensorBoard logs,
`training_args.bin` (the pickled arguments, which hold `hub_token` in clear when one was given).
Only what someone downloading the model needs is sent:

    the model (config.json, model*.safetensors, generation_config.json) or the PEFT adapter
    (adapter_config.json, adapter_model.safetensors), the tokenizer files, resolved_recipe.yaml,
    eval_results.json, report.md, accuracy.png, and README.md: a model card written from them.

- `model_card(output_dir)`: the README.md text (YAML front matter + markdown): base model, library,
  tags, objective and its parameters, fine-tuning method, mask token, data, final metrics, usage.
- `files_to_push(output_dir)`: the relative paths that are sent, nothing else.
- `push_run(output_dir, repo_id)`: writes README.md, creates the repository (if needed) and uploads
  exactly `files_to_push` with `HfApi.create_repo` and `HfApi.upload_folder`. Any failure is a
  one-line `RecipeError` that says how to retry; the local run is never deleted or changed (apart
  from README.md).
- `redact(mapping)`: a copy without the keys that could hold a secret (see `is_secret_key`).

A token is never written into the card, never printed, and never part of an error message.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import yaml

from .config import RecipeError

CARD_NAME = "README.md"

# The files of a finished run that are sent, as shell patterns on names in output_dir (top level only:
# checkpoint-*/ and runs/ are folders and are never sent).
MODEL_FILES = (
    "config.json", "generation_config.json",
    "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json",
)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.jinja", "chat_template.json",
)
RUN_FILES = ("resolved_recipe.yaml", "eval_results.json", "report.md", "accuracy.png", CARD_NAME)
PUSHED_PATTERNS = MODEL_FILES + ADAPTER_FILES + TOKENIZER_FILES + RUN_FILES

# Built-in models (mft.models.loading.BUILTIN_MODELS) and the Hub model each was made from.
BUILTIN_BASE_MODELS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}

# Training settings left out of the card: paths on the machine that trained.
LOCAL_KEYS = {"output_dir", "logging_dir", "resume_from_checkpoint"}

# Keys containing "token" that are known to hold an option, never a secret.
NOT_SECRET_KEYS = {"include_num_input_tokens_seen"}

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
HF_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{8,}")
METRIC_NAMES = {"exact_match": "exact match", "rouge1_recall": "ROUGE-1 recall"}


# ---------------------------------------------------------------------------------------------
# secrets


def is_secret_key(key: Any, value: Any) -> bool:
    """Whether `key: value` may hold a secret: the key contains "token" (any case: `hub_token`,
    `push_to_hub_token`, `HF_TOKEN`, `token`), whatever its value (null, a string, a mapping), except
    - when the value is a number or a boolean, which cannot be a secret: `max_new_tokens: 16`,
      `tokens_per_entity: 2`, `average_tokens_across_devices: true` are settings, kept so that the
      resolved recipe still reproduces the run;
    - the known options in `NOT_SECRET_KEYS` (`include_num_input_tokens_seen: all`)."""
    name = str(key).lower()
    if "token" not in name or name in NOT_SECRET_KEYS:
        return False
    return not isinstance(value, (bool, int, float))


def redact(mapping: Any) -> Any:
    """A copy of `mapping` without the keys that may hold a secret (`is_secret_key`), at any depth
    (mappings inside mappings and lists). The input is not changed."""
    if isinstance(mapping, dict):
        return {key: redact(value) for key, value in mapping.items() if not is_secret_key(key, value)}
    if isinstance(mapping, (list, tuple)):
        return [redact(item) for item in mapping]
    return mapping


def _secret_paths(mapping: Any, prefix: str = "") -> list[str]:
    """The dotted names of the keys `redact` would remove that hold a value (not null)."""
    found = []
    if isinstance(mapping, dict):
        for key, value in mapping.items():
            path = f"{prefix}{key}"
            if is_secret_key(key, value):
                if value not in (None, ""):
                    found.append(path)
            else:
                found += _secret_paths(value, path + ".")
    elif isinstance(mapping, (list, tuple)):
        for item in mapping:
            found += _secret_paths(item, prefix)
    return found


def _mask(text: str, token: str | None) -> str:
    """`text` with the token (and anything shaped like a Hugging Face token) replaced by ***."""
    if token:
        text = text.replace(token, "***")
    text = HF_TOKEN_LIKE.sub("hf_***", text)
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)


# ---------------------------------------------------------------------------------------------
# what is sent


def _check_run(output_dir: Path) -> None:
    if not output_dir.is_dir():
        raise RecipeError(f"{output_dir}: no such folder; give the training.output_dir of a finished run")
    if not (output_dir / "config.json").is_file() and not (output_dir / "adapter_config.json").is_file():
        raise RecipeError(f"{output_dir} holds no model (config.json) and no adapter (adapter_config.json); "
                          "give the training.output_dir of a finished run")


def files_to_push(output_dir: str | Path) -> list[str]:
    """The relative paths (sorted) of the files of `output_dir` that a push sends: model or adapter
    weights and configs, tokenizer files, generation_config.json, resolved_recipe.yaml,
    eval_results.json, report.md, accuracy.png and README.md, those that exist (README.md after
    `push_run` has written it). Never checkpoint-*/, runs/, training_args.bin, optimizer, scheduler or
    RNG states, nor anything else."""
    output_dir = Path(output_dir)
    _check_run(output_dir)
    return sorted(path.name for path in output_dir.iterdir()
                  if path.is_file() and any(fnmatch.fnmatchcase(path.name, p) for p in PUSHED_PATTERNS))


# ---------------------------------------------------------------------------------------------
# the model card


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_recipe(output_dir: Path) -> dict[str, Any]:
    path = output_dir / "resolved_recipe.yaml"
    if not path.is_file():
        return {}
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    return recipe if isinstance(recipe, dict) else {}


def _token_text(value: Any) -> str | None:
    """A special token as saved by a tokenizer: a string, or a dict with "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def saved_mask_token(output_dir: str | Path) -> str | None:
    """The mask token of the tokenizer saved in `output_dir` (tokenizer_config.json, else
    special_tokens_map.json), or None."""
    output_dir = Path(output_dir)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        token = _token_text(_read_json(output_dir / name).get("mask_token"))
        if token:
            return token
    return None


def _mask_token_note(mask_token: str | None, pretrained: bool) -> str:
    """How the mask token came to be, by the rule of `mft.models.loading.ensure_mask_token`."""
    from .models.loading import RESERVED_TOKEN_PATTERNS

    if mask_token is None:
        return "none"
    if not pretrained:
        return f"`{mask_token}` (part of the run's own word-level vocabulary)"
    if _mask_token_added(mask_token, pretrained):
        return (f"`{mask_token}`, added to the base model's vocabulary by mft (one new embedding row, "
                "trained with the model)")
    if any(pattern.fullmatch(mask_token) for pattern in RESERVED_TOKEN_PATTERNS):
        return f"`{mask_token}`, an unused reserved token of the base vocabulary (vocabulary unchanged)"
    return f"`{mask_token}`, the base tokenizer's own"


def _mask_token_added(mask_token: str | None, pretrained: bool) -> bool:
    """Whether mft added the mask token to a pretrained model's vocabulary (its embeddings grew)."""
    from .models.loading import MASK_TOKEN

    return pretrained and mask_token == MASK_TOKEN


def _base_model(model: dict[str, Any]) -> tuple[str, str | None]:
    """(what the card says the base model is, a Hub id for the front matter's base_model or None)."""
    name = model.get("name_or_path")
    if not name:
        return f"trained from scratch ({model.get('architecture') or 'unknown architecture'})", None
    name = str(name)
    if name in BUILTIN_BASE_MODELS:
        from .models.loading import BUILTIN_MODELS

        hub_id = BUILTIN_BASE_MODELS[name]
        gguf = f", {BUILTIN_MODELS[name].gguf_file} dequantized" if name in BUILTIN_MODELS else ""
        return f"{hub_id} (mft built-in `{name}`{gguf})", hub_id
    is_local = name.startswith((".", "/", "~")) or name.lower().endswith(".gguf") or Path(name).expanduser().exists()
    if not is_local and HUB_ID.match(name):
        return name, name
    return f"{Path(name).name} (a local checkpoint)", None


def _cell(text: str) -> str:
    """Text safe in a markdown table cell (a `|`, even inside backticks, would split the cell)."""
    return text.replace("|", "\\|").replace("\n", " ")


def _text(value: Any) -> str:
    """A recipe value as text: mappings and lists as JSON, None as null."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=False)
    return "null" if value is None else str(value)


def _value(value: Any) -> str:
    """A recipe value for a table cell."""
    return _cell(_text(value))


def _peft_text(peft: dict[str, Any]) -> str:
    method = peft.get("method", "full")
    if method == "full":
        return "full fine-tuning (every parameter)"
    options = ", ".join(f"{key}={_text(peft[key])}" for key in
                        ("r", "alpha", "dropout", "target_modules", "modules_to_save") if key in peft)
    return f"{method} ({options})" if options else method


def _data_rows(recipe: dict[str, Any]) -> list[tuple[str, str]]:
    if isinstance(recipe.get("task"), dict):
        task = dict(recipe["task"])
        name = task.pop("name", "unknown")
        rows = [("task", f"`{name}` (built-in)")]
        rows += [(f"task.{key}", _value(value)) for key, value in task.items()]
        return rows
    if isinstance(recipe.get("data"), dict):
        return [(f"data.{key}", Path(str(value)).name if value else "null") for key, value in recipe["data"].items()]
    return [("data", "unknown (no resolved_recipe.yaml)")]


def _metrics_table(results: dict[str, Any]) -> list[str]:
    directions = [d for d, m in results.items() if isinstance(m, dict)]
    if not directions:
        return ["No question-answering evaluation was run."]
    names = []
    for direction in directions:
        for name in results[direction]:
            if name != "n" and name not in names:
                names.append(name)
    names.sort(key=lambda n: (n != "exact_match", n))
    header = ["direction"] + [METRIC_NAMES.get(n, n) for n in names] + ["n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for direction in directions:
        metrics = results[direction]
        cells = [f"{metrics[n]:.3f}" if isinstance(metrics.get(n), (int, float)) else "" for n in names]
        lines.append(f"| {direction} | " + " | ".join(cells) + f" | {metrics.get('n', '')} |")
    return lines


def _decoding(recipe: dict[str, Any]) -> tuple[str, str]:
    """(how answers are generated, the extra arguments of `generate`) for the usage snippet, as
    mft's evaluation does it."""
    objective = dict(recipe.get("objective") or {})
    decoding = (recipe.get("training") or {}).get("decoding")
    try:
        from .objectives import build_objective, default_decoding

        built = build_objective(objective.pop("name"), **objective)
        extra = "".join(f", {name}=True" for name in ("shift", "keep_sink") if getattr(built, name, False))
        return decoding or default_decoding(built), extra
    except Exception:  # an unknown or older objective: the card still gets written
        return decoding or "causal", ""


def _usage(repo: str, adapter: bool, added_mask_token: bool, decoding: str, extra: str,
           base: str | None) -> list[str]:
    lines = ["```python", "from huggingface_hub import snapshot_download",
             "from mft.data.tokenize import encode_prompt", "from mft.decoding import generate",
             "from mft.models import load_trained", "",
             f'model, tokenizer = load_trained(snapshot_download("{repo}"))',
             'prompt = encode_prompt(tokenizer, "your question")',
             f'answer = generate(model, tokenizer, [prompt], "{decoding}", max_new_tokens=16'
             + extra + ")[0]",
             "print(tokenizer.decode(answer, skip_special_tokens=True))", "```", ""]
    if adapter:
        lines += ["This is a PEFT (LoRA) adapter: `load_trained` loads the base model named in "
                  "`adapter_config.json`"
                  + (", grows its embeddings to this tokenizer's vocabulary (the mask token was added)," if
                     added_mask_token else ",")
                  + " and applies the adapter. With PEFT alone:", "",
                  "```python", "from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
                  f'base = AutoModelForCausalLM.from_pretrained("{base or "BASE_MODEL"}")']
        if added_mask_token:
            lines.append("base.resize_token_embeddings(len(tokenizer))  # the mask token was added to the vocabulary")
        lines += [f'model = PeftModel.from_pretrained(base, "{repo}")', "```", ""]
    else:
        lines += ["It is also an ordinary checkpoint: `AutoModelForCausalLM.from_pretrained(...)` loads it."
                  + (" The mask token was added to the vocabulary (the embeddings have a row for it)."
                     if added_mask_token else ""), ""]
    if decoding == "masked":
        lines += ["Masked decoding appends one mask slot at a time and reads it with bidirectional attention, "
                  "as the model was trained; plain `model.generate` (causal) is not how it was evaluated.", ""]
    elif decoding == "masked_any_order":
        lines += ["It was evaluated with masked decoding in any order (`mft.decoding.generate_masked_any_order`: "
                  "mask slots after the prompt, the most confident one filled first, bidirectional attention); "
                  "plain `model.generate` (causal) is not how it was evaluated.", ""]
    return lines


def model_card(output_dir: str | Path, *, repo_id: str | None = None) -> str:
    """The model card (README.md: YAML front matter, then markdown) of the finished run in
    `output_dir`, from resolved_recipe.yaml, eval_results.json, the saved tokenizer and the weights'
    kind (adapter_config.json: a PEFT adapter). `repo_id` names the repository in the usage snippet.

    Nothing from the environment is read, and keys that may hold a secret are left out (`redact`)."""
    from huggingface_hub import ModelCardData

    output_dir = Path(output_dir)
    recipe = redact(_read_recipe(output_dir))
    results = _read_json(output_dir / "eval_results.json")
    model = recipe.get("model") or {}
    peft = recipe.get("peft") or {}
    objective = dict(recipe.get("objective") or {})
    objective_name = str(objective.pop("name", "unknown"))
    adapter = (output_dir / "adapter_config.json").is_file()
    pretrained = bool(model.get("name_or_path"))
    base_text, base_hub_id = _base_model(model)
    mask_token = saved_mask_token(output_dir)
    added_mask_token = _mask_token_added(mask_token, pretrained)

    tags = ["mft", objective_name]
    if objective_name == "mixture" and isinstance(objective.get("mix"), dict):
        tags += [str(component) for component in objective["mix"] if str(component) not in tags]
    if adapter:
        tags += ["lora"]
    card_data = ModelCardData(base_model=base_hub_id, library_name="peft" if adapter else "transformers",
                              pipeline_tag="text-generation", tags=tags)

    title = repo_id.split("/")[-1] if repo_id else output_dir.resolve().name
    kind = "A PEFT adapter for " if adapter else ""
    intro = f"{kind}{base_text}, fine-tuned" if pretrained else \
        f"A {model.get('architecture') or 'causal'} model trained from scratch"
    data_rows = _data_rows(recipe)
    data_text = dict(data_rows).get("task") or ", ".join(v for _, v in data_rows)
    lines = ["---", card_data.to_yaml(), "---", "", f"# {title}", "",
             f"{intro} with mft (masked fine-tuning, against the reversal curse), objective "
             f"`{objective_name}`, on {data_text}.", "",
             "## Results", "", "Exact match on held-out questions, asked in each direction (fractions in [0, 1]):", ""]
    lines += _metrics_table(results) + [""]

    lines += ["## Training", "", "| setting | value |", "|---|---|",
              f"| base model | {_cell(base_text)} |",
              f"| fine-tuning | {_cell(_peft_text(peft))} |",
              f"| objective | `{objective_name}` |"]
    lines += [f"| objective.{key} | {_value(value)} |" for key, value in objective.items()]
    lines += [f"| mask token | {_cell(_mask_token_note(mask_token, pretrained))} |"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in data_rows]
    training = recipe.get("training") or {}
    lines += [f"| training.{key} | {_value(value)} |" for key, value in training.items() if key not in LOCAL_KEYS]
    lines += [""]

    decoding, extra = _decoding(recipe)
    lines += ["## Usage", ""] + _usage(repo_id or "REPO_ID", adapter, added_mask_token, decoding, extra,
                                            base_hub_id)

    lines += ["The full recipe, every default filled in, is `resolved_recipe.yaml`; `report.md` and "
              "`accuracy.png` show exact match during training.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the push


def _short_reason(error: BaseException, token: str | None) -> str:
    """The error's type and first line, without the token, at most 200 characters."""
    text = str(error).strip()
    first_line = text.splitlines()[0].strip() if text else ""
    reason = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
    reason = _mask(reason, token)
    return reason if len(reason) <= 200 else reason[:197] + "..."


def push_run(output_dir: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
             api=None) -> str:
    """Publish the finished run in `output_dir` to the Hub model repository `repo_id`; returns its URL.

    Writes README.md (`model_card`) into `output_dir`, creates the repository (`exist_ok=True`: an
    existing one is updated) and uploads exactly `files_to_push(output_dir)` in one commit.
    `token`: a Hub token with write access (None: the one saved by `hf auth login` or $HF_TOKEN, as
    huggingface_hub decides). `api`: an `HfApi`-like object (tests pass a fake); default `HfApi()`.

    Any failure (no network, bad token, HTTP error, ...) raises `RecipeError` with one line naming
    the reason and the retry command; nothing in `output_dir` is deleted or changed apart from
    README.md. The token is never written or printed."""
    output_dir = Path(output_dir)
    retry = f"retry with: mft push {output_dir} --repo-id {repo_id}"
    _check_run(output_dir)
    secrets = _secret_paths(_read_recipe(output_dir))
    if secrets:
        raise RecipeError(f"{output_dir / 'resolved_recipe.yaml'} holds {', '.join(secrets)}, which would be "
                          f"uploaded; delete that line, then {retry}")

    try:
        (output_dir / CARD_NAME).write_text(model_card(output_dir, repo_id=repo_id))
    except OSError as error:
        raise RecipeError(f"push to {repo_id} failed (cannot write {CARD_NAME}: {_short_reason(error, token)}); "
                          f"the run is kept in {output_dir}; {retry}") from None
    files = files_to_push(output_dir)
    try:
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi()
        url = api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(output_dir), allow_patterns=files, token=token,
                          repo_type="model", commit_message="Upload mft run")
    except Exception as error:  # network, authentication, HTTP, invalid repo id: all reported the same way
        raise RecipeError(f"push to {repo_id} failed ({_short_reason(error, token)}); the run is kept in "
                          f"{output_dir}; {retry}") from None
    return str(url)
