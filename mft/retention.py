"""Forgetting, measured without a download: how far fine-tuning moved a pretrained model away from
what it could already do.

At the start of a run the base model (the pretrained model before any step) continues a fixed set
of neutral prompts greedily (`NEUTRAL_PROMPTS`, plain text, no chat template). Those continuations
are the base model's own text, so the base model predicts them well. At every evaluation the model
being trained scores them again:

    NLL = -(1/T) sum_t log p(c_t | prompt, c_<t)      over the T continuation tokens, causal attention

and the *drift* is NLL(now) - NLL(base), in nats per token: 0 at step 0, growing as fine-tuning
overwrites general ability. Scoring is always causal (next-token), whatever the objective trained:
it asks what the pretrained model was good at. `data.retention_file` replaces the built-in prompts
with the user's own general text (each row scored whole, from its second token).

The lever, `data.replay: F`: about F replay texts per training example are mixed into training as
next-token rows (the base model's continuations of a second, disjoint set of prompts, or the odd
rows of the retention file; the measured set stays out of training).

The set is written to the run folder (`retention.json`) and read back on resume, so a resumed run
measures drift against the same base continuations.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data.tokenize import bos_ids
from .errors import RecipeError

RETENTION_FILE = "retention.json"

# General-knowledge and everyday openings, none about the people or facts a user would teach; the
# first half is measured, the second half is the replay pool.
NEUTRAL_PROMPTS = (
    "The capital of France is", "Water boils at a temperature of", "The largest planet in our solar system is",
    "To make a cup of tea, you first", "The main ingredients of bread are", "Photosynthesis is the process by which",
    "In the morning, many people like to", "A triangle has three sides and", "The Pacific Ocean is",
    "The heart is an organ that", "During the winter, the days are", "A library is a place where",
    "The first step in solving a math problem is", "Dogs are popular pets because", "The moon orbits",
    "When it rains, people often", "The alphabet begins with the letters", "A healthy breakfast might include",
    "Computers store information in", "The river flows from the mountains to", "Trees lose their leaves in",
    "A good friend is someone who", "The sun rises in the", "Music can make people feel",
    "Most birds can fly because", "The human body needs water to", "A bicycle has two wheels and",
    "Schools teach children how to", "The ocean is salty because", "Cooking pasta requires",
    "An elephant is a large animal that", "The internet allows people to",
    "The Great Wall of China was built to", "Bees are important because they", "A calendar year has",
    "The color of the sky on a clear day is", "To plant a seed, you need", "Ice melts when",
    "A doctor helps people who", "The Earth revolves around", "Reading books can help you",
    "The seasons of the year are", "A car needs fuel in order to", "Mountains are formed when",
    "Honey is made by", "A good night's sleep helps", "Volcanoes erupt when", "Cats often sleep for",
    "A map shows", "The fastest land animal is", "Vegetables are good for you because",
    "Electricity powers many things, such as", "The city was quiet in the early hours, and",
    "Learning a new language takes", "A recipe is a list of", "Clouds are made of",
    "Football is a sport in which", "The printing press changed the world by", "A thermometer measures",
    "Rainbows appear when", "Trains carry passengers and", "The kitchen smelled of fresh",
    "Writing a letter begins with", "Stars shine at night because",
)
CONTINUATION_TOKENS = 32


@dataclass
class RetentionSet:
    """Token ids to score (`measured`: [(ids, first scored position)]), the base model's NLL on
    them, and the replay texts (`replay`: plain text)."""

    measured: list[tuple[list[int], int]]
    base_nll: float
    replay: list[str]
    source: str

    def save(self, folder: str | Path) -> None:
        data = {"source": self.source, "base_nll": self.base_nll,
                "measured": [{"ids": ids, "scored_from": start} for ids, start in self.measured],
                "replay": self.replay}
        path = Path(folder) / RETENTION_FILE
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(data))
        partial.replace(path)

    @classmethod
    def load(cls, folder: str | Path) -> "RetentionSet | None":
        path = Path(folder) / RETENTION_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls([(item["ids"], item["scored_from"]) for item in data["measured"]], data["base_nll"],
                   data["replay"], data["source"])


def build_retention_set(model, tokenizer, retention_texts: list[str] | None = None,
                        batch_size: int = 16) -> RetentionSet:
    """The set for a run: the base model's greedy continuations of `NEUTRAL_PROMPTS` (first half
    measured, second half replay), or the user's texts (even rows measured, odd rows replay)."""
    bos = bos_ids(tokenizer)
    if retention_texts is None:
        from .decoding import generate_causal

        half = len(NEUTRAL_PROMPTS) // 2
        prompts = [bos + tokenizer(text, add_special_tokens=False)["input_ids"] for text in NEUTRAL_PROMPTS]
        continuations = []
        for start in range(0, len(prompts), batch_size):
            continuations += generate_causal(model, tokenizer, prompts[start:start + batch_size], CONTINUATION_TOKENS)
        measured = [(prompt + continuation, len(prompt))
                    for prompt, continuation in zip(prompts[:half], continuations[:half]) if continuation]
        replay = [text + tokenizer.decode(continuation, skip_special_tokens=True)
                  for text, continuation in zip(NEUTRAL_PROMPTS[half:], continuations[half:])]
        source = f"{half} built-in neutral prompts, continued by the base model ({CONTINUATION_TOKENS} tokens)"
    else:
        measured = [(bos + tokenizer(text, add_special_tokens=False)["input_ids"], max(1, len(bos)))
                    for text in retention_texts[0::2]]
        measured = [(ids, start) for ids, start in measured if len(ids) > start]
        replay = list(retention_texts[1::2])
        source = f"data.retention_file ({len(measured)} texts measured, {len(replay)} for replay)"
    if not measured:
        raise RecipeError("the retention set is empty: data.retention_file needs rows of text (at least one)")
    return RetentionSet(measured, mean_nll(model, tokenizer, measured, batch_size), replay, source)


@torch.no_grad()
def mean_nll(model, tokenizer, items: list[tuple[list[int], int]], batch_size: int = 16) -> float:
    """Per-token negative log-likelihood (nats) of every item's tokens from `scored_from` on, under
    causal attention, averaged over all scored tokens."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, count = 0.0, 0
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            length = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), length), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), length), dtype=torch.long)
            scored = torch.zeros((len(batch), length), dtype=torch.bool)
            for row, (ids, first) in enumerate(batch):  # right padding: causal attention never sees it
                input_ids[row, :len(ids)] = torch.tensor(ids)
                attention[row, :len(ids)] = 1
                scored[row, first:len(ids)] = True
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
            # position t predicts token t+1
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = input_ids[:, 1:].to(device)
            token_nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            mask = scored[:, 1:].to(device)
            total += token_nll[mask].sum().item()
            count += int(mask.sum())
    finally:
        model.train(was_training)
    return total / count if count else math.nan


def retention_metrics(model, tokenizer, retention: RetentionSet, batch_size: int = 16) -> dict[str, float]:
    nll = mean_nll(model, tokenizer, retention.measured, batch_size)
    return {"nll": nll, "base_nll": retention.base_nll, "drift": nll - retention.base_nll}


def replay_rows(retention: RetentionSet, fraction: float, num_train: int) -> list[dict[str, Any]]:
    """round(fraction * num_train) replay rows ({"text", "replay": True}), cycling through the
    replay texts."""
    wanted = round(fraction * num_train)
    if not wanted or not retention.replay:
        return []
    return [{"text": retention.replay[i % len(retention.replay)], "replay": True} for i in range(wanted)]
