"""Packing on a short-document corpus: tokens per second of a training step, padded vs packed.

    python benchmarks/packing.py [--model smollm2-135m|tiny] [--batch 32] [--pack-length 256]
                                 [--objective mlm_u] [--lora-r 64] [--steps 5] [--warmup 1]

The corpus is the facts task's training rows (one-sentence documents of ~15 tokens and chat-format
questions of ~50), the kind of data where padding to the longest row of a batch wastes most of the
compute. Each step trains the same `--batch` examples, either padded (one row per example) or packed
into rows of `--pack-length` tokens; the two variants run interleaved after `--warmup` rounds, and
medians are reported. tokens/s counts real tokens only (no padding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mft import MFTCollator, MFTConfig, MFTTrainer  # noqa: E402
from mft.data import FactsTask, TokenizedDataset  # noqa: E402
from mft.objectives import build_objective  # noqa: E402
from throughput import load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", choices=["smollm2-135m", "tiny"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--pack-length", type=int, default=256)
    parser.add_argument("--objective", default="mlm_u")
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "packing.json"))
    args = parser.parse_args()

    model, tokenizer = load(args.model, args.lora_r, "cpu", torch.float32, "sdpa")
    model.train()
    rows = FactsTask(num_people=40, qa_fraction=0.5, seed=0).build().train
    dataset = TokenizedDataset.from_rows(tokenizer, rows)
    options = {"shift": True, "keep_sink": True} if args.objective in ("mlm_u", "mlm") and args.model != "tiny" else {}
    collators = {"padded": MFTCollator(build_objective(args.objective, **options), tokenizer, seed=0),
                 "packed": MFTCollator(build_objective(args.objective, **options), tokenizer, seed=0,
                                       pack_length=args.pack_length)}
    trainer = MFTTrainer(model=model, args=MFTConfig(output_dir=str(ROOT / "runs" / "packing"), report_to="none",
                                                     use_cpu=True, disable_tqdm=True, save_strategy="no"),
                         train_dataset=dataset, processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    times: dict[str, list[float]] = {name: [] for name in collators}
    rates: dict[str, list[float]] = {name: [] for name in collators}
    shapes = {}
    for round_index in range(args.warmup + args.steps):
        start = (round_index * args.batch) % len(dataset)
        examples = [dataset[(start + i) % len(dataset)] for i in range(args.batch)]
        real_tokens = sum(len(row) for example in examples for row in collators["padded"].rows(example))
        for name, collator in collators.items():
            batch = collator(examples)
            shapes[name] = tuple(batch["input_ids"].shape)
            trainer.data_collator = collator
            began = time.perf_counter()
            trainer.training_step(model, batch, batch["loss_weights"].sum())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if round_index >= args.warmup:
                times[name].append(time.perf_counter() - began)
                rates[name].append(real_tokens / times[name][-1])
    table = {}
    for name in collators:
        table[name] = {"step_s": statistics.median(times[name]), "rows_x_length": shapes[name],
                       "tokens_per_s": statistics.median(rates[name])}
    table["speedup"] = table["packed"]["tokens_per_s"] / table["padded"]["tokens_per_s"]
    print(f"{args.model}, {args.objective}, batch {args.batch} examples, pack length {args.pack_length}, "
          f"median of {args.steps} interleaved steps")
    print("| variant | rows x length (last step) | step s | real tokens/s |")
    print("|---|---|---|---|")
    for name in collators:
        row = table[name]
        print(f"| {name} | {row['rows_x_length'][0]} x {row['rows_x_length'][1]} | {row['step_s']:.2f} | "
              f"{row['tokens_per_s']:.0f} |")
    print(f"packed speed-up: {table['speedup']:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": vars(args), "results": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
