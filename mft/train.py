"""`python -m mft.train RECIPE.yaml [section.key=value ...]` (also under `accelerate launch`).

One run: read and check the recipe, build the data, tokenizer, model, objective and collator, train
with `MFTTrainer`, evaluate forward/backward QA, and leave in `training.output_dir`:

    the trained model and tokenizer, resolved_recipe.yaml, eval_results.json, report.md, accuracy.png

Every check of the recipe and the data runs before the model is built; a problem exits with
status 2 and one line on stderr that names the field and the fix.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import yaml
from transformers import set_seed

from .collator import MFTCollator
from .config import Recipe, RecipeError, load_recipe
from .data import TokenizedDataset, build_word_tokenizer, load_data_files, row_texts
from .eval import flatten_metrics, write_report
from .models import build_model, count_parameters, load_tokenizer
from .trainer import MFTTrainer, QASet

USAGE = "usage: python -m mft.train RECIPE.yaml [section.key=value ...]   e.g. training.max_steps=100"


def prepare(recipe: Recipe):
    """Everything that can fail on bad input, before any model exists: data, tokenizer, examples."""
    data = recipe.build_task().build() if recipe.task_name else load_data_files(recipe.data.train_file,
                                                                                 recipe.data.qa_file)
    if not data.train:
        raise RecipeError("the training set is empty; check the task sizes or data.train_file")
    if recipe.training.eval_strategy != "no" and not data.qa:
        raise RecipeError("training.eval_strategy asks for evaluation but there are no QA rows; add data.qa_file "
                          "or set training.eval_strategy=no")
    objective = recipe.build_objective()
    if recipe.model.name_or_path:
        tokenizer = load_tokenizer(recipe.model)
    else:
        texts = [text for row in data.train + data.qa for text in row_texts(row)] + objective.vocabulary_texts()
        tokenizer = build_word_tokenizer(texts)
    collator = MFTCollator(objective, tokenizer, seed=recipe.training.seed)
    train_dataset = TokenizedDataset.from_rows(tokenizer, data.train)
    longest = max(len(example["input_ids"]) for example in train_dataset.examples)
    if not recipe.model.name_or_path and longest > recipe.model.max_position_embeddings:
        raise RecipeError(f"model.max_position_embeddings = {recipe.model.max_position_embeddings} is shorter than "
                          f"the longest training sequence ({longest} tokens); raise it")
    return data, tokenizer, collator, train_dataset


def run(recipe: Recipe) -> dict[str, Any]:
    args = recipe.training
    data, tokenizer, collator, train_dataset = prepare(recipe)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "resolved_recipe.yaml").write_text(recipe.to_yaml())

    set_seed(args.seed)
    model = build_model(recipe.model, tokenizer)
    trainable, total = count_parameters(model)
    print(f"mft: {recipe.objective_name} on {recipe.task_name or recipe.data.train_file}: "
          f"{len(train_dataset)} training examples, {len(data.qa)} QA items; "
          f"trainable parameters {trainable:,} of {total:,}", flush=True)

    qa = QASet(data.qa)
    trainer = MFTTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=qa or None,
                         data_collator=collator, processing_class=tokenizer)
    started = time.time()
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    train_seconds = time.time() - started
    trainer.save_model()

    results = {}
    if qa:
        results = trainer.evaluate_qa(qa)
        final_metrics = flatten_metrics(results)
        logged_now = any(entry.get("step") == trainer.state.global_step and final_metrics.keys() <= entry.keys()
                         for entry in trainer.state.log_history)
        if not logged_now:  # the last step was not an eval step: record the final figures too
            trainer.log(final_metrics)
    if trainer.is_world_process_zero():
        title = f"{recipe.objective_name} on {recipe.task_name or Path(recipe.data.train_file).name}"
        details = {"objective": recipe.objective_name, "decoding": trainer.decoding,
                   "steps": trainer.state.global_step, "train seconds": f"{train_seconds:.0f}",
                   "trainable parameters": f"{trainable:,}"}
        write_report(output_dir, results, trainer.state.log_history, title, details)
        summary = ", ".join(f"{d} {m['exact_match']:.3f} (n={m['n']})" for d, m in results.items())
        print(f"mft: done in {train_seconds:.0f} s; exact match: {summary or 'no QA set'}; "
              f"results in {output_dir}", flush=True)
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
