"""Import time of mft's entry points against the libraries it builds on, in fresh interpreters.

    python benchmarks/import_time.py [--rounds 7] [--out benchmarks/results/import_time.json]

Each statement runs `--rounds` times in a new `python -c` process, the statements interleaved
round by round (so that a slower stretch of the machine hits all of them), after one warm-up round
that fills the OS file cache; the table gives each statement's median wall time and its ratio to
`import torch, transformers`. Issue 16's targets: `import mft` at most 1.5x that, and
`import mft.objectives` without `transformers.trainer` (checked here too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STATEMENTS = {
    "import torch, transformers": "import torch, transformers",
    "import mft": "import mft",
    "import mft.objectives": "import mft.objectives",
    "from mft import MFTTrainer": "from mft import MFTTrainer",
    "import transformers.trainer": "import transformers.trainer",
}
REFERENCE = "import torch, transformers"


def seconds(statement: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], cwd=ROOT, check=True)
    return time.perf_counter() - started


def loads_trainer(statement: str) -> bool:
    code = f"{statement}; import sys; print('transformers.trainer' in sys.modules)"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip() == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "import_time.json"))
    args = parser.parse_args()

    times: dict[str, list[float]] = {label: [] for label in STATEMENTS}
    for round_index in range(args.rounds + 1):
        order = list(STATEMENTS)
        order = order[round_index % len(order):] + order[:round_index % len(order)]  # rotate the order
        for label in order:
            elapsed = seconds(STATEMENTS[label])
            if round_index > 0:  # round 0 warms the file cache
                times[label].append(elapsed)

    reference = statistics.median(times[REFERENCE])
    rows = []
    print(f"| statement | median s | x `{REFERENCE}` | imports transformers.trainer |")
    print("|---|---|---|---|")
    for label, values in times.items():
        median = statistics.median(values)
        trainer = loads_trainer(STATEMENTS[label])
        rows.append({"statement": label, "median_seconds": round(median, 3), "ratio": round(median / reference, 3),
                     "seconds": [round(v, 3) for v in values], "imports_transformers_trainer": trainer})
        print(f"| `{label}` | {median:.2f} | {median / reference:.2f} | {'yes' if trainer else 'no'} |")
    write_results(args.out, args.rounds, rows)


def write_results(out: str, rounds: int, rows: list[dict]) -> None:
    """The JSON of a timing table (also benchmarks/error_time.py's)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"rounds": rounds, "python": sys.version.split()[0], "rows": rows}, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
