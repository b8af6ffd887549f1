"""`mft` command line: `mft train RECIPE [key=value ...]`, `mft eval RUN --qa FILE`,
`mft push RUN --repo-id ID` and `mft data TASK --out DIR`."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .objectives import DECODINGS

from .errors import MFTError, RecipeError, unforeseen_error_line
from .utils import writable_file, writable_folder


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":
        from .train import main as train_main
        return train_main(argv[1:])

    parser = argparse.ArgumentParser(prog="mft", description="mft: masked fine-tuning toolkit. "
                                     "Train with `mft train RECIPE.yaml [section.key=value ...]`.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="train from a recipe (same as python -m mft.train)")
    data = commands.add_parser("data", help="write a built-in task's data as JSONL files")
    data.add_argument("task", help="task name, e.g. retrieval")
    data.add_argument("--out", required=True, help="folder for train.jsonl and qa.jsonl")
    data.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="task option, e.g. --option num_pairs=500 (repeatable)")
    data.add_argument("--genwiki", default=None, metavar="DIR",
                      help="wikireversal: the folder of the GenWiki JSON files (same as --option genwiki=DIR)")
    evaluate = commands.add_parser("eval", help="answer a QA file with a finished run's model")
    evaluate.add_argument("output_dir", help="the run's training.output_dir")
    evaluate.add_argument("--qa", required=True, help='JSONL of {"question", "answer", "direction"}')
    evaluate.add_argument("--decoding", choices=list(DECODINGS), default=None,
                          help="default: the run's (training.decoding, else its objective's natural decoding)")
    evaluate.add_argument("--max-new-tokens", type=int, default=None,
                          help="default: the run's training.max_new_tokens")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--out", default=None, help="JSON file for the metrics (default: RUN/eval_<qa name>.json)")
    push = commands.add_parser("push", help="publish a finished run (model or adapter, card) to the Hugging Face Hub")
    push.add_argument("output_dir", help="the run's training.output_dir")
    push.add_argument("--repo-id", required=True, help="e.g. your-name/mft-facts (token: `hf auth login` or $HF_TOKEN)")
    push.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "push":
            from .hub import push_run

            print(f"mft: pushed {args.output_dir} to {push_run(args.output_dir, args.repo_id, private=args.private)}")
            return 0
        if args.command == "eval":
            return evaluate_run_command(args)
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

    from .eval import evaluate_run

    out = Path(args.out) if args.out else Path(args.output_dir) / f"eval_{Path(args.qa).stem}.json"
    if args.out:
        writable_file("--out", out)  # before evaluating, so that a bad path loses no results
    results = evaluate_run(args.output_dir, args.qa, args.decoding, args.max_new_tokens, args.batch_size)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("| direction | exact match | ROUGE-1 recall | n |\n|---|---|---|---|")
    for direction, metrics in results.items():
        print(f"| {direction} | {metrics['exact_match']:.3f} | {metrics['rouge1_recall']:.3f} | {metrics['n']} |")
    print(f"mft: written {out}")
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


if __name__ == "__main__":
    sys.exit(main())
