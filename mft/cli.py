"""`mft` command line: `mft train RECIPE [key=value ...]`, `mft eval RUN --qa FILE`,
`mft generate MODEL [PROMPT ...]`, `mft merge RUN --out DIR`, `mft push RUN --repo-id ID`, `mft data TASK --out DIR` and `mft data inspect RECIPE [key=value ...]`."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .objectives import DECODINGS

from .errors import MFTError, RecipeError, unforeseen_error_line
from .utils import writable_file, writable_folder


GENERATE_HELP = "answer prompts with a trained model, decoded as it was trained (its mft_decoding.json)"


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a run's training.output_dir, a checkpoint-N folder, a merged model, a built-in "
                                   "name or a Hub id in the local cache")
    parser.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompts (default: one per line on stdin)")
    parser.add_argument("--format", choices=["chat", "completion"], default=None,
                        help="chat (default): a question, in a user turn of the chat template when the model "
                             "has one; completion: a raw text prefix, continued")
    parser.add_argument("--decoding", choices=list(DECODINGS), default=None, help="default: the model's decoding spec")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's decoding spec")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--jsonl", action="store_true", help='print {"prompt", "answer"} lines instead of bare answers')
    parser.add_argument("--threshold", type=float, default=None,
                        help="masked decoding: several slots per step, each at least this probable (left to right: the run "
                             "after the first slot; any order: every such slot); faster, not exact")
    parser.add_argument("--prompt-cache", action="store_true",
                        help="masked: the prompt's keys and values computed once (exact for a model trained with "
                          "prompt_sees_answer: false, else an approximation)")
    parser.add_argument("--answer-cache", action="store_true",
                        help="masked, with --prompt-cache: the answer's keys and values kept too (two positions per "
                             "step; an approximation)")
    parser.add_argument("--full-logits", action="store_true",
                        help="masked: the LM head at every position, as before (the default reads only the slots)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":
        from .train import main as train_main
        return train_main(argv[1:])
    if argv[:2] == ["data", "inspect"]:  # a recipe and overrides, like `mft train`
        return inspect_data_command(argv[2:])
    if argv and argv[0] == "generate":  # prompts may come after the options: parsed intermixed
        parser = argparse.ArgumentParser(prog="mft generate", description=GENERATE_HELP)
        add_generate_arguments(parser)
        args = parser.parse_intermixed_args(argv[1:])
        args.command = "generate"
        return run_command(args)

    parser = argparse.ArgumentParser(prog="mft", description="mft: masked fine-tuning toolkit. "
                                     "Train with `mft train RECIPE.yaml [section.key=value ...]`.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="train from a recipe (same as python -m mft.train)")
    data = commands.add_parser("data", help="write a built-in task's data as JSONL files; `mft data inspect RECIPE "
                               "[key=value ...]` shows what a recipe's data becomes before training")
    data.add_argument("task", help="task name, e.g. retrieval")
    data.add_argument("--out", required=True, help="folder for train.jsonl and qa.jsonl")
    data.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="task option, e.g. --option num_pairs=500 (repeatable)")
    data.add_argument("--genwiki", default=None, metavar="DIR",
                      help="wikireversal: the folder of the GenWiki JSON files (same as --option genwiki=DIR)")
    evaluate = commands.add_parser("eval", help="answer a QA file with a finished run's model, or a base model's")
    evaluate.add_argument("output_dir", nargs="?", default=None,
                          help="the run's training.output_dir (or one of its checkpoint-N folders)")
    evaluate.add_argument("--model", default=None,
                          help="instead of a run: a pretrained model as it is (built-in name, local folder or "
                               "cached Hub id), answering causally: the baseline before fine-tuning")
    evaluate.add_argument("--qa", required=True, help='JSONL of {"question", "answer", "direction"}')
    evaluate.add_argument("--format", choices=["chat", "completion"], default=None,
                          help="the format of every question (default: each row's own, else chat)")
    evaluate.add_argument("--decoding", choices=list(DECODINGS), default=None,
                          help="default: the run's (training.decoding, else its objective's natural decoding)")
    evaluate.add_argument("--max-new-tokens", type=int, default=None,
                          help="default: the run's training.max_new_tokens")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--out", default=None, help="JSON file for the metrics (default: RUN/eval_<qa name>.json)")
    add_generate_arguments(commands.add_parser("generate", help=GENERATE_HELP))
    merge = commands.add_parser("merge", help="write a standalone model: a LoRA run's adapter merged into its base "
                                "weights, with its tokenizer and decoding spec")
    merge.add_argument("model", help="a run's training.output_dir or a checkpoint-N folder")
    merge.add_argument("--out", required=True, help="a new folder for the merged model")
    push = commands.add_parser("push", help="publish a finished run (model or adapter, card) to the Hugging Face Hub")
    push.add_argument("output_dir", help="the run's training.output_dir")
    push.add_argument("--repo-id", required=True, help="e.g. your-name/mft-facts (token: `hf auth login` or $HF_TOKEN)")
    push.add_argument("--private", action="store_true")
    return run_command(parser.parse_args(argv))


def run_command(args) -> int:
    """Run a parsed command: an `MFTError` is one line and exit status 2."""
    try:
        if args.command == "push":
            from .hub import push_run

            print(f"mft: pushed {args.output_dir} to {push_run(args.output_dir, args.repo_id, private=args.private)}")
            return 0
        if args.command == "eval":
            return evaluate_run_command(args)
        if args.command == "generate":
            return generate_command(args)
        if args.command == "merge":
            from .inference import merge as merge_model

            print(f"mft: wrote the merged model to {merge_model(args.model, args.out)}")
            return 0
        options = args.option + ([f"genwiki={args.genwiki}"] if args.genwiki else [])
        return write_task_data(args.task, args.out, options)
    except MFTError as error:
        print(f"mft: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug or an environment failure: one line here, the traceback in a file
        print(unforeseen_error_line(error, f"running mft {args.command}"), file=sys.stderr)
        return 1


def evaluate_run_command(args) -> int:
    import json
    from pathlib import Path

    from .eval import evaluate_base_model, evaluate_run

    if (args.output_dir is None) == (args.model is None):
        raise RecipeError("give a run folder or --model NAME (a base model), not both and not neither; e.g. "
                          "mft eval runs/quickstart --qa qa.jsonl, or mft eval --model smollm2-135m --qa qa.jsonl")
    if args.model and args.decoding not in (None, "causal"):
        raise RecipeError(f"--decoding {args.decoding}: a base model answers causally; drop --decoding")
    if args.out:
        out = Path(args.out)
    elif args.output_dir:
        out = Path(args.output_dir) / f"eval_{Path(args.qa).stem}.json"
    else:
        out = Path(f"eval_{Path(args.model).name}_{Path(args.qa).stem}.json")
    if args.out or args.model:  # (a run's own folder is checked as the run is read)
        writable_file("--out", out)  # before evaluating, so that a bad path loses no results
    if args.model:
        results = evaluate_base_model(args.model, args.qa, args.max_new_tokens, args.batch_size, args.format)
    else:
        results = evaluate_run(args.output_dir, args.qa, args.decoding, args.max_new_tokens, args.batch_size,
                               args.format)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("| direction | exact match | ROUGE-1 recall | n |\n|---|---|---|---|")
    for direction, metrics in results.items():
        print(f"| {direction} | {metrics['exact_match']:.3f} | {metrics['rouge1_recall']:.3f} | {metrics['n']} |")
    print(f"mft: written {out}")
    return 0


def generate_command(args) -> int:
    import json

    from .decoding import check_speed_options
    from .inference import check_request, load

    prompts = args.prompts or [line.rstrip("\n") for line in sys.stdin]
    # the prompts and numbers first, before the model loads; the mask token once it has
    check_request(None, prompts, args.format or "chat", args.decoding or "causal",
                  1 if args.max_new_tokens is None else args.max_new_tokens, args.batch_size)
    check_speed_options(args.decoding, args.threshold, args.prompt_cache, args.answer_cache)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # stderr keeps to errors: answers are the output
    trained = load(args.model)
    answers = trained.generate(prompts, format=args.format, decoding=args.decoding, max_new_tokens=args.max_new_tokens,
                               batch_size=args.batch_size, slots_only=not args.full_logits, threshold=args.threshold,
                               prompt_cache=args.prompt_cache, answer_cache=args.answer_cache)
    for prompt, answer in zip(prompts, answers):
        print(json.dumps({"prompt": prompt, "answer": answer}) if args.jsonl else answer.replace("\n", " "))
    return 0


def write_task_data(task: str, out: str, options: list[str]) -> int:
    import json
    from pathlib import Path

    from .config import apply_override, parse_recipe
    from .data import write_jsonl

    raw = {"task": {"name": task}, "objective": {"name": "ar"}}
    for option in options:
        apply_override(raw, f"task.{option}")
    if Path(out).exists() and not Path(out).is_dir():
        raise RecipeError(f"--out {out} is a file; give a folder for train.jsonl and qa.jsonl")
    writable_folder("--out", Path(out))
    recipe = parse_recipe(raw)
    builder = recipe.build_task()
    if hasattr(builder, "build_with_stats"):  # wikireversal: also say what the filters kept
        data, stats = builder.build_with_stats()
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        print(f"mft: {json.dumps(stats)}")
    else:
        data = builder.build()
    write_jsonl(Path(out) / "train.jsonl", data.train)
    write_jsonl(Path(out) / "qa.jsonl", data.qa)
    settings = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(recipe.build_task()).items())
    print(f"mft: wrote {len(data.train)} training rows and {len(data.qa)} QA rows ({task}: {settings}) to {out}")
    return 0


INSPECT_USAGE = ("usage: mft data inspect RECIPE.yaml [section.key=value ...]   what the recipe's data becomes "
                 "before training (no model is built)")


def inspect_data_command(argv: list[str]) -> int:
    """`mft data inspect RECIPE [overrides]`: prepare the recipe's data as `mft train` would
    (`mft.train.prepare`: rows, tokenizer, windows; no model) and print its figures as a table."""
    if not argv or argv[0] in ("-h", "--help"):
        print(INSPECT_USAGE)
        return 0 if argv else 2
    try:
        from .config import load_recipe
        from .train import prepare

        recipe = load_recipe(argv[0], argv[1:])
        data, tokenizer, _, dataset = prepare(recipe)
        figures = data_figures(recipe, data, tokenizer, dataset)
    except MFTError as error:
        print(f"mft: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug or an environment failure: one line here, the traceback in a file
        print(unforeseen_error_line(error, "running mft data inspect"), file=sys.stderr)
        return 1
    width = max(len(label) for label, _ in figures)
    print(f"mft data inspect {argv[0]}: {recipe.objective_name}, as training would see it")
    for label, value in figures:
        print(f"  {label.ljust(width)}  {value}")
    return 0


def data_figures(recipe, data, tokenizer, dataset) -> list[tuple[str, str]]:
    """(label, value) rows: documents, windows, QA rows; tokens per example and per objective row
    (the collator's rows of every example, one draw: epoch 0 with the recipe's seed); padding (or
    packing) efficiency of batches taken in dataset order (the trainer shuffles, so this is an
    estimate); the longest row."""
    from .collator import MFTCollator
    from .data.windows import split_documents
    from .train import measuring_special_tokens

    args = recipe.training
    collator = MFTCollator(recipe.build_objective(), tokenizer, special=measuring_special_tokens(tokenizer),
                           seed=args.seed, pack_length=args.pack_length)
    dataset.set_epoch(0)
    rows = [collator.rows(dataset[index]) for index in range(len(dataset))]
    example_lengths = [len(example["input_ids"]) for example in dataset.examples]
    row_lengths = [len(row) for example_rows in rows for row in example_rows]

    def spread(values: list[int]) -> str:
        return f"min {min(values)}  mean {sum(values) / len(values):.1f}  max {max(values)}"

    text_rows = sum("text" in row for row in data.train)
    text_windows = sum("text" in data.train[row] for row, _ in dataset.origins)
    split, _ = split_documents(dataset)
    rule = dataset.windowing
    how = (f"at most {rule.length} tokens each, so that rows fit {rule.source} = {rule.limit}; overlap {rule.overlap}"
           if rule is not None else "no row limit: nothing is split")
    size = args.per_device_train_batch_size
    batches = [[row for example_rows in rows[i:i + size] for row in example_rows] for i in range(0, len(rows), size)]
    content = sum(row_lengths)
    if args.pack_length:
        packed = sum(collator.pack(batch)["input_ids"].shape[0] for batch in batches) * args.pack_length
        efficiency = ("packing efficiency", f"{content / packed:.3f}  (content / packed tokens at pack_length "
                                            f"{args.pack_length}, batch size {size}; approximate: batches in "
                                            f"dataset order, the trainer shuffles)")
    else:
        padded = sum(len(batch) * max(len(row) for row in batch) for batch in batches)
        efficiency = ("padding efficiency", f"{content / padded:.3f}  (content / padded tokens at batch size {size}; "
                                            f"approximate: batches in dataset order, the trainer shuffles)")
    longest = max(range(len(rows)), key=lambda index: max(len(row) for row in rows[index]))
    row_index, window = dataset.origins[longest]
    windows_of_row = sum(1 for row, _ in dataset.origins if row == row_index)
    where = f"training row {row_index + 1}" + (f", window {window + 1} of {windows_of_row}" if windows_of_row > 1 else "")
    text = tokenizer.decode(dataset.examples[longest]["input_ids"], skip_special_tokens=True)
    return [
        ("training rows", f"{len(data.train)}  ({text_rows} text, {len(data.train) - text_rows} prompt/completion)"),
        ("windows", f"{text_windows}  from {text_rows} text row{'s' if text_rows != 1 else ''}, {split} of them split "
                    f"({how})"),
        ("training examples", f"{len(dataset)}"),
        ("QA rows", f"{len(data.qa)}"),
        ("tokens per example", spread(example_lengths)),
        ("tokens per row", f"{spread(row_lengths)}  ({len(row_lengths)} rows of {recipe.objective_name}, one draw)"),
        efficiency,
        ("longest row", f"{max(row_lengths)} tokens  ({where}: {text[:60] + ('...' if len(text) > 60 else '')!r})"),
    ]

if __name__ == "__main__":
    sys.exit(main())
