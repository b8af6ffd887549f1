"""Forward/backward question answering: metrics, and the run's report (table + plot).

A QA item is {"question", "answer", "direction"}. The model answers greedily (see `mft.decoding`),
through the chat template when the tokenizer has one. Exact match compares the generated answer
and the reference after lower-casing and collapsing whitespace; ROUGE-1 recall is the fraction of
the reference's content words (no stopwords, no punctuation) found in the answer. Metrics per
direction: {"forward": {"exact_match": 0.97, "rouge1_recall": 0.98, "n": 40}, ...}.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from .config import read_yaml
from .training_args import MFTConfig, mft_option
from .data.schema import DIRECTIONS, read_rows, validate_qa_row
from .data.tokenize import encode_prompt
from .decoding import generate
from .errors import RecipeError
from .objectives import Objective, build_objective
from .run_folder import checkpoints


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


# A common English stopword list (the NLTK list, abridged), used by the masked fine-tuning paper's
# ROUGE-1 recall "with stopwords and punctuation removed".
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we
were what when where which while who whom why will with would you your yours yourself yourselves
""".split())


def content_words(text: str) -> list[str]:
    """Lower-cased words without punctuation and stopwords."""
    words = re.findall(r"[^\W_]+(?:'[^\W_]+)?", text.lower())
    return [word for word in words if word not in STOPWORDS]


def rouge1_recall(prediction: str, reference: str) -> float:
    """ROUGE-1 recall on content words: the fraction of the reference's words (counted with
    multiplicity) that the prediction contains. Written here because rouge-score keeps stopwords.
    A reference with no content word is scored by exact match."""
    reference_words = Counter(content_words(reference))
    if not reference_words:
        return float(normalize(prediction) == normalize(reference))
    overlap = reference_words & Counter(content_words(prediction))
    return sum(overlap.values()) / sum(reference_words.values())


