"""`python -m mft.train RECIPE.yaml [section.key=value ...]` (also under `accelerate launch`).

One run: read and check the recipe, build the data, tokenizer, model, objective and collator, train
with `MFTTrainer`, evaluate forward/backward QA, and leave in `training.output_dir`:

    the trained model and tokenizer, resolved_recipe.yaml, eval_results.json, report.md, accuracy.png

Every check of the recipe and the data runs before the model is built; a problem exits with
status 2 and one line on stderr that names the field and the fix. The heavy libraries (transformers,
and through it peft and bitsandbytes: ~4 s) are imported inside the functions that build things,
so that a bad recipe is reported before they load (BENCHMARKS.md: time to the error line).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from .config import Recipe, load_recipe
from .data import TaskData, load_data_files
from .errors import MFTError, RecipeError, unforeseen_error_line
from .objectives import SpecialTokens
from .run_folder import (OutputFolderLock, RunIdentity, check_checkpoint_readable, check_fresh_start, check_resume,
                         checkpoints)

USAGE = "usage: python -m mft.train RECIPE.yaml [section.key=value ...]   e.g. training.max_steps=100"


def load_data(recipe: Recipe) -> TaskData:
    """The recipe's training rows and QA rows (a built-in task's, or read and checked from files)."""
    if recipe.task_name:
        return recipe.build_task().build()
    return load_data_files(recipe.data.train_file, recipe.data.qa_file, recipe.data.train_dataset,
                           recipe.data.train_split)


def prepare(recipe: Recipe, data: TaskData | None = None, resume_from: str | None = None):
    """Everything that can fail on bad input, before any model exists: data, objective, tokenizer,
    examples. Returns (data, tokenizer, objective, train_dataset). A from-scratch model resuming from
    `resume_from` takes the tokenizer saved in that checkpoint (its vocabulary is the trained one)."""
    from transformers import AutoTokenizer

    from .data.tokenize import TokenizedDataset, build_word_tokenizer, row_texts
    from .models import load_tokenizer
    from .models.loading import ensure_pad_token

    data = load_data(recipe) if data is None else data
    if not data.train:
        raise RecipeError("the training set is empty; check the task sizes or data.train_file")
    if recipe.training.eval_strategy != "no" and not data.qa:
        raise RecipeError("training.eval_strategy asks for evaluation but there are no QA rows; add data.qa_file "
                          "or set training.eval_strategy=no")
    pretrained = bool(recipe.model.name_or_path)
    objective = recipe.build_objective()
    if pretrained:
        tokenizer = load_tokenizer(recipe.model)
        note = ensure_pad_token(tokenizer)
        if note:
            print(f"mft: {note}", flush=True)
    elif resume_from:
        tokenizer = AutoTokenizer.from_pretrained(resume_from)
    else:
        texts = [text for row in data.train + data.qa for text in row_texts(row)] + objective.vocabulary_texts()
        tokenizer = build_word_tokenizer(texts, add_bos_token=recipe.model.add_bos_token)
    train_dataset = TokenizedDataset.from_rows(tokenizer, data.train)
    longest = longest_row(recipe.build_objective(), tokenizer, train_dataset)
    if recipe.training.pack_length and longest > recipe.training.pack_length:
        raise RecipeError(f"training.pack_length = {recipe.training.pack_length} is shorter than the longest "
                          f"training row ({longest} tokens); raise it")
    if not pretrained:
        if longest > recipe.model.max_position_embeddings:
            raise RecipeError(f"model.max_position_embeddings = {recipe.model.max_position_embeddings} is shorter "
                              f"than the longest training sequence ({longest} tokens); raise it")
    return data, tokenizer, objective, train_dataset


def longest_row(objective, tokenizer, dataset) -> int:
    """The length of the longest row the objective makes from the longest example (rows can be
    longer than examples: masked_reconstruct shows a masked copy first). A pretrained tokenizer gets
    its mask token only with the model (`load_model`); lengths do not depend on its id."""
    from .collator import MFTCollator

    special = SpecialTokens.from_tokenizer(tokenizer)
    if special.mask_token_id is None:
        special = dataclasses.replace(special, mask_token_id=tokenizer.eos_token_id)
    longest_example = max(dataset.examples, key=lambda example: len(example["input_ids"]))
    return max(len(row) for row in MFTCollator(objective, tokenizer, special=special).rows(longest_example))


def run_train_loss(log_history: list[dict[str, Any]]) -> str:
    """The mean training loss of the whole run, from the losses logged every `logging_steps` (each
    the mean of the steps since the one before), weighted by the steps each covers; unlike the
    Trainer's `train_loss`, it also covers the steps before a resume."""
    total, steps, last_step = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last_step)
            steps += entry["step"] - last_step
            last_step = entry["step"]
    return f"{total / steps:.4f}" if steps else "n/a"


