"""Publishing a finished run to the Hugging Face Hub: `mft push OUTPUT_DIR --repo-id ID [--private]`.

A run's `training.output_dir` holds more than a model: Trainer checkpoints, TensorBoard logs,
`training_args.bin` (the pickled arguments, which hold `hub_token` in clear when one was given).
Only what someone downloading the model needs is sent (`files_to_push`): the model or the PEFT
adapter, the tokenizer files, resolved_recipe.yaml, eval_results.json, report.md, accuracy.png, and
README.md, the model card (`model_card`: `CARD_TEMPLATE` filled from those files: front matter,
metrics, training settings, and a usage snippet that decodes as the run's evaluation did).

`push_run(output_dir, repo_id)` writes README.md, creates the repository (if needed) and uploads
exactly `files_to_push` with `HfApi.create_repo` and `HfApi.upload_folder`. A folder that is no
finished run, or a resolved_recipe.yaml holding a secret, is a `RecipeError`; a failed push is a
`HubError`; each is one line that says how to retry, and the local run is never deleted or changed
(apart from README.md). A token is never written into the card, never printed, and never part of an
error message (see `mft.utils`: `redact`, `secret_paths`, `mask_secrets`).
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from string import Template
from typing import Any

import yaml

from .errors import HubError, MFTError, RecipeError
from .utils import mask_secrets, redact, secret_paths

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
RUN_FILES = ("mft_decoding.json", "resolved_recipe.yaml", "eval_results.json", "report.md", "accuracy.png", CARD_NAME)
PUSHED_PATTERNS = MODEL_FILES + ADAPTER_FILES + TOKENIZER_FILES + RUN_FILES

# Training settings left out of the card: paths on the machine that trained.
LOCAL_KEYS = {"output_dir", "logging_dir", "resume_from_checkpoint"}

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
METRIC_NAMES = {"exact_match": "exact match", "rouge1_recall": "ROUGE-1 recall", "exact_match_chat": "chat",
                "exact_match_completion": "completion", "facts_all_wordings": "facts right in every wording",
                "borrowed": "wrong answers borrowed", "incorrect_inference": "incorrect inference"}

# The model card. Every ${name} is filled by `model_card`; ${notes} is zero or more paragraphs, each
# followed by a blank line; ${unknown_decoding} is empty unless the decoding is unknown.
CARD_TEMPLATE = Template('''---
${front_matter}
---

# ${title}

${intro} with mft (masked fine-tuning, against the reversal curse), objective `${objective}`, on ${data}.

## Results

Exact match on held-out questions, asked in each direction (fractions in [0, 1]):

${results}

## Training

| setting | value |
|---|---|
${training}

## Usage

```python
import mft
from huggingface_hub import snapshot_download

trained = mft.load(snapshot_download("${repo}"))  # the model, its tokenizer and its decoding spec
print(trained.generate(["your question"])[0])
```

or from the command line: `mft generate ${repo} "your question"`. `mft_decoding.json` holds the decoding rules; by hand, `generate` does this:

```python
from mft.decoding import encode_question, generate

model, tokenizer = trained.model, trained.tokenizer
${unknown_decoding}prompt = encode_question(tokenizer, "your question", True, ${decoding}${context_rules})
answer = generate(model, tokenizer, [prompt], ${decoding}, max_new_tokens=${max_new_tokens}${rules})[0]
print(tokenizer.decode(answer, skip_special_tokens=True))
```

${notes}The full recipe, every default filled in, is `resolved_recipe.yaml`; `report.md` and `accuracy.png` \
show exact match during training.
''')

ADAPTER_NOTE = '''This is a PEFT (LoRA) adapter: `mft.load` loads the base model named in `adapter_config.json`\
{grows} and applies the adapter. With PEFT alone:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo}")
base = AutoModelForCausalLM.from_pretrained("{base}")
{resize}model = PeftModel.from_pretrained(base, "{repo}")
```'''

UNKNOWN_DECODING = 'decoding = None  # unknown (see below): one of "causal", "masked", "masked_any_order"\n'
DECODING_NOTES = {
    "masked": "Masked decoding appends one mask slot at a time and reads it with bidirectional attention, as "
              "the model was trained; plain `model.generate` (causal) is not how it was evaluated.",
    "masked_any_order": "It was evaluated with masked decoding in any order (`mft.decoding.generate_masked_any_order`: "
                        "mask slots after the prompt, the most confident one filled first, bidirectional attention); "
                        "plain `model.generate` (causal) is not how it was evaluated.",
}


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
# reading the run


def _read(path: Path, parse=json.loads) -> dict[str, Any]:
    """A JSON (or, with `parse=yaml.safe_load`, YAML) file's mapping; {} if it is missing or no mapping."""
    try:
        data = parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_recipe(output_dir: Path) -> dict[str, Any]:
    return _read(output_dir / "resolved_recipe.yaml", yaml.safe_load)


