"""The factorization-curse paper's controlled experiments at CPU scale, beside the paper's numbers.

    python benchmarks/reproduce_paper.py [--tasks retrieval relationship bios star_graph]
                                         [--only LABEL ...] [--steps-scale 1.0]

For each task, every objective of the paper is trained from scratch through `mft.train` (each run
in its own process) and asked the held-out questions: AR, AR w/reverse (token), AR w/reverse
(entity) with and without delimiters, MLM at 15/40/85%, MLM-U, with the decoder-only model (a
small Llama) and, for MLM-U, PLM and AR, with the paper's encoder-decoder model. Prints one
markdown table per task (exact match forward / backward, the incorrect-inference rate where the
task has one, the paper's figures, wall time) and writes `benchmarks/results/reproduce_paper.json`
and a bar chart per task next to it. Sizes are chosen so that a task's runs fit in about 20
minutes on 2 cores; `--steps-scale` stretches or shrinks every run.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# Objectives, as (label, objective section, architecture).
DECODER = "llama"
ENCDEC = "encoder_decoder"
ALL = [
    ("AR", {"name": "ar"}, DECODER),
    ("AR w/reverse (token)", {"name": "ar_reverse"}, DECODER),
    ("AR w/reverse (entity)", {"name": "ar_reverse_entity", "delimiters": True}, DECODER),
    ("AR w/reverse (entity)*", {"name": "ar_reverse_entity", "delimiters": False}, DECODER),
    ("MLM 15%", {"name": "mlm", "rate": 0.15}, DECODER),
    ("MLM 40%", {"name": "mlm", "rate": 0.40}, DECODER),
    ("MLM 85%", {"name": "mlm", "rate": 0.85}, DECODER),
    ("MLM-U", {"name": "mlm_u", "weighting": "1/r"}, DECODER),
    ("MLM-U (enc-dec)", {"name": "mlm_u", "weighting": "1/r"}, ENCDEC),
    ("PLM (enc-dec)", {"name": "plm"}, ENCDEC),
    ("AR (enc-dec)", {"name": "ar"}, ENCDEC),
]

# Kitouni et al. (2024) Tables 1, 2, 5, 6, 7 and Sec. 3.1, exact match in % (forward, backward[, incorrect
# inference]); star graph has one direction. None: not reported.
PAPER = {
    "retrieval": {"AR": (100, 0), "AR w/reverse (token)": (100, 0), "MLM 15%": (21, 22), "MLM 40%": (17, 16),
                  "MLM 85%": (27, 28), "MLM-U": (100, 100), "MLM-U (enc-dec)": (100, 100), "PLM (enc-dec)": (100, 100)},
    "relationship": {"AR w/reverse (entity)": (100, 100, 0), "AR w/reverse (entity)*": (54, 53, 44),
                     "MLM 15%": (24, 19, 0), "MLM 40%": (77, 35, 1), "MLM 85%": (2, 1, 0), "MLM-U": (100, 100, 0),
                     "MLM-U (enc-dec)": (100, 100, 0), "PLM (enc-dec)": (100, 100, 0)},
    "bios": {"AR": (100, 0), "AR w/reverse (token)": (100, 0), "MLM 15%": (0, 0), "MLM 40%": (8, 8),
             "MLM 85%": (4, 8), "MLM-U": (100, 68), "MLM-U (enc-dec)": (100, 68), "PLM (enc-dec)": (100, 72)},
    "star_graph": {"AR": (50,), "AR w/reverse (token)": (49,), "MLM-U": (100,), "MLM-U (enc-dec)": (100,)},
}

MODEL = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512}
TRAINING = {"per_device_train_batch_size": 64, "learning_rate": 1.0e-3, "weight_decay": 0.0,
            "lr_scheduler_type": "cosine", "warmup_steps": 100, "max_grad_norm": 1.0, "logging_steps": 100,
            "eval_strategy": "no", "save_strategy": "no", "seed": 0, "use_cpu": True, "report_to": "none",
            "disable_tqdm": True, "per_device_eval_batch_size": 256}
ENCDEC_LEARNING_RATE = 5.0e-4  # 1e-3 left its forward answers unstable on retrieval (BENCHMARKS.md)

# Per task: the task options, max sequence length, steps for decoder-only and encoder-decoder runs,
# answer length, and which objectives are run.
TASKS = {
    "retrieval": {"task": {"name": "retrieval", "num_pairs": 200, "tokens_per_entity": 2, "query_fraction": 0.8},
                  "max_positions": 32, "steps": 2000, "encdec_steps": 2000, "max_new_tokens": 4,
                  "objectives": [label for label, _, _ in ALL]},
    "relationship": {"task": {"name": "relationship", "num_chains": 200, "tokens_per_entity": 2, "query_fraction": 0.8},
                     "max_positions": 48, "steps": 2000, "encdec_steps": 2000, "max_new_tokens": 4,
                     "objectives": [label for label, _, _ in ALL]},
    "bios": {"task": {"name": "bios", "num_people": 1000, "qa_fraction": 0.5}, "max_positions": 64, "steps": 3000,
             "encdec_steps": 3000, "max_new_tokens": 6,
             "objectives": ["AR", "AR w/reverse (entity)", "MLM 15%", "MLM-U", "MLM-U (enc-dec)"]},
    "star_graph": {"task": {"name": "star_graph", "degree": 2, "path_length": 5, "num_nodes": 50, "num_train": 20000,
                            "num_test": 500}, "max_positions": 48, "steps": 3000, "encdec_steps": 3000,
                   "max_new_tokens": 8, "objectives": ["AR", "AR w/reverse (token)", "MLM-U", "MLM-U (enc-dec)"]},
}


def recipe_for(task: str, label: str, steps_scale: float, output_dir: Path) -> dict:
    settings = TASKS[task]
    objective, architecture = next((o, a) for name, o, a in ALL if name == label)
    steps = settings["encdec_steps"] if architecture == ENCDEC else settings["steps"]
    objective = dict(objective)
    if task in ("bios", "star_graph") and objective["name"] in ("mlm", "mlm_u", "plm"):
        objective["predict_prompt"] = False  # questions and graphs are context; answers are masked
    return {
        "task": {**settings["task"], "seed": 0},
        "model": {"architecture": architecture, **MODEL, "max_position_embeddings": settings["max_positions"]},
        "objective": objective,
        "training": {**TRAINING, "output_dir": str(output_dir), "max_steps": max(1, round(steps * steps_scale)),
                     "max_new_tokens": settings["max_new_tokens"],
                     **({"learning_rate": ENCDEC_LEARNING_RATE} if architecture == ENCDEC else {})},
    }


def run(recipe: dict) -> tuple[dict, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        yaml.safe_dump(recipe, file)
    started = time.time()
    subprocess.run([sys.executable, "-m", "mft.train", file.name], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.time() - started
    return json.loads((Path(recipe["training"]["output_dir"]) / "eval_results.json").read_text()), wall


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--only", nargs="*", default=None, help="objective labels to run (default: the task's list)")
    parser.add_argument("--steps-scale", type=float, default=1.0)
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "reproduce_paper"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reproduce_paper.json"))
    args = parser.parse_args()

    out = Path(args.out)
    everything = json.loads(out.read_text()) if out.is_file() else {}
    for task in args.tasks:
        rows = []
        for label in TASKS[task]["objectives"]:
            if args.only and label not in args.only:
                continue
            folder = re.sub(r"[^A-Za-z0-9]+", "_", label.replace("*", " no delimiters")).strip("_")
            recipe = recipe_for(task, label, args.steps_scale, Path(args.runs_dir) / task / folder)
            results, wall = run(recipe)
            paper = PAPER[task].get(label)
            row = {"objective": label, "architecture": recipe["model"]["architecture"],
                   "steps": recipe["training"]["max_steps"], "wall_seconds": round(wall, 1),
                   "forward": results["forward"]["exact_match"], "n": results["forward"]["n"],
                   "backward": results.get("backward", {}).get("exact_match"),
                   "incorrect_inference": _mean([m.get("incorrect_inference") for m in results.values()]),
                   "paper": paper}
            rows.append(row)
            print(f"{task}: {label} {row['forward']:.3f} / {row['backward']} in {wall:.0f} s", flush=True)
        # A partial rerun (--only) replaces its own rows and keeps the others.
        kept = [r for r in everything.get(task, {}).get("rows", []) if r["objective"] not in {x["objective"] for x in rows}]
        order = [label for label, _, _ in ALL]
        rows = sorted(kept + rows, key=lambda r: order.index(r["objective"]))
        everything[task] = {"rows": rows, "settings": TASKS[task]}
        print_table(task, rows)
        plot(task, rows, out.with_name(f"reproduce_paper_{task}.png"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(everything, indent=1) + "\n")
    print(f"written: {out}")


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def print_table(task: str, rows: list[dict]) -> None:
    print(f"\n### {task}\n\n| objective | model | steps | forward | backward | incorrect inference | paper | wall (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        paper = "/".join(str(v) for v in row["paper"]) if row["paper"] else "-"
        print(f"| {row['objective']} | {row['architecture']} | {row['steps']} | {percent(row['forward'])} | "
              f"{percent(row['backward'])} | {percent(row['incorrect_inference'])} | {paper} | {row['wall_seconds']:.0f} |")


def plot(task: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    figure, axis = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    positions = range(len(rows))
    axis.bar([p - 0.2 for p in positions], [r["forward"] for r in rows], width=0.4, label="forward")
    axis.bar([p + 0.2 for p in positions], [r["backward"] or 0 for r in rows], width=0.4, label="backward")
    axis.set_xticks(list(positions), [r["objective"] for r in rows], rotation=30, ha="right", fontsize=8)
    axis.set(ylim=(0, 1.05), ylabel="exact match", title=f"{task} (held-out questions)")
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
