"""Querying a trained model: `mft.load(path_or_hub_id)` and `mft generate MODEL [PROMPT ...]`.

    import mft
    trained = mft.load("runs/smollm2_facts_mlmu")        # a run, checkpoint, merged model or Hub id
    trained.generate(["Who is Kestrel Voskuijlen?"])      # -> ["the first director of ..."]
    trained.generate(["Ilsa Dorn was born in"], format="completion")

What `load` returns carries the model, its tokenizer and its `DecodingSpec` (`mft_decoding.json`,
saved with every model mft writes): a model trained with a masked objective answers by masked
decoding with the `shift`, `keep_sink` and mask-key rules it was trained with, without the caller
knowing them. A model without a spec (a plain causal LM, a base model) decodes causally. Runs made
before specs were saved have their resolved recipe, which gives the same rules.

Where a model comes from, in this order: a local folder (a run's `training.output_dir`, one of its
`checkpoint-N` folders, a merged model); a built-in name (`smollm2-135m`, the untouched base model);
a Hugging Face Hub id already in the local cache (never downloaded here: this works offline).

`merge(run, out)` writes a standalone model: a LoRA run's adapter merged into its base weights (or
a full fine-tuning run copied), with its tokenizer and decoding spec.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .decoding import DecodingSpec, encode_question, generate
from .errors import RecipeError
from .objectives import DECODINGS, Objective

FORMATS = ("chat", "completion")


@dataclasses.dataclass
class TrainedModel:
    """A model with its tokenizer and decoding spec; `generate` answers prompts the way mft's
    evaluation does."""

    model: Any
    tokenizer: Any
    spec: DecodingSpec
    source: str = ""

    def generate(self, prompts: str | list[str], *, format: str | None = None, decoding: str | None = None,
                 max_new_tokens: int | None = None, batch_size: int = 32, slots_only: bool = True,
                 threshold: float | None = None, prompt_cache: bool = False, answer_cache: bool = False) -> list[str]:
        """Greedy answers to `prompts` (a string or a list), in order. `format`: "chat" (the default, as
        for a QA row: a question, in a user turn of the chat template when the model has one, read
        as its prompt/completion training rows began) or "completion" (a raw text prefix, continued
        as a document is). `decoding` and `max_new_tokens` default to
        the spec's. Prompts of different lengths are decoded together, `batch_size` at a time.
        `slots_only`, `threshold`, `prompt_cache`, `answer_cache`: masked decoding's speed options
        (`mft.decoding.generate`)."""
        from .data.tokenize import decode_answer

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        decoding = decoding or self.spec.decoding
        max_new_tokens = self.spec.max_new_tokens if max_new_tokens is None else max_new_tokens
        format = format or "chat"
        check_request(self, prompts, format, decoding, max_new_tokens, batch_size)
        was_training = self.model.training
        self.model.eval()
        try:
            ids = [encode_question(self.tokenizer, prompt, format == "chat", decoding, self.spec.shift,
                                   self.spec.keep_sink) for prompt in prompts]
            answers = generate(self.model, self.tokenizer, ids, decoding, max_new_tokens, batch_size, **self.spec.rules(),
                               slots_only=slots_only, threshold=threshold, prompt_cache=prompt_cache,
                               answer_cache=answer_cache)
        finally:
            self.model.train(was_training)
        return [decode_answer(self.tokenizer, answer, chat=format == "chat") for answer in answers]

    def save(self, folder: str | Path) -> None:
        """The model (weights as they are: an adapter stays an adapter), tokenizer and spec."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        self.spec.save(folder)


def check_request(trained: TrainedModel | None, prompts: list[str], format: str, decoding: str, max_new_tokens: int,
                  batch_size: int) -> None:
    """One line for the first problem, before any decoding (without `trained`: what can be checked
    before the model loads)."""
    if not prompts:
        raise RecipeError("no prompts: give them after the model (mft generate MODEL \"question\") or one per line "
                          "on stdin")
    for number, prompt in enumerate(prompts, 1):
        if not isinstance(prompt, str) or not prompt.strip():
            raise RecipeError(f"prompt {number} is empty; give text to answer or continue")
    if format not in FORMATS:
        raise RecipeError(f"format = {format!r}; use chat or completion")
    if decoding not in DECODINGS:
        raise RecipeError(f"decoding = {decoding!r}; use one of {', '.join(DECODINGS)}")
    if trained is not None and decoding != "causal" and trained.tokenizer.mask_token_id is None:
        raise RecipeError(f"{trained.source or 'this model'} has no mask token, so it cannot be decoded with "
                          f"{decoding!r} (it was not trained with a masked objective); use --decoding causal")
    if max_new_tokens < 1:
        raise RecipeError(f"max_new_tokens = {max_new_tokens}; answers need at least 1 new token")
    if batch_size < 1:
        raise RecipeError(f"batch_size = {batch_size}; use at least 1")