def saved_mask_token(output_dir: str | Path) -> str | None:
    """The mask token of the tokenizer saved in `output_dir` (tokenizer_config.json, else
    special_tokens_map.json), or None."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        token = _read(Path(output_dir) / name).get("mask_token")
        token = token.get("content") if isinstance(token, dict) else token  # a string, or {"content": ...}
        if isinstance(token, str) and token:
            return token
    return None


# ---------------------------------------------------------------------------------------------
# the card's sections


def _cell(text: str) -> str:
    """Text safe in a markdown table cell (a `|`, even inside backticks, would split the cell)."""
    return text.replace("|", "\\|").replace("\n", " ")


def _text(value: Any) -> str:
    """A recipe value as text: mappings and lists as JSON, None as null."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=False)
    return "null" if value is None else str(value)


def _base_model(model: dict[str, Any]) -> tuple[str, str | None]:
    """(what the card says the base model is, a Hub id for the front matter's base_model or None)."""
    from .models.loading import BUILTIN_MODELS

    name = model.get("name_or_path")
    if not name:
        return f"trained from scratch ({model.get('architecture') or 'unknown architecture'})", None
    name = str(name)
    if name in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[name]
        described = f"mft built-in `{name}`, {builtin.gguf_file} dequantized"
        return (f"{builtin.hub_id} ({described})", builtin.hub_id) if builtin.hub_id else (described, None)
    is_local = name.startswith((".", "/", "~")) or name.lower().endswith(".gguf") or Path(name).expanduser().exists()
    if not is_local and HUB_ID.match(name):
        return name, name
    return f"{Path(name).name} (a local checkpoint)", None


def _mask_token_note(mask_token: str | None, pretrained: bool, added: bool) -> str:
    """How the mask token came to be, by the rule of `mft.models.loading.ensure_mask_token`."""
    from .models.loading import RESERVED_TOKEN_PATTERNS

    if mask_token is None:
        return "none"
    if not pretrained:
        return f"`{mask_token}` (part of the run's own word-level vocabulary)"
    if added:
        return (f"`{mask_token}`, added to the base model's vocabulary by mft (one new embedding row, "
                "trained with the model)")
    if any(pattern.fullmatch(mask_token) for pattern in RESERVED_TOKEN_PATTERNS):
        return f"`{mask_token}`, an unused reserved token of the base vocabulary (vocabulary unchanged)"
    return f"`{mask_token}`, the base tokenizer's own"


def _peft_text(peft: dict[str, Any]) -> str:
    method = peft.get("method", "full")
    if method == "full":
        return "full fine-tuning (every parameter)"
    options = ", ".join(f"{key}={_text(peft[key])}" for key in
                        ("r", "alpha", "dropout", "target_modules", "modules_to_save") if key in peft)
    return f"{method} ({options})" if options else method


