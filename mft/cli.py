"""`mft` command line: `mft train RECIPE [key=value ...]` and `mft data retrieval --out DIR`."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import RecipeError


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
    args = parser.parse_args(argv)
    try:
        return write_task_data(args.task, args.out, args.option)
    except RecipeError as error:
        print(f"mft: error: {error}", file=sys.stderr)
        return 2


def write_task_data(task: str, out: str, options: list[str]) -> int:
    from pathlib import Path

    from .config import apply_override, parse_recipe
    from .data import write_jsonl

    raw = {"task": {"name": task}, "objective": {"name": "ar"}}
    for option in options:
        apply_override(raw, f"task.{option}")
    recipe = parse_recipe(raw)
    data = recipe.build_task().build()
    write_jsonl(Path(out) / "train.jsonl", data.train)
    write_jsonl(Path(out) / "qa.jsonl", data.qa)
    settings = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(recipe.build_task()).items())
    print(f"mft: wrote {len(data.train)} training rows and {len(data.qa)} QA rows ({task}: {settings}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