def finished_run_results(checkpoint: str, output_dir: Path) -> dict[str, Any] | None:
    """The saved results when `checkpoint` is the end of a run that finished (its step reached the
    run's max_steps and the final model is saved): a resume then has nothing to do, and says so."""
    state_file = Path(checkpoint) / "trainer_state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    done = state.get("max_steps") and state.get("global_step", 0) >= state["max_steps"]
    saved = any((output_dir / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json",
                                                           "pytorch_model.bin", "adapter_model.safetensors"))
    if not (done and saved):
        return None
    results_file = output_dir / "eval_results.json"
    print(f"mft: {output_dir} is a finished run of this recipe (step {state['global_step']} of {state['max_steps']}); "
          f"nothing to do (training.overwrite_output_dir=true trains it again). Its results: "
          f"{results_file if results_file.is_file() else 'none saved'}", flush=True)
    return json.loads(results_file.read_text()) if results_file.is_file() else {}


def checkpoint_to_resume(args) -> str | None:
    """`resume_from_checkpoint`: a folder as given; `true`: the last complete checkpoint-N in the
    output folder (checkpoints are renamed into place only once written, see `mft.trainer`), or
    None (a fresh start) when there is none yet."""
    resume = args.resume_from_checkpoint
    if resume is not True:
        return resume or None
    complete = checkpoints(args.output_dir)
    last = str(complete[-1]) if complete else None
    print(f"mft: resuming from {last}" if last else f"mft: no checkpoint in {args.output_dir} yet; starting fresh",
          flush=True)
    return last


def load_model(recipe: Recipe, tokenizer, objective):
    """The model, with a mask token when the objective needs one, wrapped for full/LoRA/QLoRA."""
    import torch

    from .models import build_model
    from .models.loading import ensure_mask_token, load_pretrained
    from .models.peft import apply_peft, quantization_config

    if not recipe.model.name_or_path:
        model = build_model(recipe.model, tokenizer)
        return apply_peft(model, recipe.peft, activation_checkpointing=recipe.training.activation_checkpointing)
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
                       activation_checkpointing=recipe.training.activation_checkpointing)
    if recipe.peft.method != "full":  # the adapter names the base as the recipe did, not a local cache path
        model.peft_config["default"].base_model_name_or_path = recipe.model.name_or_path
    return model


def run(recipe: Recipe) -> dict[str, Any]:
    """Train and evaluate the recipe's run, holding its output folder (see `mft.run_folder`)."""
    lead = int(os.environ.get("RANK", "0")) == 0  # one process per run owns the folder
    with OutputFolderLock(recipe.training.output_dir) if lead else contextlib.nullcontext() as lock:
        if lead and lock.note:
            print(f"mft: {lock.note}", flush=True)
        return _run(recipe, lead)