def _data_rows(recipe: dict[str, Any]) -> list[tuple[str, str]]:
    """(setting, value) rows for the data: a built-in task and its options, or the data files' names
    (never their local paths)."""
    if isinstance(recipe.get("task"), dict):
        task = dict(recipe["task"])
        return [("task", f"`{task.pop('name', 'unknown')}` (built-in)")] + \
            [(f"task.{key}", _text(value)) for key, value in task.items()]
    if isinstance(recipe.get("data"), dict):
        def name(value: Any) -> str:  # file names, never local paths
            if isinstance(value, list):
                return ", ".join(Path(str(item)).name for item in value)
            return Path(str(value)).name if isinstance(value, str) else _text(value)
        return [(f"data.{key}", name(value)) for key, value in recipe["data"].items()]
    return [("data", "unknown (no resolved_recipe.yaml)")]


def _results_table(results: dict[str, Any]) -> str:
    """The per-direction metrics (with the base model's exact match at step 0 when measured), and
    the forgetting drift when measured."""
    directions = [d for d in ("forward", "backward") if isinstance(results.get(d), dict)]
    if not directions:
        return "No question-answering evaluation was run."
    baseline = results.get("baseline") or {}
    names = sorted({n for d in directions for n in results[d] if n not in ("n", "n_facts")},
                   key=lambda n: (n != "exact_match", n))
    header = (["direction"] + (["exact match of the base model"] if baseline else [])
              + [METRIC_NAMES.get(n, n) for n in names] + ["n"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for direction in directions:
        metrics = results[direction]
        cells = [f"{metrics[n]:.3f}" if isinstance(metrics.get(n), (int, float)) else "" for n in names]
        if baseline:
            base = (baseline.get(direction) or {}).get("exact_match")
            cells.insert(0, f"{base:.3f}" if isinstance(base, (int, float)) else "")
        lines.append(f"| {direction} | " + " | ".join(cells) + f" | {metrics.get('n', '')} |")
    retention = results.get("retention")
    if isinstance(retention, dict) and "drift" in retention:
        lines += ["", f"Forgetting: the base model's own continuations of neutral prompts cost "
                      f"{retention['nll']:.3f} nats per token under this model against {retention['base_nll']:.3f} "
                      f"under the base model (drift {retention['drift']:+.3f})."]
    return "\n".join(lines)


def _decoding(output_dir: Path, recipe: dict[str, Any]) -> tuple[str | None, list[str], str | None, int]:
    """How `mft.load(...).generate` answers with this run's model: (the decoding method, or None when
    it cannot be known; the decoding rules that differ from `generate`'s defaults, as "key=value"; why
    the decoding or its rules are unknown, or None; max_new_tokens). From the run's decoding spec,
    else (a run saved before specs were) from its resolved recipe."""
    from .decoding import DecodingSpec
    from .training_args import MFTConfig

    spec = DecodingSpec.read(output_dir)
    if spec is not None:
        defaults = DecodingSpec().rules()
        return (spec.decoding, [f"{key}={value}" for key, value in spec.rules().items() if value != defaults[key]],
                None, spec.max_new_tokens)
    max_new_tokens = (recipe.get("training") or {}).get("max_new_tokens") or MFTConfig.max_new_tokens
    return (*_recipe_decoding(recipe), max_new_tokens)


def _recipe_decoding(recipe: dict[str, Any]) -> tuple[str | None, list[str], str | None]:
    from .decoding import DecodingSpec
    from .objectives import DECODINGS, build_objective

    section = dict(recipe.get("objective") or {})
    decoding = (recipe.get("training") or {}).get("decoding")
    if decoding is not None and decoding not in DECODINGS:
        return None, [], f"training.decoding = {decoding!r} is not a decoding method"
    if "name" not in section:  # no objective at all: a plain causal LM
        return decoding or "causal", [], None
    name = section.pop("name")
    try:
        objective = build_objective(name, **section)
    except (MFTError, TypeError, ValueError):  # an unknown (or newer) objective: the card is still written
        why = f"the run's objective `{name}` is not one this version of mft can build"
        return decoding, [], None if decoding == "causal" else why
    defaults = DecodingSpec().rules()
    return (decoding or objective.decoding,
            [f"{key}={value}" for key, value in objective.decoding_options().items() if value != defaults[key]], None)


def _notes(repo: str, adapter: bool, added_mask_token: bool, base: str | None, decoding: str | None,
           unknown: str | None) -> str:
    """The paragraphs after the usage snippet: how the weights load, and how the model must be decoded."""
    if adapter:
        grows = (", grows its embeddings to this tokenizer's vocabulary (the mask token was added),"
                 if added_mask_token else ",")
        resize = "base.resize_token_embeddings(len(tokenizer))  # the mask token was added to the vocabulary\n" \
            if added_mask_token else ""
        notes = [ADAPTER_NOTE.format(grows=grows, repo=repo, base=base or "BASE_MODEL", resize=resize)]
    else:
        notes = ["It is also an ordinary checkpoint: `AutoModelForCausalLM.from_pretrained(...)` loads it."
                 + (" The mask token was added to the vocabulary (the embeddings have a row for it)."
                    if added_mask_token else "")]
    if unknown:
        what = "the decoding rules (`shift`, `keep_sink`, `attend_to_masked`) of" if decoding else "how"
        notes.append(f"How this model must be decoded is unknown: {unknown}, so this card cannot say {what} "
                     "mft evaluated it. Plain causal decoding may not be how it was trained to answer.")
    if decoding in DECODING_NOTES:
        notes.append(DECODING_NOTES[decoding])
    return "".join(note + "\n\n" for note in notes)


def model_card(output_dir: str | Path, *, repo_id: str | None = None) -> str:
    """The model card (README.md: YAML front matter, then markdown) of the finished run in
    `output_dir`: `CARD_TEMPLATE` filled from resolved_recipe.yaml, eval_results.json, the saved
    tokenizer and the weights' kind (adapter_config.json: a PEFT adapter). `repo_id` names the
    repository in the usage snippet.

    Nothing from the environment is read, and keys that may hold a secret are left out (`redact`)."""
    from huggingface_hub import ModelCardData

    from .models.loading import MASK_TOKEN

    output_dir = Path(output_dir)
    recipe = redact(_read_recipe(output_dir))
    model, peft = recipe.get("model") or {}, recipe.get("peft") or {}
    training = recipe.get("training") or {}
    objective = dict(recipe.get("objective") or {})
    objective_name = str(objective.pop("name", "unknown"))
    adapter = (output_dir / "adapter_config.json").is_file()
    pretrained = bool(model.get("name_or_path"))
    base_text, base_hub_id = _base_model(model)
    mask_token = saved_mask_token(output_dir)
    added_mask_token = pretrained and mask_token == MASK_TOKEN

    tags = ["mft", objective_name]
    if objective_name == "mixture" and isinstance(objective.get("mix"), dict):
        tags += [str(component) for component in objective["mix"] if str(component) not in tags]
    tags += ["lora"] if adapter else []
    card_data = ModelCardData(base_model=base_hub_id, library_name="peft" if adapter else "transformers",
                              pipeline_tag="text-generation", tags=tags)

    data_rows = _data_rows(recipe)
    rows = [("base model", base_text), ("fine-tuning", _peft_text(peft)), ("objective", f"`{objective_name}`")]
    rows += [(f"objective.{key}", _text(value)) for key, value in objective.items()]
    rows += [("mask token", _mask_token_note(mask_token, pretrained, added_mask_token))] + data_rows
    rows += [(f"training.{key}", _text(value)) for key, value in _card_training(training).items()]

    decoding, rules, unknown, max_new_tokens = _decoding(output_dir, recipe)
    repo = repo_id or "REPO_ID"
    return CARD_TEMPLATE.substitute(
        front_matter=card_data.to_yaml(),
        title=repo_id.split("/")[-1] if repo_id else output_dir.resolve().name,
        intro=(f"{'A PEFT adapter for ' if adapter else ''}{base_text}, fine-tuned" if pretrained else
               f"A {model.get('architecture') or 'causal'} model trained from scratch"),
        objective=objective_name,
        data=dict(data_rows).get("task") or ", ".join(value for _, value in data_rows),
        results=_results_table(_read(output_dir / "eval_results.json")),
        training="\n".join(f"| {_cell(key)} | {_cell(value)} |" for key, value in rows),
        repo=repo,
        unknown_decoding="" if decoding else UNKNOWN_DECODING,
        decoding=f'"{decoding}"' if decoding else "decoding",
        max_new_tokens=max_new_tokens,
        rules="".join(f", {rule}" for rule in rules),
        context_rules="".join(f", {rule}" for rule in rules if rule.startswith(("shift=", "keep_sink="))),
        notes=_notes(repo, adapter, added_mask_token, base_hub_id, decoding, unknown),
    )


# The training settings a card always lists; every other one only where the run changed its default.
CARD_TRAINING_KEYS = ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "num_train_epochs",
                      "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "bf16",
                      "decoding", "max_new_tokens")


def _card_training(training: dict[str, Any]) -> dict[str, Any]:
    """The resolved training settings worth a card row: `CARD_TRAINING_KEYS`, and the others that
    differ from MFTConfig's defaults (a resolved recipe lists all ~120), without local paths."""
    from .config import training_values
    from .training_args import MFTConfig

    defaults = training_values(MFTConfig(output_dir="."))
    return {key: value for key, value in training.items() if key not in LOCAL_KEYS
            and (key in CARD_TRAINING_KEYS or key not in defaults or defaults[key] != value)}


# ---------------------------------------------------------------------------------------------
# the push


def _short_reason(error: BaseException, token: str | None) -> str:
    """The error's type and first line, without the token, at most 200 characters."""
    text = str(error).strip()
    first_line = text.splitlines()[0].strip() if text else ""
    reason = mask_secrets(f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__, token)
    return reason if len(reason) <= 200 else reason[:197] + "..."


def push_run(output_dir: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
             api=None) -> str:
    """Publish the finished run in `output_dir` to the Hub model repository `repo_id`; returns its URL.

    Writes README.md (`model_card`) into `output_dir`, creates the repository (`exist_ok=True`: an
    existing one is updated) and uploads exactly `files_to_push(output_dir)` in one commit.
    `token`: a Hub token with write access (None: the one saved by `hf auth login` or $HF_TOKEN, as
    huggingface_hub decides). `api`: an `HfApi`-like object (tests pass a fake); default `HfApi()`.

    A folder that is no finished run, or a resolved_recipe.yaml that holds a secret, raises
    `RecipeError` before anything is written or sent. Any failure of the push itself (README.md not
    writable, no network, bad token, HTTP error, ...) raises `HubError` with one line naming the
    reason and the retry command; nothing in `output_dir` is deleted or changed apart from README.md.
    The token is never written or printed."""
    output_dir = Path(output_dir)
    retry = f"retry with: mft push {output_dir} --repo-id {repo_id}"
    _check_run(output_dir)
    secrets = secret_paths(_read_recipe(output_dir))
    if secrets:
        raise RecipeError(f"{output_dir / 'resolved_recipe.yaml'} holds {', '.join(secrets)}, which would be "
                          f"uploaded; delete that line, then {retry}")

    try:
        (output_dir / CARD_NAME).write_text(model_card(output_dir, repo_id=repo_id))
    except OSError as error:
        raise HubError(f"push to {repo_id} failed (cannot write {CARD_NAME}: {_short_reason(error, token)}); "
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
        raise HubError(f"push to {repo_id} failed ({_short_reason(error, token)}); the run is kept in "
                       f"{output_dir}; {retry}") from None
    return str(url)
