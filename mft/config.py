"""The YAML recipe that a run is made from, read and checked without importing transformers.

A recipe has these sections (each a mapping):

    task:       a built-in task generator, `name:` plus its options    } exactly one of the two
    data:       files: `train_file:` (and `qa_file:` for evaluation)    }
    model:      `ModelConfig` fields (a from-scratch size, or a pretrained checkpoint)
    peft:       `PeftOptions`: full fine-tuning, LoRA or QLoRA (default: full)
    objective:  `name:` plus the objective's options (see `mft.objectives`)
    training:   any `MFTConfig` field, i.e. any `transformers.TrainingArguments` field plus mft's own

Recipes are read with a safe YAML loader (no object construction from tags; YAML 1.2 booleans). Command-line overrides
`section.key=value` are parsed as YAML scalars; overriding `objective.name` or `task.name` with
another name drops that section's options from the file (they belong to the old one). Every key is checked against the dataclass it
configures; an unknown key, a wrong type or an impossible value is a `RecipeError`: one line that
names the field and the fix, raised before any model is built. The whole check needs torch (the
objectives) but not transformers: the training section is checked against `training_fields()`, a
table of `MFTConfig`'s fields cached per transformers version, and the `MFTConfig` itself (the
~4 s import of transformers, peft and bitsandbytes) is built last, once everything else passed.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .checks import check_training, check_type
from .data import TASKS
from .errors import RecipeError
from .objectives import MODEL_KINDS, OBJECTIVES, Objective, build_objective
from .utils import redact, writable_folder

__all__ = ["ModelConfig", "PeftOptions", "DataFiles", "Recipe", "RecipeError", "load_recipe", "parse_recipe",
           "apply_override", "read_yaml", "validate_recipe", "model_kind", "training_fields"]


@dataclass
class ModelConfig:
    """The model. `name_or_path`: a built-in name (`smollm2-135m`), a local checkpoint folder, a GGUF
    file (or a folder plus `gguf_file`), or a Hub id. Without it, a model of the given architecture
    and sizes is built from scratch with random weights, its vocabulary taken from the task (no
    download); the size fields apply only then."""

    name_or_path: str | None = None
    gguf_file: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    # Decoder-only causal LMs (llama, mistral, qwen2, gpt2), BERT (the paper's MLM baseline; an
    # encoder, for mlm only) or the paper's encoder-decoder MLM-U model (`mft.models.encoder_decoder`).
    architecture: Literal["llama", "mistral", "qwen2", "gpt2", "bert", "encoder_decoder"] = "llama"
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    attention_dropout: float = 0.0
    # flex_attention: every mask as a block mask built from its per-token rule, never [B, 1, L, L]
    # (GPU training; PyTorch has no flex_attention backward on CPU).
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flex_attention"] = "sdpa"
    cross_attention: Literal["corresponding", "last"] = "corresponding"  # encoder_decoder: what the decoder reads
    # encoder_decoder only: a learned key/value in every attention layer that any query may attend
    # to. It does for the encoder-decoder what a BOS does (a place to park attention) without telling
    # queries their absolute position (see add_bos_token): retrieval MLM-U without BOS 0.85 / 0.88,
    # with the sink 1.00 / 1.00 (BENCHMARKS.md).
    attention_sink: bool = False
    # The system message of every chat-formatted prompt (pretrained chat models only). null: the
    # chat template's own default (SmolLM2's adds "You are a helpful AI assistant named SmolLM, ...",
    # about 17 tokens per row); "" : an empty system turn. Written into the saved tokenizer's chat
    # template, so evaluation and generation after the run format prompts the same way.
    system_prompt: str | None = None
    # From-scratch models: start every row with BOS. A BOS that every query sees gives each position
    # its distance from the row's start, and masked models then memorise answers by absolute
    # position: on the relationship task a question "B =>" (B at the row's start) was answered with
    # the token that sits at that distance in a *trained* question about B, instead of C from the
    # statement "A => B => C" (forward 0.30 with BOS, 1.00 without; BENCHMARKS.md). Without BOS only
    # relative positions (RoPE) are left, so a fact is recalled the same wherever it appears.
    add_bos_token: bool = True

    def __post_init__(self):
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise RecipeError(f"model.{name} = {getattr(self, name)} must be at least 1")
        if self.attention_sink and self.architecture != "encoder_decoder":
            raise RecipeError(f"model.attention_sink applies to architecture encoder_decoder, not {self.architecture!r}; "
                              f"remove the field")
        if self.hidden_size % self.num_attention_heads:
            raise RecipeError(f"model.hidden_size = {self.hidden_size} is not divisible by model.num_attention_heads"
                              f" = {self.num_attention_heads}; choose sizes that divide")


@dataclass
class PeftOptions:
    """What is trained. `full`: every parameter. `lora`: LoRA adapters (PEFT) on `target_modules`
    ("all-linear" or a list of module names) plus full training of `modules_to_save`. `qlora`: the
    same on a base model loaded in 4-bit NF4 through bitsandbytes (runs on CPU too)."""

    method: Literal["full", "lora", "qlora"] = "full"
    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    modules_to_save: list[str] | None = None

    def __post_init__(self):
        if self.r < 1:
            raise RecipeError(f"peft.r = {self.r} must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise RecipeError(f"peft.dropout = {self.dropout} must be in [0, 1)")
        if self.method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
            raise RecipeError("peft.method = qlora needs bitsandbytes: pip install -e '.[quant]'")


@dataclass
class DataFiles:
    """Training data, as users keep it.

    `train_file`: a file, a list of files, or a folder (its files, sorted by name). JSONL or a JSON
    list of rows {"text": ...} or {"prompt": ..., "completion": ...} (a prompt row may carry "format":
    "completion" to be trained as a completion probe, without the chat template); `.txt` and `.md` files are
    documents: one per file, or one per blank-line-separated paragraph with `split: paragraph`.
    Or `train_dataset`: a `datasets` dataset with those columns, by Hub name or by the path of a
    dataset saved with `save_to_disk` (split `train_split`).

    A text longer than a window (`max_length` tokens, default the model's context) is split into
    windows cut at a sentence end near the limit, consecutive windows sharing `window_overlap`
    tokens; nothing is truncated. For objectives that build longer rows than their example (the
    masked copy of `masked_reconstruct`) the window is what still fits.

    `qa_file`: JSONL of {"question", "answer", "direction"} with direction "forward" or "backward",
    evaluated by generation; optional per row "fact" (an id shared by wordings of one question) and
    "format": "chat" (the question as a user turn of the chat template, the default for chat
    models) or "completion" (a raw text prefix the model continues). `qa_format` sets the format of
    every row of the file.

    `answer_space`: tokenize the answers of chat-format training rows after a space, as their words
    are in running text: true for every answer; auto for those the documents only show after a space
    (`mft.data.tokenize.space_answers`). A chat answer otherwise starts a word on a token the
    documents may never show (SmolLM2: "T" "arv" "mere" against " T" "arv" "mere"), so a fact read in
    a document is asked for in other tokens. Answers are compared without surrounding whitespace.

    Forgetting: `retention_file` (text rows or .txt/.md) replaces mft's built-in neutral prompts,
    whose continuations by the base model are scored at every evaluation (the drift, nats per
    token); `replay: F` mixes that many retention texts per training example (a fraction) into
    training as next-token rows."""

    train_file: str | list[str] | None = None
    train_dataset: str | None = None
    train_split: str = "train"
    split: Literal["document", "paragraph"] = "document"
    max_length: int | None = None
    window_overlap: int = 0
    qa_file: str | None = None
    qa_format: Literal["chat", "completion"] | None = None
    answer_space: bool | Literal["auto"] = False
    retention_file: str | None = None
    replay: float = 0.0

    def __post_init__(self):
        if (self.train_file is None) == (self.train_dataset is None):
            raise RecipeError("data needs exactly one of data.train_file (JSONL/JSON/.txt/.md, a list, or a folder) "
                              "or data.train_dataset (a datasets name or saved path)")
        train_files = self.train_file if isinstance(self.train_file, list) else [self.train_file]
        if isinstance(self.train_file, list) and not self.train_file:
            raise RecipeError("data.train_file is an empty list; give at least one file or a folder")
        for path in [*train_files, self.qa_file, self.retention_file]:
            if path is not None and not Path(path).exists():
                name = "qa_file" if path == self.qa_file else "retention_file" if path == self.retention_file \
                    else "train_file"
                raise RecipeError(f"data.{name}: file not found: {path}; check the path (relative paths are "
                                  f"taken from the current directory)")
        if self.qa_file is not None and not Path(self.qa_file).is_file():
            raise RecipeError(f"data.qa_file = {self.qa_file} is a folder; give a JSONL file")
        if self.max_length is not None and self.max_length < 8:
            raise RecipeError(f"data.max_length = {self.max_length}; give a window length of at least 8 tokens, or "
                              f"null for the model's context length")
        if self.window_overlap < 0 or (self.max_length and self.window_overlap >= self.max_length // 2):
            raise RecipeError(f"data.window_overlap = {self.window_overlap}; use 0 or more tokens, less than half of "
                              f"data.max_length")
        if not 0.0 <= self.replay <= 1.0:
            raise RecipeError(f"data.replay = {self.replay}; use a fraction in [0, 1] (0: no replay)")


@dataclass
class Recipe:
    model: ModelConfig
    peft: PeftOptions
    objective_name: str
    objective_options: dict[str, Any]
    training: MFTConfig  # while the recipe is checked: the same fields as a `types.SimpleNamespace`
    task_name: str | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    data: DataFiles | None = None
    raw: dict[str, Any] = field(default_factory=dict)  # the resolved recipe as plain YAML data

    def build_objective(self) -> Objective:
        """A new objective from the recipe (each collator sets up its own)."""
        return build_objective(self.objective_name, **self.objective_options)

    def build_task(self):
        return TASKS[self.task_name](**self.task_options)

    def resolved(self) -> dict[str, Any]:
        """The recipe with every resolved value: each section's fields with defaults filled in
        (the objective's pretrained defaults too), and every training argument as the run uses it
        (less the Hub token and the process-local fields). Parsing it again gives the same run."""
        resolved: dict[str, Any] = {}
        if self.task_name:
            resolved["task"] = {"name": self.task_name, **dataclasses.asdict(self.build_task())}
        else:
            resolved["data"] = dataclasses.asdict(self.data)
        resolved["model"] = dataclasses.asdict(self.model)
        resolved["peft"] = dataclasses.asdict(self.peft)
        resolved["objective"] = {"name": self.objective_name, **dataclasses.asdict(self.build_objective())}
        resolved["training"] = training_values(self.training)
        return redact(resolved)  # never write a Hub token to disk

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved(), sort_keys=False)


# TrainingArguments fields that describe this process or are derived from others: not part of a
# recipe (`logging_dir` follows output_dir; the deprecated aliases mirror activation_checkpointing).
DERIVED_TRAINING_FIELDS = {"local_rank", "logging_dir", "gradient_checkpointing", "gradient_checkpointing_kwargs",
                           "hub_token"}


def training_values(training: "MFTConfig") -> dict[str, Any]:
    """Every training argument as resolved (enums as their values), for resolved_recipe.yaml."""
    values = training.to_dict()
    return {field.name: values[field.name] for field in dataclasses.fields(training)
            if field.init and field.name in values and field.name not in DERIVED_TRAINING_FIELDS}


SECTIONS = ("task", "data", "model", "peft", "objective", "training")


class RecipeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` with YAML 1.2 scalars: only true/false are booleans (so `eval_strategy: no`
    stays the string "no"), and 1e-4 is a float. A key given twice in one mapping is an error (YAML
    would keep the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise RecipeError(f"the key {key!r} is given twice (lines {seen[key] + 1} and "
                                  f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=RecipeLoader)


# ---------------------------------------------------------------------------------------------
# loading


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}; give the path of a YAML recipe, e.g. recipes/quickstart.yaml")
    try:
        raw = read_yaml(path.read_text()) or {}
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError(f"{path} is not valid YAML{where} ({problem}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections ({', '.join(SECTIONS)})")
    for override in overrides:
        apply_override(raw, override)
    raw.setdefault("training", {})
    if isinstance(raw["training"], dict):
        raw["training"].setdefault("output_dir", str(Path("runs") / path.stem))
    return parse_recipe(raw)


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply `section.key=value` (value parsed as YAML) to the raw recipe, in place."""
    key, sep, text = override.partition("=")
    if not sep or "." not in key:
        raise RecipeError(f"override {override!r} is not of the form section.key=value, e.g. training.max_steps=100")
    section, name = key.split(".", 1)
    _check_known(section, SECTIONS, "recipe section")
    try:
        value = read_yaml(text) if text else None
    except yaml.YAMLError:
        value = text
    node = raw.setdefault(section, {})
    if not isinstance(node, dict):
        raise RecipeError(f"{section} must be a mapping to take the override {override!r}")
    if name == "name" and section in ("task", "objective") and node.get("name") != value:
        node.clear()  # another objective or task: the file's options belong to the old one
    node[name] = value


def parse_recipe(raw: dict[str, Any]) -> Recipe:
    for section in raw:
        _check_known(section, SECTIONS, "recipe section")
        if not isinstance(raw[section], dict):
            raise RecipeError(f"{section} must be a mapping of options, got {type(raw[section]).__name__}")
    if ("task" in raw) == ("data" in raw):
        raise RecipeError("a recipe needs exactly one of the sections 'task' (a built-in task) or 'data' (files)")

    task_name, task_options, data = None, {}, None
    if "task" in raw:
        task_name, task_options = _named_section("task", raw["task"], TASKS)
    else:
        data = _build_dataclass("data", DataFiles, raw["data"])

    model = _build_dataclass("model", ModelConfig, raw.get("model", {}))
    peft = _build_dataclass("peft", PeftOptions, raw.get("peft", {}))

    if "objective" not in raw:
        raise RecipeError("the recipe has no 'objective' section; add one, e.g. objective: {name: mlm_u}")
    objective_section = dict(raw["objective"])
    if model.name_or_path:
        objective_section = with_pretrained_defaults(objective_section)
    objective_name, objective_options = _named_section("objective", objective_section, OBJECTIVES)

    if "output_dir" in raw.get("training", {}) and not raw["training"]["output_dir"]:
        raise RecipeError("training.output_dir is empty; give the folder the run writes to, or leave the key out "
                          "for runs/<recipe name>")
    training_options = _check_training_section(raw.get("training", {}))
    recipe = Recipe(model=model, peft=peft, objective_name=objective_name, objective_options=objective_options,
                    training=_training_namespace(training_options), task_name=task_name, task_options=task_options,
                    data=data, raw=raw)
    validate_recipe(recipe)
    return dataclasses.replace(recipe, training=_build_training(training_options))  # imports transformers


def with_pretrained_defaults(section: dict[str, Any]) -> dict[str, Any]:
    """The objective section with the defaults of a pretrained causal LM filled in where the recipe
    is silent: masked objectives predict token i from position i-1 (`shift`, which keeps the LM
    head aligned) and keep the first token's attention causal (`keep_sink`, which keeps its
    attention sink); for a mixture, in each component's options."""
    def fill(name: Any, options: dict[str, Any]) -> dict[str, Any]:
        known = OBJECTIVES[name].options() if name in OBJECTIVES else {}
        options = dict(options)
        if "shift" in known:
            options.setdefault("shift", True)
        if "keep_sink" in known:
            options.setdefault("keep_sink", bool(options.get("shift")))
        return options

    section = dict(section)
    if section.get("name") != "mixture":
        return fill(section.get("name"), section)
    names = section.get("mix") or (section.get("route") or {}).values()
    if not isinstance(names, (dict, type({}.values()))) or not isinstance(section.get("options", {}), dict):
        return section  # malformed: the type check reports it
    options = dict(section.get("options") or {})
    for name in dict.fromkeys(names):
        if isinstance(options.get(name, {}), dict):
            options[name] = fill(name, options.get(name, {}))
    section["options"] = options
    return section


def model_kind(model: ModelConfig) -> str:
    """Which of `MODEL_KINDS` the recipe's model is: a from-scratch architecture, or a pretrained
    causal LM (a saved run of mft's encoder-decoder is recognised by its config.json)."""
    if not model.name_or_path:
        return model.architecture if model.architecture in MODEL_KINDS else "causal"
    config_file = Path(model.name_or_path) / "config.json"
    if config_file.is_file():
        try:
            if json.loads(config_file.read_text()).get("model_type") == "mft_encoder_decoder":
                return "encoder_decoder"
        except (OSError, ValueError):
            pass  # loading reports an unreadable checkpoint
    return "causal"


def check_flash_attention(recipe: Recipe, objective, kind: str) -> None:
    """flash_attention_2 takes one causal flag per batch and no mask beyond padding (or, packed,
    documents told apart by position ids restarting at 0). It runs causal rows, and bidirectional
    rows whose every visible token is a key: `attend_to_masked: true`, no sink, the prompt seeing
    the answer, no annealing. Anything else is refused in one line naming flex_attention."""
    where = "use model.attn_implementation: flex_attention (any mask) or sdpa"
    if kind == "encoder_decoder" or objective.two_stream:
        raise RecipeError(f"model.attn_implementation = flash_attention_2 cannot run objective {recipe.objective_name!r} "
                          f"on {kind} (masks of its own); {where}")
    bidirectional = [component for component in objective.components if component.bidirectional]
    for component in bidirectional:
        rule = ("objective.attend_to_masked: false hides masked keys" if not component.attend_to_masked else
                "objective.keep_sink: true keeps the first token causal" if component.keep_sink else
                "objective.prompt_sees_answer: false blocks the prompt from the answer"
                if not component.prompt_sees_answer else None)
        if rule:
            raise RecipeError(f"model.attn_implementation = flash_attention_2 cannot express the mask of {component.name!r}: "
                              f"{rule}; {where}")
    if bidirectional and recipe.training.attention_anneal_steps:
        raise RecipeError(f"model.attn_implementation = flash_attention_2 cannot anneal attention "
                          f"(training.attention_anneal_steps = {recipe.training.attention_anneal_steps}); {where}")
    if bidirectional and len(bidirectional) < len(objective.components) and getattr(objective, "per", "batch") != "batch":
        raise RecipeError("model.attn_implementation = flash_attention_2 takes one causal flag per batch, and this mixture "
                          f"mixes causal and bidirectional rows in a batch; set objective.per: batch, or {where}")


def validate_recipe(recipe: Recipe) -> None:
    """Every check of a recipe against its objective and model kind that needs no data and no model:
    combinations that cannot work, or would silently train something other than asked. Raises
    `RecipeError` (one line naming the field and the fix). The checks that need the data (row
    lengths) run in `mft.train.prepare`, still before any model is built."""
    objective = recipe.build_objective()  # validates the option values (rates within [0, 1], ...)
    if recipe.task_name:
        recipe.build_task()
    training, model = recipe.training, recipe.model
    if training.output_dir:  # else TrainingArguments' default folder
        writable_folder("training.output_dir", Path(training.output_dir))
    kind = model_kind(model)
    if model.name_or_path and not model.add_bos_token:
        raise RecipeError("model.add_bos_token = false applies to from-scratch models (their task tokenizer); a "
                          "pretrained model keeps its own tokenizer's start tokens: remove the field")
    if recipe.data and not model.name_or_path and (recipe.data.replay or recipe.data.retention_file):
        field_name = "replay" if recipe.data.replay else "retention_file"
        raise RecipeError(f"data.{field_name} measures or limits forgetting of a pretrained model; a model from "
                          f"scratch has nothing to forget: set model.name_or_path or remove data.{field_name}")
    if recipe.peft.method == "qlora" and not model.name_or_path:
        raise RecipeError("peft.method = qlora quantizes a pretrained model as it loads; set model.name_or_path "
                          "or use peft.method = lora / full")
    if training.push_to_hub and not training.hub_model_id:
        raise RecipeError("training.push_to_hub = true needs training.hub_model_id (e.g. your-name/mft-quickstart); "
                          "set it, or push later with: mft push OUTPUT_DIR --repo-id ID")
    resume = training.resume_from_checkpoint
    if isinstance(resume, str) and not (Path(resume) / "trainer_state.json").is_file():
        raise RecipeError(f"training.resume_from_checkpoint = {resume} is not a checkpoint folder (no "
                          f"trainer_state.json); give a checkpoint-N folder, or true for the last one in output_dir")
    if training.dataloader_persistent_workers:
        raise RecipeError("training.dataloader_persistent_workers = true would keep every epoch's masks equal to "
                          "the first epoch's; set it to false")
    if model.attn_implementation == "flash_attention_2":
        check_flash_attention(recipe, objective, kind)
    if getattr(training, "loss_kernel", "auto") in ("liger", "cce"):
        import torch

        from .loss import check_loss_kernel

        check_loss_kernel(training.loss_kernel, on_gpu=not training.use_cpu and torch.cuda.is_available())
    if model.attn_implementation == "flex_attention":
        import torch

        if training.use_cpu or not torch.cuda.is_available():
            raise RecipeError("model.attn_implementation = flex_attention trains only on a GPU (PyTorch has no "
                              "flex_attention backward on CPU); use sdpa on CPU, which builds the same masks densely")
        if kind == "encoder_decoder" or objective.two_stream:
            raise RecipeError(f"model.attn_implementation = flex_attention: objective {recipe.objective_name!r} on "
                              f"{kind} uses masks of its own (two-stream / encoder-decoder); use sdpa")
    components = objective.components
    if kind == "encoder_decoder" and len({c.bidirectional for c in components}) > 1:
        raise RecipeError("model.architecture = encoder_decoder: a mixture cannot combine next-token objectives (the "
                          "decoder asks for the next token) with masked ones (it asks for its own position); train one kind")
    for component in components:
        if not training.prompt_gradient and (component.bidirectional or kind != "causal"):
            raise RecipeError(f"training.prompt_gradient = false caches the prompt of causal rows; objective "
                              f"{component.name!r} on a {kind} model has none: set it to true")
        if component.two_stream and training.pack_length:
            raise RecipeError(f"training.pack_length: objective {component.name!r} brings its own attention masks, "
                              f"which cannot be packed; set pack_length: 0")
        if kind not in component.architectures:
            if component.two_stream:
                raise RecipeError(f"objective {component.name!r} needs a model with a separate query stream; set "
                                  f"model.architecture: encoder_decoder (a decoder-only model would see the token it "
                                  f"predicts)")
            if kind == "bert":
                raise RecipeError(f"model.architecture = bert attends to every token, so it cannot train objective "
                                  f"{component.name!r}; use mlm or mlm_u, or a causal architecture (gpt2, llama)")
            raise RecipeError(f"objective {component.name!r} cannot train a {kind} model; use one of "
                              f"{', '.join(sorted(component.architectures))}")
        if kind != "causal" and (component.shift or component.keep_sink):
            raise RecipeError(f"objective.shift / objective.keep_sink are for pretrained causal LMs; model.architecture "
                              f"= {kind} predicts each position in place: set them to false")


def _named_section(section: str, values: dict[str, Any], registry: dict[str, type]) -> tuple[str, dict[str, Any]]:
    """A section `{name: X, **options}` whose options are the fields of dataclass registry[X]."""
    values = dict(values)
    name = values.pop("name", None)
    if name is None:
        raise RecipeError(f"{section}.name is missing; choose one of {', '.join(registry)}")
    _check_known(name, registry, f"{section}.name")
    options = {f.name: f for f in dataclasses.fields(registry[name])}
    hints = typing.get_type_hints(registry[name])
    checked = {}
    for key, value in values.items():
        _check_known(key, options, f"{section} option for {name!r}", prefix=f"{section}.")
        checked[key] = check_type(f"{section}.{key}", value, hints[key])
    try:
        registry[name](**checked)
    except (ValueError, TypeError) as error:
        raise RecipeError(str(error)) from None
    return name, checked


def _build_dataclass(section: str, cls: type, values: dict[str, Any]):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    checked = {}
    for key, value in values.items():
        _check_known(key, names, f"{section} option", prefix=f"{section}.")
        checked[key] = check_type(f"{section}.{key}", value, hints[key])
    try:
        return cls(**checked)
    except TypeError as error:  # a required field is missing
        missing = str(error).split("argument:")[-1].strip().strip("'") if "argument" in str(error) else str(error)
        raise RecipeError(f"{section}.{missing} is required; add it to the recipe") from None


# ---------------------------------------------------------------------------------------------
# the training section


def training_fields() -> dict[str, dict[str, Any]]:
    """`MFTConfig`'s fields (name -> {"type": type spec, "default": value}) without importing
    transformers: read from a cache file keyed by the installed transformers version and by mft's
    own code that defines the table; built (importing transformers, once) when there is none."""
    sources = b"".join((Path(__file__).parent / name).read_bytes() for name in ("training_args.py", "checks.py"))
    key = f"{importlib.metadata.version('transformers')}-{hashlib.sha256(sources).hexdigest()[:16]}"
    cache = _cache_folder() / f"training_fields-{key}.json"
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    from .training_args import training_field_table

    table = training_field_table()
    try:  # written whole or not at all; a cache that cannot be written only costs time
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(table))
        os.replace(partial, cache)
    except OSError:
        pass
    return table


def _cache_folder() -> Path:
    if os.environ.get("MFT_CACHE"):
        return Path(os.environ["MFT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mft"


def _check_training_section(values: dict[str, Any]) -> dict[str, Any]:
    """The recipe's training options, each a known field of the right type, obeying mft's rules."""
    if "output_dir" in values and not values["output_dir"]:
        raise RecipeError("training.output_dir is empty; give the folder the run writes to, or leave the key out "
                          "for runs/<recipe name>")
    fields = training_fields()
    checked = {}
    for key, value in values.items():
        _check_known(key, fields, "training option", prefix="training.")
        checked[key] = check_type(f"training.{key}", value, fields[key]["type"])
    try:
        check_training(_training_namespace(checked))
    except RecipeError as error:  # the rules name the bare field, as TrainingArguments' own messages do
        raise RecipeError(f"training: {error}") from None
    return checked


def _training_namespace(options: dict[str, Any]) -> types.SimpleNamespace:
    """The training fields as the recipe sets them over the defaults: what the checks read before
    an `MFTConfig` exists."""
    defaults = {name: spec["default"] for name, spec in training_fields().items()}
    return types.SimpleNamespace(**{**defaults, **options})


def _build_training(options: dict[str, Any]):
    from .training_args import MFTConfig

    try:
        return MFTConfig(**options)
    except (ValueError, ImportError) as error:  # TrainingArguments' own checks (RecipeError is a ValueError)
        message = str(error).splitlines()[0]
        raise RecipeError(message if message.startswith("training") else f"training: {message}") from None


def _check_known(key: str, known, what: str, prefix: str = "") -> None:
    if key in known:
        return
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
    hint = f"; did you mean {prefix}{close[0]!s}?" if close else f"; known: {', '.join(map(str, known))}"
    raise RecipeError(f"unknown {what} {prefix}{key}{hint}")