def _run(recipe: Recipe, lead: bool) -> dict[str, Any]:
    from transformers import set_seed

    from .collator import MFTCollator
    from .eval import flatten_metrics, write_report
    from .models import count_parameters
    from .trainer import MFTTrainer, QASet

    args = recipe.training
    output_dir = Path(args.output_dir)
    stage("preparing the data")
    data = load_data(recipe)
    identity = RunIdentity.of(recipe.resolved(), data.train)
    resume_from = checkpoint_to_resume(args)
    if resume_from:
        check_checkpoint_readable(resume_from)
        check_resume(identity, resume_from)
        finished = finished_run_results(resume_from, output_dir)
        if finished is not None:
            return finished
    else:
        existing = checkpoints(output_dir)
        if existing and not args.overwrite_output_dir and identity.owns(existing[-1]):
            finished = finished_run_results(str(existing[-1]), output_dir)  # the same run, run again
            if finished is not None:
                return finished
        replaced = check_fresh_start(identity, output_dir, args.overwrite_output_dir)
    data, tokenizer, objective, train_dataset = prepare(recipe, data, resume_from)
    if lead:
        for old in [] if resume_from else replaced:
            shutil.rmtree(old)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "resolved_recipe.yaml").write_text(recipe.to_yaml())
        identity.write(output_dir)

    set_seed(args.seed)
    args.device  # sets up the process group now: ZeRO-3 partitions the model as it is built, across all ranks
    if args.deepspeed_plugin is not None and args.world_size > 1:
        import deepspeed  # on CPU accelerate sets up torch.distributed only; ZeRO-3 asks deepspeed.comm

        deepspeed.init_distributed(dist_backend="gloo" if args.use_cpu else None)
    stage("loading the model")
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
                         data_collator=collator, processing_class=tokenizer, run_identity=identity)
    stage("training")
    trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = trainer.train_seconds  # the whole run's, also after a resume
    trainer.save_model()
    trainer.save_state()  # trainer_state.json: the whole log history, also when no checkpoint was kept

    stage("evaluating")
    results, predictions = {}, []
    if qa:
        results = trainer.evaluate_qa(qa, predictions)
        final_metrics = flatten_metrics(results)
        logged_now = any(entry.get("step") == trainer.state.global_step and final_metrics.keys() <= entry.keys()
                         for entry in trainer.state.log_history)
        if not logged_now:  # the last step was not an eval step: record the final figures too
            trainer.log(final_metrics)
    stage("writing the report")
    if trainer.is_world_process_zero():
        title = f"{recipe.objective_name} on {recipe.task_name or Path(recipe.data.train_file or recipe.data.train_dataset).name}"
        details = {"objective": recipe.objective_name, "decoding": trainer.decoding,
                   "model": recipe.model.name_or_path or f"{recipe.model.architecture} from scratch",
                   "fine-tuning": recipe.peft.method, "steps": trainer.state.global_step,
                   "train seconds": f"{train_seconds:.0f}", "train loss": run_train_loss(trainer.state.log_history),
                   "trainable parameters": f"{trainable:,}"}
        write_report(output_dir, results, trainer.state.log_history, title, details, predictions if qa else None)
        summary = ", ".join(f"{d} {m['exact_match']:.3f} (n={m['n']})" for d, m in results.items())
        print(f"mft: done in {train_seconds:.0f} s; exact match: {summary or 'no QA set'}; "
              f"results in {output_dir}", flush=True)
        if push:
            from .hub import push_run

            stage("pushing to the Hub")
            url = push_run(output_dir, args.hub_model_id, token=hub_token, private=bool(args.hub_private_repo))
            print(f"mft: pushed {output_dir} to {url}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """Exit status 0: done; 2: a problem with the user's input (`MFTError`, one line); 1: a failure
    nobody foresaw, reported in one line that names the stage, with the traceback in a file."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    recipe = None
    try:
        with stage("reading the recipe"):
            recipe = load_recipe(argv[0], argv[1:])
        run(recipe)
    except MFTError as error:
        print(f"mft: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = [arg for arg in argv[1:] if not arg.startswith("training.resume_from_checkpoint=")]
        command = shlex.join(["python", "-m", "mft.train", argv[0], *resume, "training.resume_from_checkpoint=true"])
        print(f"mft: interrupted while {stage.current}; the last complete checkpoint is kept; resume with: {command}",
              file=sys.stderr)
        return 130
    except Exception as error:  # a bug or an environment failure: one line here, the traceback in a file
        output_dir = Path(recipe.training.output_dir) if recipe is not None else None
        print(unforeseen_error_line(error, stage.current, output_dir), file=sys.stderr)
        return 1
    return 0


class _Stage:
    """What the run is doing (`with stage("loading the model"): ...`), for the one-line report of an
    unforeseen failure."""

    current = "starting"

    def __call__(self, name: str):
        self.current = name
        return self

    def __enter__(self):
        return self

    def __exit__(self, kind, *rest):
        return False  # the name stays set when the block fails, so the report can say where


stage = _Stage()



if __name__ == "__main__":
    sys.exit(main())