def evaluate_qa(model, tokenizer, qa: list[dict[str, str]], decoding: str,
                max_new_tokens: int = MFTConfig.max_new_tokens, batch_size: int = 64, shift: bool = False,
                keep_sink: bool = False, attend_to_masked: bool = False,
                predictions: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Exact match and ROUGE-1 recall per direction (and the incorrect-inference rate where QA rows give
    an `incorrect_answer`); each answer given is appended to `predictions`
    (question, answer, direction, prediction, exact_match) when a list is passed. `shift`,
    `keep_sink`, `attend_to_masked`: the rules the model was trained with (see `mft.decoding.generate`)."""
    was_training = model.training
    model.eval()
    try:
        prompts = [encode_prompt(tokenizer, item["question"]) for item in qa]
        answers = generate(model, tokenizer, prompts, decoding, max_new_tokens, batch_size, shift=shift,
                           keep_sink=keep_sink, attend_to_masked=attend_to_masked)
    finally:
        model.train(was_training)
    texts = [tokenizer.decode(answer, skip_special_tokens=True) for answer in answers]
    if predictions is not None:
        predictions.extend({**item, "prediction": text, "exact_match": normalize(text) == normalize(item["answer"])}
                           for item, text in zip(qa, texts))
    results: dict[str, dict[str, Any]] = {}
    for direction in DIRECTIONS:
        pairs = [(text, item["answer"]) for item, text in zip(qa, texts) if item["direction"] == direction]
        if pairs:
            results[direction] = {
                "exact_match": sum(normalize(p) == normalize(r) for p, r in pairs) / len(pairs),
                "rouge1_recall": sum(rouge1_recall(p, r) for p, r in pairs) / len(pairs),
                "n": len(pairs),
            }
            swaps = [(text, item["incorrect_answer"]) for item, text in zip(qa, texts)
                     if item["direction"] == direction and "incorrect_answer" in item]
            if swaps:  # answered with the other neighbour: the relation was treated as symmetric
                results[direction]["incorrect_inference"] = sum(normalize(p) == normalize(w) for p, w in swaps) / len(swaps)
    return results


def flatten_metrics(results: dict[str, dict[str, Any]], prefix: str = "eval") -> dict[str, float]:
    """{"forward": {"exact_match": x}} -> {"eval_forward_exact_match": x} for the Trainer's log."""
    return {f"{prefix}_{direction}_{name}": value for direction, metrics in results.items()
            for name, value in metrics.items() if name != "n"}


def accuracy_history(log_history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """[(step, exact match)] per direction, from the Trainer's `state.log_history`."""
    history: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for direction in DIRECTIONS:
            key = f"eval_{direction}_exact_match"
            if key in entry:
                history.setdefault(direction, []).append((entry["step"], entry[key]))
    return history


def write_report(output_dir: str | Path, results: dict[str, dict[str, Any]], log_history: list[dict[str, Any]],
                 title: str, details: dict[str, Any], predictions: list[dict[str, Any]] | None = None) -> None:
    """eval_results.json, report.md (a table), accuracy.png (accuracy over training steps) and
    predictions.jsonl (every question with the answer the model gave), when `predictions` is given."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    if predictions is not None:
        with open(output_dir / "predictions.jsonl", "w") as file:
            file.writelines(json.dumps(row) + "\n" for row in predictions)
    history = accuracy_history(log_history)
    has_plot = plot_history(history, output_dir / "accuracy.png", title)

    lines = [f"# {title}", "", "| direction | exact match | ROUGE-1 recall | n |", "|---|---|---|---|"]
    for direction, metrics in results.items():
        lines.append(f"| {direction} | {metrics['exact_match']:.3f} | {metrics.get('rouge1_recall', float('nan')):.3f} "
                     f"| {metrics['n']} |")
    if any("incorrect_inference" in metrics for metrics in results.values()):
        lines += ["", "| direction | incorrect inference |", "|---|---|"]
        lines += [f"| {d} | {m['incorrect_inference']:.3f} |" for d, m in results.items() if "incorrect_inference" in m]
    lines += ["", "| setting | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in details.items()]
    if history:
        lines += ["", "## Exact match during training", "", "| step | " + " | ".join(history) + " |",
                  "|---|" + "---|" * len(history)]
        steps = sorted({step for points in history.values() for step, _ in points})
        by_step = {d: dict(points) for d, points in history.items()}
        for step in steps:
            cells = [f"{by_step[d][step]:.3f}" if step in by_step[d] else "" for d in history]
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
    if has_plot:
        lines += ["", "![exact match over training](accuracy.png)"]
    (output_dir / "report.md").write_text("\n".join(lines) + "\n")


def plot_history(history: dict[str, list[tuple[int, float]]], path: Path, title: str) -> bool:
    if not history:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for direction, points in history.items():
        steps, values = zip(*points)
        axis.plot(steps, values, marker="o", label=direction)
    axis.set_xlabel("training step")
    axis.set_ylabel("exact match (held-out queries)")
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


class QASet(list):
    """Evaluation questions: a list of {"question", "answer", "direction"} answered by generation."""


class QAEvaluationMixin:
    """For a `transformers.Trainer` subclass: `evaluate` on a `QASet` answers the questions by
    generation and logs exact match and ROUGE-1 recall per direction (other eval datasets get the
    Trainer's usual loss evaluation). The decoding follows the collator's objective (its natural
    decoding and training rules) unless the arguments set `decoding`; `max_new_tokens` comes from
    the arguments (`MFTConfig`)."""

    @property
    def objective(self):
        return getattr(self.data_collator, "objective", None)

    @property
    def decoding(self) -> str:
        chosen = getattr(self.args, "decoding", None)
        if chosen:
            return chosen
        return self.objective.decoding if self.objective is not None else "causal"

    def evaluate_qa(self, qa: list[dict[str, str]], predictions: list | None = None) -> dict[str, dict[str, Any]]:
        model = self.accelerator.unwrap_model(self.model)
        rules = self.objective.decoding_options() if self.objective is not None else {}
        return evaluate_qa(model, self.processing_class, qa, self.decoding, mft_option(self.args, "max_new_tokens"),
                           self.args.per_device_eval_batch_size, predictions=predictions, **rules)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not isinstance(dataset, QASet):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        metrics = flatten_metrics(self.evaluate_qa(dataset), metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def run_decoding(output_dir: str | Path) -> tuple[Objective, str | None, int]:
    """(objective, decoding chosen in the recipe or None, max_new_tokens) of a finished run, from its
    resolved recipe; a run without one is refused: its model's decoding rules would be unknown."""
    path = Path(output_dir) / "resolved_recipe.yaml"
    if not path.is_file() and Path(output_dir).name.startswith("checkpoint-"):
        path = Path(output_dir).parent / "resolved_recipe.yaml"  # a checkpoint of a run: the run's recipe
    if not path.is_file():
        raise RecipeError(f"{output_dir} has no resolved_recipe.yaml, which says how its model must be decoded; "
                          f"give the training.output_dir of a run made by mft train")
    raw = read_yaml(path.read_text()) or {}
    section = dict(raw.get("objective") or {})
    if "name" not in section:
        raise RecipeError(f"{path} has no objective.name; it is not a resolved recipe of mft train")
    objective = build_objective(section.pop("name"), **section)
    training = raw.get("training") or {}
    return objective, training.get("decoding"), training.get("max_new_tokens") or MFTConfig.max_new_tokens


def evaluate_run(output_dir: str | Path, qa_file: str | Path, decoding: str | None = None,
                 max_new_tokens: int | None = None, batch_size: int = 32) -> dict[str, dict[str, Any]]:
    """`mft eval`: answer the questions of `qa_file` with a finished run's model. The decoding, the
    answer length and the objective's decoding rules default to the run's resolved recipe."""
    from .models import load_trained

    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise RecipeError(f"{output_dir}: no such run folder; give the training.output_dir of a finished run")
    if not Path(qa_file).is_file():
        raise RecipeError(f"--qa {qa_file}: file not found")
    qa = [validate_qa_row(location, row) for location, row in read_rows(qa_file, "--qa")]
    if not qa:
        raise RecipeError(f"--qa {qa_file} has no rows")
    if not (output_dir / "config.json").is_file() and not (output_dir / "adapter_config.json").is_file():
        latest = checkpoints(output_dir)
        if latest:
            raise RecipeError(f"{output_dir} is not a finished run (no model saved yet); evaluate its latest "
                              f"checkpoint: mft eval {latest[-1]} --qa {qa_file}")
        raise RecipeError(f"{output_dir} holds no model (config.json or adapter_config.json); give the "
                          f"training.output_dir of a finished run, or one of its checkpoint-N folders")
    if batch_size < 1:
        raise RecipeError(f"--batch-size {batch_size}; use at least 1")
    objective, run_decoding_method, run_max_new_tokens = run_decoding(output_dir)
    decoding = decoding or run_decoding_method or objective.decoding
    max_new_tokens = run_max_new_tokens if max_new_tokens is None else max_new_tokens
    model, tokenizer = load_trained(output_dir)
    return evaluate_qa(model, tokenizer, qa, decoding, max_new_tokens, batch_size, **objective.decoding_options())
