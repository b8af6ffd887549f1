"""The reversal curse as a training-dynamics effect (Zhu et al. 2024), on a one-layer transformer.

    python examples/training_dynamics/train.py [--setting reversal|chain|both] [--steps 1500]
                                               [--out runs/training_dynamics]

Two disjoint alphabets X = {x0..x(N-1)} and Y = {y0..y(N-1)} are paired at random (x_i <-> y_i).

  reversal  training sequences "x -> y" for every pair, and "y <- x" for 70% of the pairs; the
            reverse "y <- x" of the other 30% is held out. A left-to-right model learns the weight
            from x to y but never from y to x (Zhu et al.'s weight asymmetry), so its held-out
            reverse NLL stays near chance, log N, while its training NLL goes to ~0.
  chain     a third alphabet Z; "x -> y" and "y -> z" for every triple, plus "x -> z" for 70% of
            them; "x -> z" of the other 30% is held out (intransitivity: A -> B and B -> C do not
            give A -> C without chain of thought).

Each setting is trained twice from the same initialisation, with `ar` and with `mlm_u`, through
mft's collator and trainer; every `--eval-every` steps a callback measures the NLL (nats) of the
last token of (a) the trained sequences and (b) the held-out ones, each model asked its own way:
AR from the causal prefix, MLM-U with the last token masked (the left-to-right masked decoding
slot). Writes `dynamics.json` and `dynamics.png` (one panel per setting) to `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from mft import MFTCollator, MFTConfig, MFTTrainer
from mft.data import TokenizedDataset, build_word_tokenizer, encode_row
from mft.models import attention_mask_4d
from mft.objectives import build_objective


def reversal_data(n: int, both_fraction: float, rng: random.Random):
    xs, ys = [f"x{i}" for i in range(n)], [f"y{i}" for i in range(n)]
    rng.shuffle(ys)
    both = set(rng.sample(range(n), round(both_fraction * n)))
    train = [f"{x} -> {y}" for x, y in zip(xs, ys)] + [f"{ys[i]} <- {xs[i]}" for i in sorted(both)]
    held_out = [f"{ys[i]} <- {xs[i]}" for i in range(n) if i not in both]
    return train, held_out


def chain_data(n: int, both_fraction: float, rng: random.Random):
    xs, ys, zs = [f"x{i}" for i in range(n)], [f"y{i}" for i in range(n)], [f"z{i}" for i in range(n)]
    rng.shuffle(ys)
    rng.shuffle(zs)
    direct = set(rng.sample(range(n), round(both_fraction * n)))
    train = ([f"{x} -> {y}" for x, y in zip(xs, ys)] + [f"{y} -> {z}" for y, z in zip(ys, zs)]
             + [f"{xs[i]} -> {zs[i]}" for i in sorted(direct)])
    held_out = [f"{xs[i]} -> {zs[i]}" for i in range(n) if i not in direct]
    return train, held_out


@torch.no_grad()
def last_token_nll(model, tokenizer, texts: list[str], masked: bool) -> float:
    """Mean -log p(last word | the words before it): causal logits at the position before it, or,
    for a masked model, the logits at the last word's position with that word masked and hidden."""
    model.eval()
    rows = [encode_row(tokenizer, {"text": text})["input_ids"][:-1] for text in texts]  # drop EOS
    ids = torch.tensor(rows)  # every sequence has the same length here
    targets = ids[:, -1].clone()
    if masked:
        ids[:, -1] = tokenizer.mask_token_id
        hidden = torch.zeros_like(ids, dtype=torch.bool)
        hidden[:, -1] = True
        mask = attention_mask_4d(torch.ones_like(hidden), torch.zeros(len(ids), dtype=torch.bool), hidden)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -1]
    else:
        logits = model(input_ids=ids).logits[:, -2]
    model.train()
    return torch.nn.functional.cross_entropy(logits.float(), targets).item()


class NLLCurve(TrainerCallback):
    def __init__(self, tokenizer, train_texts, held_out, masked, every):
        self.tokenizer, self.train_texts, self.held_out, self.masked, self.every = tokenizer, train_texts, held_out, masked, every
        self.points: list[dict[str, float]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == 1:
            self.points.append({"step": state.global_step,
                                "train_nll": last_token_nll(model, self.tokenizer, self.train_texts, self.masked),
                                "held_out_nll": last_token_nll(model, self.tokenizer, self.held_out, self.masked)})


def train_one(objective: str, train_texts, held_out, tokenizer, args, out: Path) -> list[dict[str, float]]:
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden_size, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=4 * args.hidden_size, max_position_embeddings=16, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    dataset = TokenizedDataset.from_rows(tokenizer, [{"text": text} for text in train_texts])
    collator = MFTCollator(build_objective(objective), tokenizer, seed=args.seed)
    callback = NLLCurve(tokenizer, train_texts, held_out, masked=objective != "ar", every=args.eval_every)
    config = MFTConfig(output_dir=str(out / objective), max_steps=args.steps, per_device_train_batch_size=64,
                       learning_rate=args.lr, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
                       logging_steps=100, save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True,
                       seed=args.seed, disable_tqdm=True)
    MFTTrainer(model=model, args=config, train_dataset=dataset, data_collator=collator,
               callbacks=[callback]).train()
    return callback.points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=["reversal", "chain", "both"], default="both")
    parser.add_argument("--alphabet", type=int, default=100, help="N, the size of each alphabet")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/training_dynamics")
    args = parser.parse_args()
    out = Path(args.out)
    settings = ["reversal", "chain"] if args.setting == "both" else [args.setting]
    results = {"chance_nll": math.log(args.alphabet), "args": vars(args)}
    for setting in settings:
        make = reversal_data if setting == "reversal" else chain_data
        train_texts, held_out = make(args.alphabet, 0.7, random.Random(args.seed))
        tokenizer = build_word_tokenizer(train_texts + held_out)
        results[setting] = {objective: train_one(objective, train_texts, held_out, tokenizer, args, out / setting)
                            for objective in ("ar", "mlm_u")}
        for objective, points in results[setting].items():
            last = points[-1]
            print(f"{setting:8s} {objective:5s} step {last['step']}: train NLL {last['train_nll']:.3f}, held-out "
                  f"NLL {last['held_out_nll']:.3f} (chance {results['chance_nll']:.3f})", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dynamics.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, settings, out / "dynamics.png")
    print(f"wrote {out / 'dynamics.json'} and {out / 'dynamics.png'}")


def plot(results, settings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4), squeeze=False)
    titles = {"reversal": "reversal: held out = 'y <- x' of one-way pairs", "chain": "chain: held out = 'x -> z'"}
    for axis, setting in zip(axes[0], settings):
        for objective, color in (("ar", "tab:red"), ("mlm_u", "tab:blue")):
            points = results[setting][objective]
            steps = [p["step"] for p in points]
            axis.plot(steps, [p["train_nll"] for p in points], color=color, linestyle="--", label=f"{objective} train")
            axis.plot(steps, [p["held_out_nll"] for p in points], color=color, label=f"{objective} held out")
        axis.axhline(results["chance_nll"], color="gray", linewidth=0.8, label="chance (log N)")
        axis.set(title=titles[setting], xlabel="step", ylabel="NLL of the last token (nats)")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
