"""Peak memory and time of a step under the dense mask (sdpa) and flex_attention, by sequence length.

    python benchmarks/attention.py [--lengths 512,2048,8192] [--objectives ar,mlm_u,masked_reconstruct]
                                   [--batch 1] [--out benchmarks/results/attention.json]

A tiny Llama (2 layers, 64 wide, head_dim 32) and one packed row of `length` tokens: documents of
length / 4 tokens laid one after another (`training.pack_length`), each attending only inside
itself by its objective's rule. Each (implementation, objective, length) runs in a fresh process,
so its peak is its own: on a GPU a training step (forward and backward), peak
`torch.cuda.max_memory_allocated`; on CPU the forward only (PyTorch has no flex_attention backward
on CPU), peak resident memory above the process's level before the batch was made. "mask MiB" is
what the attention mask itself holds: the [B, 1, L, L] bool tensor, or the block mask's tensors.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from import_time import write_results  # noqa: E402 (benchmarks/ is on the path when a script runs)


def memory_status(field: str) -> float:
    """VmRSS / VmHWM of this process in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> float:
    """Reset the peak resident memory (VmHWM) to the current level and return that level."""
    Path("/proc/self/clear_refs").write_text("5")
    return memory_status("VmRSS")


def one(implementation: str, objective_name: str, length: int, batch: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from mft import MFTCollator
    from mft.data import build_word_tokenizer
    from mft.models.attention import TokenRule
    from mft.objectives import build_objective

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = build_word_tokenizer([" ".join(f"w{i}" for i in range(1000)), "recover the masked text"])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=128, max_position_embeddings=length,
                         pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=implementation).to(device)
    generator = torch.Generator().manual_seed(0)
    document = length // 4 - 2 if objective_name != "masked_reconstruct" else length // 8 - 8
    examples = []
    for index in range(4 * batch):
        words = torch.randint(0, 1000, (document,), generator=generator).tolist()
        ids = tokenizer(" ".join(f"w{i}" for i in words))["input_ids"]
        examples.append({"input_ids": ids, "prompt_length": 0, "example_index": index, "epoch": 0})
    collator = MFTCollator(build_objective(objective_name), tokenizer, seed=0, pack_length=length,
                           attention="rule" if implementation == "flex_attention" else "dense")
    training = device == "cuda"
    model.train(training)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    import gc

    gc.collect()
    base_rss = reset_peak_rss()
    tick = time.perf_counter()
    made = collator(examples)
    inputs = {"input_ids": made["input_ids"].to(device), "position_ids": made["position_ids"].to(device)}
    if "attention_rule" in made:
        mask = TokenRule(**{k: v.to(device) for k, v in made["attention_rule"].items()}).block_mask()
        mask_bytes = sum(t.numel() * t.element_size() for t in mask.as_tuple() if isinstance(t, torch.Tensor))
    else:
        mask = made["attention_mask"].to(device)
        mask_bytes = mask.numel() * mask.element_size()
    inputs["attention_mask"] = mask
    with torch.set_grad_enabled(training):
        logits = model(**inputs).logits
        if training:
            logits.float().logsumexp(-1).mean().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - tick
    peak = ((torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else memory_status("VmHWM") - base_rss)
    return {"implementation": implementation, "objective": objective_name, "length": length, "batch": batch,
            "rows": int(made["input_ids"].shape[0]), "device": device, "step": "forward+backward" if training else "forward",
            "seconds": seconds, "peak_mib": peak, "mask_mib": mask_bytes / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="512,2048,8192")
    parser.add_argument("--objectives", default="ar,mlm_u,masked_reconstruct")
    parser.add_argument("--implementations", default="sdpa,flex_attention")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attention.json"))
    args = parser.parse_args()
    if args.one:
        implementation, objective_name, length = args.one.split(",")
        one(implementation, objective_name, int(length), args.batch)  # warm-up: compiles flex for this shape
        print(json.dumps(one(implementation, objective_name, int(length), args.batch)))
        return
    rows = []
    for length in [int(n) for n in args.lengths.split(",")]:
        for objective_name in args.objectives.split(","):
            for implementation in args.implementations.split(","):
                done = subprocess.run([sys.executable, __file__, "--one", f"{implementation},{objective_name},{length}",
                                       "--batch", str(args.batch)], capture_output=True, text=True, cwd=ROOT)
                if done.returncode:
                    rows.append({"implementation": implementation, "objective": objective_name, "length": length,
                                 "error": (done.stderr.strip().splitlines() or ["?"])[-1][:200]})
                else:
                    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(rows[-1], file=sys.stderr, flush=True)
    print("| length | objective | implementation | step | seconds | peak MiB | mask MiB |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['length']} | {row['objective']} | {row['implementation']} | error: {row['error']} | | | |")
            continue
        print(f"| {row['length']} | {row['objective']} | {row['implementation']} | {row['step']} | {row['seconds']:.2f} | "
              f"{row['peak_mib']:.0f} | {row['mask_mib']:.2f} |")
    write_results(args.out, 1, rows)


if __name__ == "__main__":
    main()