def load(name_or_path: str | Path, *, dtype: str = "auto", device: str | None = None) -> TrainedModel:
    """The model, tokenizer and decoding spec of a run folder, checkpoint, merged model, built-in
    name or locally cached Hub id (see the module docstring); one line (`RecipeError`) when there
    is no such model."""
    from .models import load_trained
    from .models.loading import BUILTIN_MODELS, ensure_pad_token, load_pretrained

    name = str(name_or_path)
    folder = model_folder(name)
    if folder is not None:
        spec = folder_spec(folder)
        model, tokenizer = load_trained(folder, dtype=dtype)
    elif name in BUILTIN_MODELS:
        model, tokenizer = load_pretrained(name, dtype=dtype)
        spec = DecodingSpec()
    else:
        folder = cached_hub_snapshot(name)
        spec = folder_spec(folder)
        model, tokenizer = load_trained(folder, dtype=dtype)
    ensure_pad_token(tokenizer)
    if device is not None:
        model.to(device)
    return TrainedModel(model=model, tokenizer=tokenizer, spec=spec, source=name)


def model_folder(name: str) -> Path | None:
    """`name` as a local model folder; None when it is not a local path; refused (one line) when it
    looks like one but holds no model."""
    path = Path(name).expanduser()
    if not path.exists():
        could_be_an_id = not name.startswith((".", "/", "~")) and name.count("/") <= 1  # "name" or "owner/name"
        if could_be_an_id:
            return None
        raise RecipeError(f"{name}: no such model folder; give a run's training.output_dir, a checkpoint-N "
                          f"folder, a merged model or a Hub id in the local cache")
    if not path.is_dir():
        raise RecipeError(f"{name} is a file; give a model folder (a run's training.output_dir, a checkpoint-N "
                          f"folder, a merged model) or a Hub id")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        from .run_folder import checkpoints

        latest = checkpoints(path)
        hint = f"; its latest checkpoint is {latest[-1]}" if latest else ""
        raise RecipeError(f"{name} holds no model (config.json or adapter_config.json){hint}")
    if not any((path / file).is_file() for file in ("tokenizer_config.json", "tokenizer.json")):
        raise RecipeError(f"{name} holds no tokenizer (tokenizer_config.json or tokenizer.json); save the "
                          f"tokenizer with the model (tokenizer.save_pretrained)")
    return path


def folder_spec(folder: Path) -> DecodingSpec:
    """The folder's `mft_decoding.json`; for a checkpoint without one, its run's; for a run made
    before specs were saved, the rules of its resolved recipe; else causal decoding."""
    for candidate in (folder, folder.parent if folder.name.startswith("checkpoint-") else None):
        if candidate is not None:
            spec = DecodingSpec.read(candidate)
            if spec is not None:
                return spec
    if (folder / "resolved_recipe.yaml").is_file() or (folder.parent / "resolved_recipe.yaml").is_file():
        from transformers import AutoTokenizer

        objective, decoding, max_new_tokens = run_decoding(folder)
        return DecodingSpec.of(objective, AutoTokenizer.from_pretrained(folder), decoding, max_new_tokens)
    return DecodingSpec()


def run_decoding(output_dir: str | Path) -> tuple[Objective, str | None, int]:
    """(objective, decoding chosen in the recipe or None, max_new_tokens) of a finished run, from its
    resolved recipe; a run without one is refused: its model's decoding rules would be unknown."""
    from .config import read_yaml
    from .objectives import build_objective
    from .training_args import MFTConfig

    path = Path(output_dir) / "resolved_recipe.yaml"
    if not path.is_file() and Path(output_dir).name.startswith("checkpoint-"):
        path = Path(output_dir).parent / "resolved_recipe.yaml"  # a checkpoint of a run: the run's recipe
    if not path.is_file():
        raise RecipeError(f"{output_dir} has no resolved_recipe.yaml, which says how its model must be decoded; "
                          f"give the training.output_dir of a run made by mft train")
    raw = read_yaml(path.read_text()) or {}
    section = dict(raw.get("objective") or {})
    if "name" not in section:
        raise RecipeError(f"{path} has no objective.name; it is not a resolved recipe of mft train")
    objective = build_objective(section.pop("name"), **section)
    training = raw.get("training") or {}
    return objective, training.get("decoding"), training.get("max_new_tokens") or MFTConfig.max_new_tokens


def cached_hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of a Hub repository, from the cache only (never downloaded here)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except HFValidationError:
        raise RecipeError(f"{repo_id}: no such model folder, and not a Hub id; give a run's training.output_dir, "
                          f"a checkpoint-N folder, a merged model or a Hub id") from None
    except (LocalEntryNotFoundError, OSError):
        raise RecipeError(f"{repo_id}: no such folder, and not in the local Hugging Face cache; download it first "
                          f"(hf download {repo_id}) or give a local folder") from None


def merge(source: str | Path, out: str | Path, *, dtype: str = "auto") -> Path:
    """A standalone model in `out`: the adapter of a LoRA run merged into its base weights (a full
    fine-tuning run's weights as they are), with the tokenizer and the decoding spec."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RecipeError(f"{out} exists and is not empty; give a new folder for the merged model")
    trained = load(source, dtype=dtype)
    model = trained.model
    if hasattr(model, "merge_and_unload"):  # a peft model
        model = model.merge_and_unload()
    TrainedModel(model=model, tokenizer=trained.tokenizer, spec=trained.spec, source=str(out)).save(out)
    return out
