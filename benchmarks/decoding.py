"""Masked decoding variants: answers per second and exact match, against today's left-to-right decoder.

    python benchmarks/decoding.py RUN [RUN ...] [--qa FILE] [--rounds 3] [--batch-size 48] [--limit N] [--variants A,B]
                                  [--out benchmarks/results/decoding.json]

RUN is a trained model with a masked decoding spec (a run folder, `mft.load` reads it). Its questions
are `--qa`, else its recipe's `data.qa_file`, else its recipe's task rebuilt. Every variant answers
every question `--rounds` times, the variants interleaved round by round in rotating order after a
warm-up round. The table gives each variant's median answers per second, its speed-up over the
reference measured in the same rounds, exact match per direction, and the fraction of answers equal
token for token to the reference's.

    reference               left-to-right masked decoding as before issue 19: the whole sequence and
                            vocabulary-sized logits at every position, one slot per step
    slots only              the same decoder, the LM head only at the slot (exact)
    prompt cache            the prompt's keys and values once, the LM head only at the slot (exact
                            for a model trained with prompt_sees_answer: false; else approximate)
    prompt and answer cache the answer's keys and values kept too: two positions per step (approximate)
    left to right, threshold t
                            up to 8 slots per step: the first one's token (exact) and the following
                            ones' while each is at least t probable; not exact
    prompt cache, threshold t   both
    any order               most confident slot first, one per step (the LM head at the open slots)
    any order, threshold t  every open slot at least t probable per step (Fast-dLLM); not exact
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from import_time import write_results  # noqa: E402 (benchmarks/ is on the path when a script runs)

VARIANTS = {
    "reference": dict(decoding="masked", slots_only=False),
    "slots only": dict(decoding="masked"),
    "prompt cache": dict(decoding="masked", prompt_cache=True),
    "prompt and answer cache": dict(decoding="masked", prompt_cache=True, answer_cache=True),
    "left to right, threshold 0.9": dict(decoding="masked", threshold=0.9),
    "prompt cache, threshold 0.9": dict(decoding="masked", prompt_cache=True, threshold=0.9),
    "prompt cache, threshold 0.7": dict(decoding="masked", prompt_cache=True, threshold=0.7),
    "prompt cache, threshold 0.5": dict(decoding="masked", prompt_cache=True, threshold=0.5),
    "any order": dict(decoding="masked_any_order"),
    "any order, threshold 0.9": dict(decoding="masked_any_order", threshold=0.9),
    "any order, threshold 0.7": dict(decoding="masked_any_order", threshold=0.7),
    "any order, threshold 0.5": dict(decoding="masked_any_order", threshold=0.5),
}


def run_questions(run: Path, qa_file: str | None) -> list[dict]:
    import yaml

    from mft.config import parse_recipe
    from mft.eval import read_qa_file

    if qa_file:
        return read_qa_file(qa_file)
    recipe = yaml.safe_load((run / "resolved_recipe.yaml").read_text())
    if (recipe.get("data") or {}).get("qa_file"):
        return read_qa_file(recipe["data"]["qa_file"])
    return parse_recipe(recipe).build_task().build().qa


def measure(run: Path, qa_file: str | None, rounds: int, batch_size: int, limit: int | None = None,
            variants: list[str] | None = None) -> list[dict]:
    import torch

    import mft
    from mft.eval import answers_match

    torch.manual_seed(0)
    trained = mft.load(run)
    qa = run_questions(run, qa_file)
    if limit and limit < len(qa):  # evenly spaced, so both directions and formats stay in
        qa = [qa[round(i * len(qa) / limit)] for i in range(limit)]
    if trained.tokenizer.mask_token_id is None:
        raise SystemExit(f"{run}: no mask token; masked decoding does not apply")
    names = ["reference"] + [name for name in (variants or VARIANTS) if name != "reference"]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    answers: dict[str, list[str]] = {}
    for round_index in range(rounds + 1):  # round 0 warms up
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            by_format: dict[str, list[int]] = {}
            for index, row in enumerate(qa):
                by_format.setdefault(row.get("format", "chat"), []).append(index)
            result = [""] * len(qa)
            started = time.perf_counter()
            for format, indices in by_format.items():
                texts = trained.generate([qa[i]["question"] for i in indices], format=format,
                                         batch_size=batch_size, **VARIANTS[name])
                for i, text in zip(indices, texts):
                    result[i] = text
            elapsed = time.perf_counter() - started
            if round_index:
                seconds[name].append(elapsed)
            answers[name] = result
    rows = []
    reference = statistics.median(seconds["reference"])
    for name in names:
        row = {"run": str(run), "variant": name, "n": len(qa), "median_s": statistics.median(seconds[name]),
               "answers_per_s": len(qa) / statistics.median(seconds[name]),
               "speedup": reference / statistics.median(seconds[name]),
               "same_as_reference": sum(a == b for a, b in zip(answers[name], answers["reference"])) / len(qa)}
        for direction in ("forward", "backward"):
            chosen = [i for i, item in enumerate(qa) if item["direction"] == direction]
            if chosen:
                row[f"{direction}_em"] = sum(answers_match(answers[name][i], qa[i]["answer"], qa[i].get("format", "chat"))
                                             for i in chosen) / len(chosen)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--qa", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--limit", type=int, default=None, help="at most this many questions (evenly spaced)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated variant names (default: all; the reference always runs)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decoding.json"))
    args = parser.parse_args()
    variants = args.variants.split(",") if args.variants else None
    unknown = [name for name in variants or [] if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; the variants are: {', '.join(VARIANTS)}")
    rows = [row for run in args.runs for row in measure(run, args.qa, args.rounds, args.batch_size, args.limit, variants)]
    print("| run | variant | answers/s | speed-up | forward EM | backward EM | same as reference | n |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {Path(row['run']).name} | {row['variant']} | {row['answers_per_s']:.1f} | {row['speedup']:.2f}x | "
              f"{row.get('forward_em', float('nan')):.3f} | {row.get('backward_em', float('nan')):.3f} | "
              f"{row['same_as_reference']:.3f} | {row['n']} |")
    write_results(args.out, args.rounds, rows)


if __name__ == "__main__":
    main()
