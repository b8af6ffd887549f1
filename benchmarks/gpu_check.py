"""The GPU check: run first thing whenever a GPU machine is lent (`benchmarks/gpu_check.sh`).

    PYTHONPATH=. python3 benchmarks/gpu_check.py [--cpu] [--out DIR] [--budget-s 420]

Parts, each timed and reported even when another fails:

    loss      the fused linear cross-entropy kernels (cut-cross-entropy, liger-kernel; where installed)
              against the chunked path: loss and gradients.
    masks     every mask mft builds (causal, bidirectional with hidden keys, keep_sink, packing,
              annealing, masked_reconstruct, prompt_sees_answer: false) on tiny Llama, Mistral and
              Qwen2 models: flex_attention (the per-token rule as a block mask) against sdpa with
              the dense [B, 1, L, L] mask; the largest logit and gradient differences. On CPU
              (`--cpu`) logits only: PyTorch has no flex_attention backward on CPU.
    steps     a Mistral-7B-shaped model (random weights; 32 layers, 4096 wide, 8 key/value heads;
              LoRA r=256 on q_proj/v_proj, bf16, gradient checkpointing) for a few steps of ar,
              mlm_u and masked_reconstruct at 2048 tokens under sdpa and flex_attention (and
              flash_attention_2 for ar when the flash-attn package is there): tokens/s, peak
              memory, MFU against the GPU's bf16 peak. `--cpu`: a 2-layer, 64-wide model, 64 tokens,
              sdpa only (forward and backward) and flex forward.
    recipes   the quickstart recipe under accelerate_configs/single_gpu.yaml and deepspeed_zero2.yaml
              (30 steps each; DeepSpeed only where it is installed). `--cpu`: cpu.yaml only.

Prints one table and writes `gpu_check.json` to --out (default $OUT, else benchmarks/results).
Plans for the lent machine as it is: torch + transformers + peft + accelerate + triton, no
datasets / trl / deepspeed / liger; everything here imports without them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# bf16 dense peak of the GPUs we may be lent (TFLOP/s), for MFU; others report MFU as None
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


def tiny_families() -> dict:
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    # head_dim 32: torch's compiled CPU flex kernel corrupts memory at head_dim 8 or 16 (seen here)
    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=128, max_position_embeddings=512)
    return {"llama": (LlamaConfig, common), "mistral": (MistralConfig, {**common, "sliding_window": None}),
            "qwen2": (Qwen2Config, common)}


MASK_CASES = {
    "ar (causal)": ("ar", {}, 0, 0.0),
    "mlm_u (hidden keys)": ("mlm_u", {}, 0, 0.0),
    "mlm_u shift + keep_sink": ("mlm_u", {"shift": True, "keep_sink": True}, 0, 0.0),
    "mlm_u attend_to_masked": ("mlm_u", {"attend_to_masked": True}, 0, 0.0),
    "mlm_u prompt_sees_answer false": ("mlm_u", {"shift": True, "keep_sink": True, "prompt_sees_answer": False}, 0, 0.0),
    "mlm_u annealing (progress 0.4)": ("mlm_u", {"shift": True, "keep_sink": True}, 0, 0.4),
    "masked_reconstruct": ("masked_reconstruct", {}, 0, 0.0),
    "mixture ar + mlm_u, packed": ("mixture", {"mix": {"ar": 0.5, "mlm_u": 0.5}}, 160, 0.0),
    "mlm_u shift + keep_sink, packed": ("mlm_u", {"shift": True, "keep_sink": True}, 160, 0.0),
}


def mask_batches(objective_name: str, options: dict, pack_length: int, tokenizer, rows):
    """The same batch twice: with the dense mask (sdpa) and with the per-token rule (flex)."""
    from mft import MFTCollator
    from mft.data import TokenizedDataset
    from mft.objectives import build_objective

    examples = [TokenizedDataset.from_rows(tokenizer, rows)[i] for i in range(8)]
    examples = [{**example, "example_index": i, "epoch": 0} for i, example in enumerate(examples)]
    dense = MFTCollator(build_objective(objective_name, **options), tokenizer, seed=0, pack_length=pack_length)
    rule = MFTCollator(build_objective(objective_name, **options), tokenizer, seed=0, pack_length=pack_length,
                       attention="rule")
    return dense(examples), rule(examples)


def compare_masks(device: str, backward: bool) -> list[dict]:
    """flex_attention (block mask from the rule) against sdpa (dense mask): max |logit| and
    |gradient| differences at the real positions, for every mask case and model family."""
    import torch

    from mft.data import FactsTask, build_word_tokenizer, row_texts
    from mft.models.attention import TokenRule, anneal_to_bidirectional

    rows = FactsTask(num_people=6, qa_fraction=0.5, seed=0).build().train
    tokenizer = build_word_tokenizer([t for row in rows for t in row_texts(row)] + ["recover the masked text"])
    results = []
    for family, (config_class, options) in tiny_families().items():
        config = config_class(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **options)
        torch.manual_seed(0)
        from transformers import AutoModelForCausalLM

        models = {}
        for implementation in ("sdpa", "flex_attention"):
            # a config of its own: the attention implementation is set on the config it is given
            models[implementation] = AutoModelForCausalLM.from_config(copy.deepcopy(config),
                                                                      attn_implementation=implementation)
            models[implementation].load_state_dict(models["sdpa"].state_dict())
            models[implementation].to(device).train(backward)
        for case, (name, objective_options, pack_length, anneal) in MASK_CASES.items():
            dense_batch, rule_batch = mask_batches(name, objective_options, pack_length, tokenizer, rows)
            seed = 12345
            if "attention_rule" in rule_batch:
                rule = TokenRule(**rule_batch["attention_rule"], anneal=(anneal, seed) if anneal else None)
                assert torch.equal(rule.dense(), anneal_to_bidirectional(dense_batch["attention_mask"], anneal or 1.0, seed))
                flex_mask = TokenRule(**{k: v.to(device) for k, v in rule_batch["attention_rule"].items()},
                                      anneal=rule.anneal).block_mask()
                dense_mask = rule.dense().to(device)
            else:  # every row causal: a padding mask, from which each implementation builds its causal mask
                flex_mask = dense_mask = dense_batch["attention_mask"].to(device)
            outputs = {}
            for implementation, mask in (("sdpa", dense_mask), ("flex_attention", flex_mask)):
                model = models[implementation]
                model.zero_grad()
                inputs = {"input_ids": dense_batch["input_ids"].to(device), "attention_mask": mask}
                if "position_ids" in dense_batch:
                    inputs["position_ids"] = dense_batch["position_ids"].to(device)
                with torch.set_grad_enabled(backward):
                    logits = model(**inputs).logits.float()
                    predicted = dense_batch["labels"].to(device) != -100
                    if backward:
                        loss = torch.nn.functional.cross_entropy(logits[predicted], dense_batch["labels"].to(device)[predicted])
                        loss.backward()
                gradient = (torch.cat([p.grad.flatten().float() for p in model.parameters()]) if backward else None)
                outputs[implementation] = (logits[predicted].detach(), gradient)
            logit_diff = (outputs["sdpa"][0] - outputs["flex_attention"][0]).abs().max().item()
            gradient_diff = ((outputs["sdpa"][1] - outputs["flex_attention"][1]).abs().max().item() if backward else None)
            assert models["sdpa"].config._attn_implementation == "sdpa"
            results.append({"part": "masks", "family": family, "case": case, "logit_max_diff": logit_diff,
                            "gradient_max_diff": gradient_diff, "predicted": int(predicted.sum())})
    return results


def step_model(device: str, cpu: bool, implementation: str, vocab_size: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, MistralConfig

    if cpu:
        config = MistralConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               num_key_value_heads=1, intermediate_size=128, max_position_embeddings=256)
    else:  # Mistral-7B-v0.1's shapes
        config = MistralConfig(vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                               num_key_value_heads=8, intermediate_size=14336, max_position_embeddings=8192,
                               sliding_window=None)
    dtype = torch.float32 if cpu else torch.bfloat16
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=implementation, dtype=dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    rank = 8 if cpu else 256
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "v_proj"]))
    model.train()  # gradient checkpointing acts in training mode only
    return model, config


def step_tokenizer():
    from mft.data import build_word_tokenizer

    return build_word_tokenizer([" ".join(f"w{i}" for i in range(1000)), "recover the masked text"])


def step_batch(objective_name: str, length: int, tokenizer, attention: str):
    """One row of about `length` tokens made by the objective from random words (masked_reconstruct:
    a document of half that; its row is the masked copy plus the document)."""
    import torch

    from mft import MFTCollator
    from mft.objectives import build_objective

    words = length // 2 - 8 if objective_name == "masked_reconstruct" else length - 2
    generator = torch.Generator().manual_seed(0)
    text = " ".join(f"w{i}" for i in torch.randint(0, 1000, (words,), generator=generator).tolist())
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    collator = MFTCollator(build_objective(objective_name), tokenizer, seed=0, attention=attention)
    return collator([{"input_ids": ids, "prompt_length": 0, "example_index": 0, "epoch": 0}])


def measure_steps(device: str, cpu: bool, budget_s: float) -> list[dict]:
    import importlib.util

    import torch

    from mft.models.attention import TokenRule

    implementations = ["sdpa", "flex_attention"]
    if not cpu and importlib.util.find_spec("flash_attn") is not None:
        implementations.append("flash_attention_2")
    length, steps = (64, 2) if cpu else (2048, 3)
    tokenizer = step_tokenizer()
    gpu_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = next((value for key, value in PEAK_TFLOPS.items() if key in gpu_name), None)
    results = []
    started = time.perf_counter()
    for implementation in implementations:
        if time.perf_counter() - started > budget_s:
            results.append({"part": "steps", "implementation": implementation, "skipped": "time budget spent"})
            continue
        model, config = step_model(device, cpu, implementation, len(tokenizer))
        parameters = sum(p.numel() for p in model.parameters())
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        for objective_name in ("ar", "mlm_u", "masked_reconstruct"):
            if implementation == "flash_attention_2" and objective_name != "ar":
                continue  # bidirectional with hidden keys: a mask flash-attention cannot express
            attention = "rule" if implementation == "flex_attention" else "dense"
            batch = step_batch(objective_name, length, tokenizer, attention)
            labels, weights = batch.pop("labels").to(device), batch.pop("loss_weights").to(device)
            inputs = {"input_ids": batch["input_ids"].to(device)}
            if "attention_rule" in batch:
                inputs["attention_mask"] = TokenRule(**{k: v.to(device) for k, v in batch["attention_rule"].items()}).block_mask()
            else:  # dense [1, 1, L, L], or a padding mask for causal rows
                inputs["attention_mask"] = batch["attention_mask"].to(device)
            row = {"part": "steps", "implementation": implementation, "objective": objective_name,
                   "tokens": int(inputs["input_ids"].numel())}
            try:
                if cpu and implementation == "flex_attention":  # no flex backward on CPU: forward only
                    with torch.no_grad():
                        model(**inputs)
                    row.update(forward_only=True)
                    results.append(row)
                    continue
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                times = []
                for step in range(steps + 1):  # step 0 warms up (compiles flex)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    tick = time.perf_counter()
                    logits = model(**inputs).logits
                    predicted = weights > 0
                    per_token = torch.nn.functional.cross_entropy(logits[predicted].float(), labels[predicted],
                                                                  reduction="none")
                    loss = (per_token * weights[predicted]).sum() / weights.sum()
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    if step:
                        times.append(time.perf_counter() - tick)
                seconds = sorted(times)[len(times) // 2]
                tokens_per_s = row["tokens"] / seconds
                # 6 N per token (forward 2N, backward 4N: activations' and LoRA's gradients), + the
                # recomputed forward of gradient checkpointing is not counted (MFU, not HFU)
                mfu = 6 * parameters * tokens_per_s / (peak * 1e12) if peak else None
                row.update(step_s=seconds, tokens_per_s=tokens_per_s, mfu=mfu, loss=float(loss),
                           peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None)
            except Exception as error:  # one failing variant must not hide the others
                row.update(error=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            results.append(row)
        del model, optimizer
        if device == "cuda":
            torch.cuda.empty_cache()
    return results


def compare_loss_kernels(device: str) -> list[dict]:
    """The fused linear cross-entropy kernels against the chunked path: per-token weighted losses and
    the gradients of the hidden states and the head (bf16 hidden states, a 32000-word head)."""
    import importlib.util

    import torch

    from mft.loss import LOSS_KERNELS, selected_position_losses

    results = []
    for kernel, (module, package) in LOSS_KERNELS.items():
        row = {"part": "loss", "kernel": kernel}
        if device != "cuda" or importlib.util.find_spec(module) is None:
            row["skipped"] = f"{package} is not installed here" if device == "cuda" else "GPU only"
            results.append(row)
            continue
        torch.manual_seed(0)
        head = torch.nn.Linear(4096, 32000, bias=False, device=device, dtype=torch.bfloat16)
        labels = torch.randint(0, 32000, (4, 512), device=device)
        labels[torch.rand(4, 512, device=device) < 0.5] = -100
        weights = torch.rand(4, 512, device=device) * (labels != -100)
        hidden = torch.randn(int((labels != -100).sum()), 4096, device=device, dtype=torch.bfloat16, requires_grad=True)
        try:
            losses = {}
            for name in (kernel, "chunked"):
                loss = selected_position_losses(head, hidden, labels, weights, chunk_size=1024, kernel=name).sum()
                losses[name] = (loss.detach().float(), torch.autograd.grad(loss, [hidden, head.weight]))
            row.update(loss_relative_diff=float((losses[kernel][0] - losses["chunked"][0]).abs() / losses["chunked"][0].abs()),
                       gradient_max_diff=max(float((a.float() - b.float()).abs().max())
                                             for a, b in zip(losses[kernel][1], losses["chunked"][1])))
        except Exception as error:
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        results.append(row)
    return results


def run_recipes(cpu: bool, out: Path) -> list[dict]:
    import importlib.util

    configs = ["cpu.yaml"] if cpu else ["single_gpu.yaml", "deepspeed_zero2.yaml"]
    results = []
    for config in configs:
        row = {"part": "recipes", "config": config}
        if "deepspeed" in config and importlib.util.find_spec("deepspeed") is None:
            row["skipped"] = "deepspeed is not installed here"
            results.append(row)
            continue
        run_dir = out / f"recipe_{Path(config).stem}"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "accelerate_configs" / config), "-m", "mft.train", str(ROOT / "recipes" / "quickstart.yaml"),
                   f"training.output_dir={run_dir}", "training.max_steps=30", "training.eval_strategy=no",
                   "training.save_strategy=no", "training.report_to=none", "training.disable_tqdm=true",
                   "training.overwrite_output_dir=true"]
        if not cpu:
            command.append("training.use_cpu=false")
        tick = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
        row.update(seconds=time.perf_counter() - tick, returncode=done.returncode,
                   last_line=(done.stdout.strip().splitlines() or done.stderr.strip().splitlines() or [""])[-1][:200])
        results.append(row)
    return results


def print_table(results: list[dict]) -> None:
    print("| part | what | result |")
    print("|---|---|---|")
    for row in results:
        part = row["part"]
        if part == "masks":
            what = f"{row['family']}: {row['case']}"
            result = f"logits max diff {row['logit_max_diff']:.2e}"
            if row["gradient_max_diff"] is not None:
                result += f", gradients max diff {row['gradient_max_diff']:.2e}"
        elif part == "steps":
            what = f"{row['implementation']} {row.get('objective', '')}".strip()
            if "error" in row or "skipped" in row:
                result = row.get("error") or row["skipped"]
            elif row.get("forward_only"):
                result = "forward ran (no flex backward on CPU)"
            else:
                result = (f"{row['tokens_per_s']:.0f} tokens/s, step {row['step_s']:.2f} s"
                          + (f", peak {row['peak_gib']:.1f} GiB" if row.get("peak_gib") is not None else "")
                          + (f", MFU {row['mfu']:.1%}" if row.get("mfu") is not None else ""))
        elif part == "loss":
            what = row["kernel"]
            result = (row.get("skipped") or row.get("error")
                      or f"loss relative diff {row['loss_relative_diff']:.1e}, gradients max diff {row['gradient_max_diff']:.1e}")
        elif part == "recipes":
            what = row["config"]
            result = row.get("skipped") or f"exit {row['returncode']} in {row['seconds']:.0f} s: {row['last_line']}"
        else:
            what, result = row.get("what", ""), row.get("error", "")
        print(f"| {part} | {what} | {result} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="a dry run on CPU with tiny shapes")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new step variants after this")
    parser.add_argument("--parts", default="masks,loss,steps,recipes")
    args = parser.parse_args(argv)
    import torch

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --cpu for the dry run", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    started = time.perf_counter()
    parts = {"masks": lambda: compare_masks(device, backward=not args.cpu),
             "loss": lambda: compare_loss_kernels(device),
             "steps": lambda: measure_steps(device, args.cpu, args.budget_s),
             "recipes": lambda: run_recipes(args.cpu, out)}
    for name in args.parts.split(","):
        tick = time.perf_counter()
        try:
            results.extend(parts[name]())
        except Exception as error:
            traceback.print_exc()
            results.append({"part": name, "what": "failed", "error": f"{type(error).__name__}: {error}"[:300]})
        print(f"gpu_check: {name} took {time.perf_counter() - tick:.0f} s", flush=True)
    print_table(results)
    summary = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
               "seconds": time.perf_counter() - started, "results": results}
    import transformers

    summary["transformers"] = transformers.__version__
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    failed = [row for row in results if "error" in row]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
