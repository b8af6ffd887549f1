"""Training-step throughput and memory: mft's selected-logits loss against full logits and a plain Trainer.

    python benchmarks/throughput.py [--model smollm2-135m|tiny|mistral-7b-shape] [--batch 8] [--seq 256]
                                    [--lora-r 64] [--steps 5] [--warmup 2] [--out FILE]

For one model, batch size and document length it times a full training step (forward, backward,
AdamW update) of

    ar, mlm_u, masked_reconstruct   each with the straightforward path (`:full`, full-vocabulary
                                    logits at every position, `training.full_logits: true`) and mft's
                                    path (`:selected`, the LM head only at predicted positions);
    masked_reconstruct:cached_prompt  mft's path with `training.prompt_gradient: false` (the prompt,
                                    i.e. the masked copy, runs without gradient; same loss, an
                                    approximate gradient);
    trainer_ar                      a plain `transformers.Trainer` step: the model's own causal-LM loss
                                    on the same documents, the reference for "no toolkit overhead".

All variants share one model and optimizer and run interleaved after `--warmup` rounds, each round
starting one variant later (A B C, B C A, C A B, ...), so slow drifts of a noisy machine hit every
variant alike and none always runs right after the same (large) one; medians and ratios to mft's
`ar` are reported. The documents are the same for every variant (`masked_reconstruct`
sees each twice: masked copy + target). "collate" is the time the collator takes to build the
batch (masking included) as a fraction of the step: an upper bound of the time a step waits for
data with `dataloader_num_workers: 0` (workers hide it entirely).

Peak memory: on a GPU, `torch.cuda.max_memory_allocated` per variant; on CPU, the peak resident
memory (sampled every 5 ms) of a fresh process while it runs two steps of one variant, minus its
resident memory before the first step (`--memory-only VARIANT` is that process).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mft import MFTCollator, MFTConfig, MFTTrainer  # noqa: E402
from mft.data import FactsTask, TokenizedDataset  # noqa: E402
from mft.objectives import IGNORE, build_objective  # noqa: E402

VARIANTS = ["trainer_ar", "ar:full", "ar:selected", "mlm_u:full", "mlm_u:selected",
            "masked_reconstruct:full", "masked_reconstruct:selected", "masked_reconstruct:cached_prompt"]
PATHS = {"full": dict(full_logits=True), "selected": {}, "cached_prompt": dict(prompt_gradient=False)}


def load(model_name: str, lora_r: int, device: str, dtype: torch.dtype, attn: str):
    from mft.config import PeftOptions
    from mft.models.loading import ensure_mask_token, ensure_pad_token, load_pretrained
    from mft.models.peft import apply_peft

    if model_name == "smollm2-135m":
        model, tokenizer = load_pretrained("smollm2-135m", dtype=dtype, attn_implementation=attn)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig

        from mft.models.loading import resolve_model_source
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("smollm2-135m")[0])  # a real tokenizer
        if model_name == "tiny":
            config = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        else:  # Mistral-7B's shape, random weights (mistralai/Mistral-7B-v0.1's config.json)
            config = MistralConfig.from_json_file(ROOT / "tests" / "fixtures" / "mistral-7b-v0.1-config.json")
            config.vocab_size = max(config.vocab_size, len(tokenizer))
        config._attn_implementation = attn
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    ensure_pad_token(tokenizer)
    ensure_mask_token(tokenizer, model)
    model = apply_peft(model, PeftOptions(method="lora", r=lora_r, alpha=lora_r, dropout=0.0,
                                          target_modules="all-linear"), trainable_token_ids=[tokenizer.mask_token_id])
    return model.to(device), tokenizer


def documents(tokenizer, batch: int, seq: int) -> list[dict]:
    """`batch` documents of `seq` tokens each: fictional-fact statements run together (real text)."""
    statements = [row["text"] for row in FactsTask(num_people=40, qa_fraction=0.0).build().train]
    rng = random.Random(0)
    docs = []
    for _ in range(batch):
        words: list[str] = []
        while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < seq:
            words.append(rng.choice(statements))
        ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][: seq - 1]
        docs.append({"text": tokenizer.decode(ids)})
    return docs


class Bench:
    def __init__(self, args):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if args.bf16 else torch.float32
        self.model, self.tokenizer = load(args.model, args.lora_r, self.device, dtype, args.attn)
        self.model.train()
        rows = documents(self.tokenizer, args.batch, args.seq)
        self.dataset = TokenizedDataset.from_rows(self.tokenizer, rows)
        self.examples = [self.dataset[i] for i in range(len(self.dataset))]
        common = dict(output_dir=str(ROOT / "runs" / "throughput"), report_to="none", use_cpu=self.device == "cpu",
                      per_device_train_batch_size=args.batch, bf16=args.bf16, disable_tqdm=True, save_strategy="no")
        self.trainers = {path: MFTTrainer(model=self.model, args=MFTConfig(**common, **options), train_dataset=self.dataset,
                                          data_collator=None, processing_class=self.tokenizer)
                         for path, options in PATHS.items()}
        from transformers import Trainer, TrainingArguments
        self.plain = Trainer(model=self.model, args=TrainingArguments(**common), processing_class=self.tokenizer)
        for trainer in [self.plain, *self.trainers.values()]:
            trainer.current_gradient_accumulation_steps = 1  # set by train(); training_step is called directly
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-5)
        self.collators = {name: MFTCollator(build_objective(name, **({"shift": True} if name == "mlm_u" else {})),
                                            self.tokenizer, seed=0)
                          for name in ("ar", "mlm_u", "masked_reconstruct")}

    def batch(self, variant: str) -> dict:
        if variant == "trainer_ar":
            batch = self.collators["ar"](self.examples)
            labels = torch.where(batch["attention_mask"].bool(), batch["input_ids"], IGNORE)
            return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
        return self.collators[variant.split(":")[0]](self.examples)

    def step(self, variant: str) -> tuple[float, float, int]:
        """(collate seconds, step seconds, tokens) for one training step of `variant`."""
        started = time.perf_counter()
        batch = self.batch(variant)
        collated = time.perf_counter()
        trainer = self.plain if variant == "trainer_ar" else self.trainers[variant.split(":")[1]]
        batch = {k: v.to(self.device) for k, v in batch.items()}
        items = None if variant == "trainer_ar" else batch["loss_weights"].sum()
        trainer.training_step(self.model, batch, items)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return collated - started, time.perf_counter() - collated, int(batch["attention_mask"].bool().sum()
                                                                      if batch["attention_mask"].dim() == 2
                                                                      else batch["input_ids"].numel())


def rss_mib() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", choices=["smollm2-135m", "tiny", "mistral-7b-shape"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="measured rounds (each runs every variant once)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--variants", nargs="*", default=VARIANTS)
    parser.add_argument("--memory-only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-memory", action="store_true", help="skip the CPU memory processes")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "throughput.json"))
    args = parser.parse_args()

    bench = Bench(args)
    if args.memory_only:  # a fresh process: peak resident memory of two steps of one variant
        # (ru_maxrss would include the peak of loading the model, so RSS is sampled during the steps)
        before, peak, done = rss_mib(), [0.0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_mib())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for _ in range(2):
            bench.step(args.memory_only)
        done.set()
        sampler.join()
        print(json.dumps({"peak_mib": peak[0] - before}))
        return

    times: dict[str, list[tuple[float, float, int]]] = {v: [] for v in args.variants}
    memory: dict[str, float] = {}
    for round_index in range(args.warmup + args.steps):
        shift = round_index % len(args.variants)  # each round starts one variant later: no variant always
        for variant in args.variants[shift:] + args.variants[:shift]:  # follows the same one
            if bench.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            measured = bench.step(variant)
            if bench.device == "cuda":
                memory[variant] = max(memory.get(variant, 0.0), torch.cuda.max_memory_allocated() / 2**20)
            if round_index >= args.warmup:
                times[variant].append(measured)
        print(f"round {round_index + 1}/{args.warmup + args.steps}", flush=True)
    if bench.device == "cpu" and not args.no_memory:
        for variant in args.variants:
            command = [sys.executable, __file__, "--memory-only", variant, "--model", args.model, "--batch",
                       str(args.batch), "--seq", str(args.seq), "--lora-r", str(args.lora_r), "--attn", args.attn]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            memory[variant] = json.loads(output.strip().splitlines()[-1])["peak_mib"]

    rows = []
    reference = statistics.median(t for _, t, _ in times["ar:selected"]) if "ar:selected" in times else None
    for variant in args.variants:
        collate = statistics.median(c for c, _, _ in times[variant])
        step = statistics.median(t for _, t, _ in times[variant])
        tokens = times[variant][0][2]
        rows.append({"variant": variant, "step_s": round(step, 3), "steps_s": [round(t, 3) for _, t, _ in times[variant]],
                     "tokens_per_s": round(tokens / step, 1),
                     "vs_mft_ar": round(step / reference, 3) if reference else None,
                     "collate_fraction": round(collate / (collate + step), 4), "peak_mib": round(memory[variant], 1) if variant in memory else None})
    device = torch.cuda.get_device_name() if bench.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{args.model}, LoRA r={args.lora_r}, batch {args.batch} x {args.seq} tokens, {args.attn}, "
          f"{'bf16' if args.bf16 else 'fp32'}, {device}; median of {args.steps} interleaved steps\n")
    print("| variant | step s | min-max s | tokens/s | x mft ar | collate share | peak MiB |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['step_s']:.2f} | {min(row['steps_s']):.2f}-{max(row['steps_s']):.2f} | "
              f"{row['tokens_per_s']:.0f} | {row['vs_mft_ar']} | "
              f"{row['collate_fraction']:.1%} | {row['peak_mib'] if row['peak_mib'] is not None else '-'} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "lora_r": args.lora_r, "batch": args.batch,
                                          "seq": args.seq, "attn": args.attn, "bf16": args.bf16, "device": device,
                                          "steps": args.steps, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
