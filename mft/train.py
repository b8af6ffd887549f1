"""`python -m mft.train RECIPE.yaml [section.key=value ...]` (also under `accelerate launch`).

One run: read and check the recipe, build the data, tokenizer, model, objective and collator, train
with `MFTTrainer`, evaluate forward/backward QA, and leave in `training.output_dir`:

    the trained model and tokenizer, resolved_recipe.yaml, eval_results.json, report.md, accuracy.png

Every check of the recipe and the data runs before the model is built; a problem exits with
status 2 and one line on stderr that names the field and the fix.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from .collator import MFTCollator
from .config import Recipe, RecipeError, load_recipe
from .data import TokenizedDataset, build_word_tokenizer, load_data_files, row_texts
from .eval import flatten_metrics, write_report
from .models import build_model, count_parameters, load_tokenizer
from .models.loading import ensure_mask_token, ensure_pad_token, load_pretrained
from .models.peft import apply_peft, quantization_config
from .trainer import MFTTrainer, QASet

USAGE = "usage: python -m mft.train RECIPE.yaml [section.key=value ...]   e.g. training.max_steps=100"


def prepare(recipe: Recipe):
    """Everything that can fail on bad input, before any model exists: data, objective, tokenizer,
    examples. Returns (data, tokenizer, objective, train_dataset)."""
    if recipe.task_name:
        data = recipe.build_task().build()
    else:
        data = load_data_files(recipe.data.train_file, recipe.data.qa_file, recipe.data.train_dataset,
                               recipe.data.train_split)
    if not data.train:
        raise RecipeError("the training set is empty; check the task sizes or data.train_file")
    if recipe.training.eval_strategy != "no" and not data.qa:
        raise RecipeError("training.eval_strategy asks for evaluation but there are no QA rows; add data.qa_file "
                          "or set training.eval_strategy=no")
    if recipe.training.push_to_hub and not recipe.training.hub_model_id:
        raise RecipeError("training.push_to_hub = true needs training.hub_model_id (e.g. your-name/mft-quickstart); "
                          "set it, or push later with: mft push OUTPUT_DIR --repo-id ID")
    resume = recipe.training.resume_from_checkpoint
    if isinstance(resume, str) and not (Path(resume) / "trainer_state.json").is_file():
        raise RecipeError(f"training.resume_from_checkpoint = {resume} is not a checkpoint folder (no "
                          f"trainer_state.json); give a checkpoint-N folder, or true for the last one in output_dir")
    if recipe.training.dataloader_persistent_workers:
        raise RecipeError("training.dataloader_persistent_workers = true would keep every epoch's masks equal to "
                          "the first epoch's; set it to false")
    pretrained = bool(recipe.model.name_or_path)
    if recipe.peft.method == "qlora" and not pretrained:
        raise RecipeError("peft.method = qlora quantizes a pretrained model as it loads; set model.name_or_path "
                          "or use peft.method = lora / full")
    if pretrained:
        default_options_for_pretrained(recipe)
    objective = recipe.build_objective()
    if recipe.model.attn_implementation == "flash_attention_2" and objective.bidirectional:
        raise RecipeError(f"model.attn_implementation = flash_attention_2 cannot run objective "
                          f"{recipe.objective_name!r}, whose attention is bidirectional; use sdpa or eager")
    check_architecture(recipe, objective)
    if recipe.model.attn_implementation == "flash_attention_2" and recipe.training.pack_length:
        raise RecipeError("training.pack_length needs a 4D attention mask, which flash_attention_2 ignores; use sdpa "
                          "or eager, or pack_length: 0")
    if pretrained:
        tokenizer = load_tokenizer(recipe.model)
        note = ensure_pad_token(tokenizer)
        if note:
            print(f"mft: {note}", flush=True)
    else:
        texts = [text for row in data.train + data.qa for text in row_texts(row)] + objective.vocabulary_texts()
        tokenizer = build_word_tokenizer(texts, add_bos_token=recipe.model.add_bos_token)
    train_dataset = TokenizedDataset.from_rows(tokenizer, data.train)
    if recipe.training.pack_length:
        longest_example = max(train_dataset.examples, key=lambda example: len(example["input_ids"]))
        longest = max(len(row) for row in MFTCollator(recipe.build_objective(), tokenizer).rows(longest_example))
        if longest > recipe.training.pack_length:
            raise RecipeError(f"training.pack_length = {recipe.training.pack_length} is shorter than the longest "
                              f"training row ({longest} tokens); raise it")
    if not pretrained:  # rows can be longer than examples (masked_reconstruct shows a copy first)
        longest_example = max(train_dataset.examples, key=lambda example: len(example["input_ids"]))
        longest = max(len(row) for row in MFTCollator(recipe.build_objective(), tokenizer).rows(longest_example))
        if longest > recipe.model.max_position_embeddings:
            raise RecipeError(f"model.max_position_embeddings = {recipe.model.max_position_embeddings} is shorter "
                              f"than the longest training sequence ({longest} tokens); raise it")
    return data, tokenizer, objective, train_dataset


def check_architecture(recipe: Recipe, objective) -> None:
    """Refuse objective/model pairs that would train something else than asked, before any model
    exists: PLM needs a two-stream model; BERT sees every token, so it serves masked objectives
    only; shifted prediction and the attention sink are for pretrained causal LMs."""
    from .objectives import Mixture

    architecture = "pretrained" if recipe.model.name_or_path else recipe.model.architecture
    components = list(objective.components) if isinstance(objective, Mixture) else [objective]
    config_file = Path(recipe.model.name_or_path or "") / "config.json"
    if architecture == "pretrained" and config_file.is_file():  # a saved run, maybe of the encoder-decoder
        if json.loads(config_file.read_text()).get("model_type") == "mft_encoder_decoder":
            architecture = "encoder_decoder"
    if architecture == "pretrained" and not recipe.model.add_bos_token:
        raise RecipeError("model.add_bos_token = false applies to from-scratch models (their task tokenizer); a "
                          "pretrained model keeps its own tokenizer's start tokens: remove the field")
    if architecture == "encoder_decoder" and len({c.bidirectional for c in components}) > 1:
        raise RecipeError("model.architecture = encoder_decoder: a mixture cannot combine next-token objectives (the "
                          "decoder asks for the next token) with masked ones (it asks for its own position); train one kind")
    for component in components:
        if not recipe.training.prompt_gradient and (component.bidirectional or architecture in ("bert", "encoder_decoder")):
            raise RecipeError(f"training.prompt_gradient = false caches the prompt of causal rows; objective "
                              f"{component.name!r} on model.architecture = {architecture} has none: set it to true")
        if component.two_stream and recipe.training.pack_length:
            raise RecipeError(f"training.pack_length: objective {component.name!r} brings its own attention masks, "
                              f"which cannot be packed; set pack_length: 0")
        if component.two_stream and architecture != "encoder_decoder":
            raise RecipeError(f"objective {component.name!r} needs a model with a separate query stream; set "
                              f"model.architecture: encoder_decoder (a decoder-only model would see the token it predicts)")
        if architecture == "bert" and component.name not in ("mlm", "mlm_u"):
            raise RecipeError(f"model.architecture = bert attends to every token, so it cannot train objective "
                              f"{component.name!r}; use mlm or mlm_u, or a causal architecture (gpt2, llama)")
        if architecture in ("bert", "encoder_decoder") and (getattr(component, "shift", False)
                                                            or getattr(component, "keep_sink", False)):
            raise RecipeError(f"objective.shift / objective.keep_sink are for pretrained causal LMs; model.architecture "
                              f"= {architecture} predicts each position in place: set them to false")


def default_options_for_pretrained(recipe: Recipe) -> None:
    """Masked objectives on a pretrained causal LM predict token i from position i-1 (shift), which
    keeps its LM head aligned, and keep the first token's attention causal (keep_sink, which keeps
    its attention sink), unless the recipe says otherwise. Recorded in the resolved recipe."""
    from .objectives import OBJECTIVES

    def set_default(options: dict, name: str) -> None:
        known = OBJECTIVES[name].options()
        if "shift" in known and "shift" not in options:
            options["shift"] = True
        if "keep_sink" in known and "keep_sink" not in options:
            options["keep_sink"] = bool(options.get("shift"))

    if recipe.objective_name == "mixture":
        component_options = recipe.objective_options.setdefault("options", {})
        names = recipe.objective_options.get("mix") or (recipe.objective_options.get("route") or {}).values()
        for name in dict.fromkeys(names):
            set_default(component_options.setdefault(name, {}), name)
    else:
        set_default(recipe.objective_options, recipe.objective_name)


def checkpoint_to_resume(args) -> str | None:
    """`resume_from_checkpoint`: a folder as given; `true`: the last complete checkpoint-N in the
    output folder (checkpoints are renamed into place only once written, see `mft.trainer`), or
    None (a fresh start) when there is none yet."""
    resume = args.resume_from_checkpoint
    if resume is not True:
        return resume or None
    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    print(f"mft: resuming from {last}" if last else f"mft: no checkpoint in {args.output_dir} yet; starting fresh",
          flush=True)
    return last


def load_model(recipe: Recipe, tokenizer, objective):
    """The model, with a mask token when the objective needs one, wrapped for full/LoRA/QLoRA."""
    if not recipe.model.name_or_path:
        model = build_model(recipe.model, tokenizer)
        return apply_peft(model, recipe.peft, gradient_checkpointing=recipe.training.gradient_checkpointing)
    compute_dtype = torch.bfloat16 if recipe.training.bf16 else torch.float16 if recipe.training.fp16 else torch.float32
    quantization = quantization_config(recipe.peft, compute_dtype)
    model, _ = load_pretrained(
        recipe.model.name_or_path, gguf_file=recipe.model.gguf_file, dtype=recipe.model.dtype,
        attn_implementation=recipe.model.attn_implementation, trust_remote_code=recipe.model.trust_remote_code,
        quantization_config=quantization, device_map="cpu" if quantization and recipe.training.use_cpu else None)
    trainable_tokens = None
    if objective.needs_mask_token:
        had_mask_token = tokenizer.mask_token is not None
        print(f"mft: {ensure_mask_token(tokenizer, model)}", flush=True)
        if not had_mask_token:  # a reserved or new token: its embedding row must learn what a mask is
            trainable_tokens = [tokenizer.mask_token_id]
    model = apply_peft(model, recipe.peft, trainable_token_ids=trainable_tokens,
                       gradient_checkpointing=recipe.training.gradient_checkpointing)
    if recipe.peft.method != "full":  # the adapter names the base as the recipe did, not a local cache path
        model.peft_config["default"].base_model_name_or_path = recipe.model.name_or_path
    return model


def run(recipe: Recipe) -> dict[str, Any]:
    args = recipe.training
    data, tokenizer, objective, train_dataset = prepare(recipe)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "resolved_recipe.yaml").write_text(recipe.to_yaml())

    set_seed(args.seed)
    args.device  # sets up the process group now: ZeRO-3 partitions the model as it is built, across all ranks
    if args.deepspeed_plugin is not None and args.world_size > 1:
        import deepspeed  # on CPU accelerate sets up torch.distributed only; ZeRO-3 asks deepspeed.comm

        deepspeed.init_distributed(dist_backend="gloo" if args.use_cpu else None)
    model = load_model(recipe, tokenizer, objective)
    collator = MFTCollator(objective, tokenizer, seed=args.seed, pack_length=args.pack_length)
    trainable, total = count_parameters(model)
    print(f"mft: {recipe.objective_name} on {recipe.task_name or recipe.data.train_file or recipe.data.train_dataset}: "
          f"{len(train_dataset)} training examples, {len(data.qa)} QA items; "
          f"trainable parameters {trainable:,} of {total:,} ({recipe.peft.method}); "
          f"{args.world_size} process{'es' if args.world_size > 1 else ''}", flush=True)

    qa = QASet(data.qa)
    push, hub_token = args.push_to_hub, args.hub_token
    args.push_to_hub = False  # the Trainer neither creates the repo nor pushes: mft pushes once, at the end
    args.hub_token = None     # and the token is never pickled into training_args.bin
    trainer = MFTTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=qa or None,
                         data_collator=collator, processing_class=tokenizer)
    started = time.time()
    trainer.train(resume_from_checkpoint=checkpoint_to_resume(args))
    train_seconds = time.time() - started
    trainer.save_model()
    trainer.save_state()  # trainer_state.json: the whole log history, also when no checkpoint was kept

    results, predictions = {}, []
    if qa:
        results = trainer.evaluate_qa(qa, predictions)
        final_metrics = flatten_metrics(results)
        logged_now = any(entry.get("step") == trainer.state.global_step and final_metrics.keys() <= entry.keys()
                         for entry in trainer.state.log_history)
        if not logged_now:  # the last step was not an eval step: record the final figures too
            trainer.log(final_metrics)
    if trainer.is_world_process_zero():
        title = f"{recipe.objective_name} on {recipe.task_name or Path(recipe.data.train_file or recipe.data.train_dataset).name}"
        details = {"objective": recipe.objective_name, "decoding": trainer.decoding,
                   "model": recipe.model.name_or_path or f"{recipe.model.architecture} from scratch",
                   "fine-tuning": recipe.peft.method, "steps": trainer.state.global_step,
                   "train seconds": f"{train_seconds:.0f}", "trainable parameters": f"{trainable:,}"}
        write_report(output_dir, results, trainer.state.log_history, title, details, predictions if qa else None)
        summary = ", ".join(f"{d} {m['exact_match']:.3f} (n={m['n']})" for d, m in results.items())
        print(f"mft: done in {train_seconds:.0f} s; exact match: {summary or 'no QA set'}; "
              f"results in {output_dir}", flush=True)
        if push:
            from .hub import push_run

            url = push_run(output_dir, args.hub_model_id, token=hub_token, private=bool(args.hub_private_repo))
            print(f"mft: pushed {output_dir} to {url}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    try:
        recipe = load_recipe(argv[0], argv[1:])
        run(recipe)
    except RecipeError as error:
        print(f"mft: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
