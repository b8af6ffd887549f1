"""Retrieval task, the four objectives side by side with the factorization-curse paper's Table 1.

    python benchmarks/retrieval_table.py [--out benchmarks/results/retrieval_table.json] [--steps N]

Runs recipes/retrieval_{ar,ar_reverse,mlm,mlmu}.yaml (same data, model size and steps) and the
quickstart recipe, each in its own process, and prints a markdown table of held-out exact match
per direction next to the paper's numbers, with each run's wall time. Writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Table 1 / Table 5 of Kitouni et al. (2024), exact match in %, (forward, backward).
PAPER = {"ar": (100, 0), "ar_reverse": (100, 0), "mlm": (21, 22), "mlm_u": (100, 100)}
RUNS = [
    ("AR", "retrieval_ar", "ar"),
    ("AR w/reverse (token)", "retrieval_ar_reverse", "ar_reverse"),
    ("MLM 15%", "retrieval_mlm", "mlm"),
    ("MLM-U", "retrieval_mlmu", "mlm_u"),
    ("MLM-U (quickstart.yaml)", "quickstart", "mlm_u"),
]


def run(recipe: str, output_dir: Path, extra: list[str]) -> tuple[dict, float]:
    command = [sys.executable, "-m", "mft.train", str(ROOT / "recipes" / f"{recipe}.yaml"),
               f"training.output_dir={output_dir}", "training.disable_tqdm=true", *extra]
    started = time.time()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.time() - started
    return json.loads((output_dir / "eval_results.json").read_text()), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "retrieval_table.json"))
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "retrieval_table"))
    parser.add_argument("--steps", type=int, default=None, help="override training.max_steps (default: the recipes')")
    parser.add_argument("--only", nargs="*", default=None, help="recipe names to run (default: all)")
    args = parser.parse_args()
    extra = [f"training.max_steps={args.steps}"] if args.steps else []

    rows = []
    for label, recipe, objective in RUNS:
        if args.only and recipe not in args.only:
            continue
        results, wall = run(recipe, Path(args.runs_dir) / recipe, extra)
        rows.append({"objective": label, "recipe": f"recipes/{recipe}.yaml",
                     "forward": results["forward"]["exact_match"], "backward": results["backward"]["exact_match"],
                     "n_forward": results["forward"]["n"], "n_backward": results["backward"]["n"],
                     "paper_forward": PAPER[objective][0] / 100, "paper_backward": PAPER[objective][1] / 100,
                     "wall_seconds": round(wall, 1)})
        print(f"done: {label} {rows[-1]['forward']:.3f}/{rows[-1]['backward']:.3f} in {wall:.0f} s", flush=True)

    print("\n| objective | forward | backward | paper forward | paper backward | wall time (s) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['objective']} | {row['forward']:.3f} | {row['backward']:.3f} | {row['paper_forward']:.2f} | "
              f"{row['paper_backward']:.2f} | {row['wall_seconds']:.0f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "n_per_direction": rows[0]["n_forward"] if rows else 0},
                                         indent=2) + "\n")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
