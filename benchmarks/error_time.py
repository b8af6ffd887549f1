"""Time from launch to the error line for bad input, against `import torch, transformers`.

    python benchmarks/error_time.py [--rounds 5] [--out benchmarks/results/error_time.json]

Each command runs `--rounds` times in a fresh process, the commands interleaved round by round
(the order rotating) after one warm-up round; the table gives each command's median wall time, its
ratio to `import torch, transformers` measured in the same rounds, and checks that the command
exited with status 2 and one stderr line. The recipe checks read a table of the training section's
fields cached per transformers version (`mft.config.training_fields`): "cold" commands run with an
empty cache folder each time (a first run after installing or upgrading), the others with a warm
one. Issue 17's target: a bad recipe reported in under 3 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from import_time import write_results  # noqa: E402 (benchmarks/ is on the path when a script runs)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = "recipes/quickstart.yaml"
PYTHON = sys.executable

COMMANDS = {
    "misspelled key": [PYTHON, "-m", "mft.train", QUICKSTART, "training.learning_rat=1"],
    "negative learning rate": [PYTHON, "-m", "mft.train", QUICKSTART, "training.learning_rate=-0.1"],
    "unknown objective option": [PYTHON, "-m", "mft.train", QUICKSTART, "objective.mask_rat=0.2"],
    "misspelled key, cold cache": [PYTHON, "-m", "mft.train", QUICKSTART, "training.learning_rat=1"],
}
REFERENCE = "import torch, transformers"


def timed(command: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "error_time.json"))
    args = parser.parse_args()

    warm_cache = tempfile.mkdtemp(prefix="mft-cache-")
    commands = {**COMMANDS, REFERENCE: [PYTHON, "-c", REFERENCE]}
    times: dict[str, list[float]] = {label: [] for label in commands}
    one_line: dict[str, bool] = {label: True for label in commands}
    for round_index in range(args.rounds + 1):
        order = list(commands)
        order = order[round_index % len(order):] + order[:round_index % len(order)]
        for label in order:
            cache = tempfile.mkdtemp(prefix="mft-cold-") if "cold" in label else warm_cache
            elapsed, result = timed(commands[label], {**os.environ, "MFT_CACHE": cache})
            if label != REFERENCE:
                one_line[label] &= result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
            if round_index > 0:  # round 0 warms the file cache (and the warm table)
                times[label].append(elapsed)

    reference = statistics.median(times[REFERENCE])
    rows = []
    print(f"| bad input | median s | x `{REFERENCE}` | exit 2, one line |")
    print("|---|---|---|---|")
    for label, values in times.items():
        median = statistics.median(values)
        rows.append({"command": label, "argv": commands[label][1:], "median_seconds": round(median, 3),
                     "ratio": round(median / reference, 3), "seconds": [round(v, 3) for v in values],
                     "exit_2_one_line": one_line[label] if label != REFERENCE else None})
        check = "" if label == REFERENCE else ("yes" if one_line[label] else "**no**")
        print(f"| {label} | {median:.2f} | {median / reference:.2f} | {check} |")
    write_results(args.out, args.rounds, rows)


if __name__ == "__main__":
    main()
