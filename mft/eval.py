"""Forward/backward question answering: metrics, and the run's report (table + plot).

A QA item is {"question", "answer", "direction"}, optionally "fact" (an id shared by the wordings
of one question) and "format". The model answers greedily (see `mft.decoding`):

- format "chat" (the default): the question is a user turn of the chat template when the tokenizer
  has one; the answer is right when it equals the reference after lower-casing and collapsing
  whitespace (exact match).
- format "completion": the question is a raw text prefix ("Ilsa Dorn was born in the town of"),
  continued without any template, as in Berglund et al.'s probes. A continuation does not stop
  where the reference does, so it is right when it *starts with* the reference (same
  normalisation, ending at a word boundary).

Metrics per direction: {"forward": {"exact_match": 0.97, "rouge1_recall": 0.98, "n": 40}, ...}; ROUGE-1
recall is the fraction of the reference's content words (no stopwords, no punctuation) found in
the answer. With both formats present also `exact_match_chat` / `exact_match_completion`. With
`fact` ids, `facts_all_wordings`: the fraction of facts answered right in every wording (and
format), next to `exact_match`, the mean over wordings. `borrowed`: the fraction of wrong answers
that are the right answer of *another* question (another QA row, or a completion trained on, see
`QASet.known_answers`): a model that recalls taught answers instead of reading its documents.
A run's `eval_results.json` adds "baseline" (the same metrics for the untouched model, step 0) and
"retention" (the drift, see `mft.retention`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from .training_args import MFTConfig, mft_option
from .data.schema import DIRECTIONS, read_rows, validate_qa_row
from .data.tokenize import decode_answer, is_chat_row
from .decoding import DecodingSpec, encode_question, generate
from .errors import RecipeError
from .run_folder import checkpoints


# The right answers of a run's trained questions, for `borrowed` in `mft eval` as in training.
TRAINED_ANSWERS_FILE = "trained_answers.json"


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


def answers_match(prediction: str, reference: str, format: str = "chat") -> bool:
    """Whether `prediction` answers with `reference`: equal after normalisation (chat), or, for a
    completion-format probe, starting with it at a word boundary."""
    prediction, reference = normalize(prediction), normalize(reference)
    if format != "completion":
        return prediction == reference
    return prediction.startswith(reference) and not prediction[len(reference):len(reference) + 1].isalnum()


def evaluate_qa(model, tokenizer, qa: list[dict[str, str]], decoding: str,
                max_new_tokens: int = MFTConfig.max_new_tokens, batch_size: int = 64, shift: bool = False,
                keep_sink: bool = False, attend_to_masked: bool = False, prompt_sees_answer: bool = True,
                predictions: list[dict[str, Any]] | None = None,
                known_answers: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """The metrics of the module docstring per direction (and the incorrect-inference rate where QA
    rows give an `incorrect_answer`); each answer given is appended to `predictions`
    (the row, prediction, exact_match) when a list is passed. `shift`, `keep_sink`,
    `attend_to_masked`, `prompt_sees_answer`: the rules the model was trained with (see `mft.decoding.generate`).
    `known_answers`: right answers of questions outside `qa` (trained ones), for `borrowed`."""
    was_training = model.training
    model.eval()
    try:
        prompts = [encode_question(tokenizer, item["question"], is_chat_row(item), decoding, shift, keep_sink)
                   for item in qa]
        answers = generate(model, tokenizer, prompts, decoding, max_new_tokens, batch_size, shift=shift,
                           keep_sink=keep_sink, attend_to_masked=attend_to_masked,
                           prompt_sees_answer=prompt_sees_answer)
    finally:
        model.train(was_training)
    texts = [decode_answer(tokenizer, answer, chat=is_chat_row(item))
             for item, answer in zip(qa, answers)]
    right = [answers_match(text, item["answer"], item.get("format", "chat")) for item, text in zip(qa, texts)]
    if predictions is not None:
        predictions.extend({**item, "prediction": text, "exact_match": ok} for item, text, ok in zip(qa, texts, right))
    results: dict[str, dict[str, Any]] = {}
    for direction in DIRECTIONS:
        chosen = [i for i, item in enumerate(qa) if item["direction"] == direction]
        if not chosen:
            continue
        metrics = results[direction] = {
            "exact_match": sum(right[i] for i in chosen) / len(chosen),
            "rouge1_recall": sum(rouge1_recall(texts[i], qa[i]["answer"]) for i in chosen) / len(chosen),
            "n": len(chosen),
        }
        formats = sorted({qa[i].get("format", "chat") for i in chosen})
        if len(formats) > 1:
            for format in formats:
                in_format = [i for i in chosen if qa[i].get("format", "chat") == format]
                metrics[f"exact_match_{format}"] = sum(right[i] for i in in_format) / len(in_format)
        facts: dict[str, list[bool]] = {}
        for i in chosen:
            if "fact" in qa[i]:
                facts.setdefault(qa[i]["fact"], []).append(right[i])
        if facts:
            metrics["facts_all_wordings"] = sum(all(wordings) for wordings in facts.values()) / len(facts)
            metrics["n_facts"] = len(facts)
        wrong = [i for i in chosen if not right[i]]
        if wrong:  # a wrong answer that is another question's right answer
            borrowed = sum(any(answers_match(texts[i], other, qa[i].get("format", "chat"))
                               for other in _other_answers(qa, i, known_answers)) for i in wrong)
            metrics["borrowed"] = borrowed / len(wrong)
        swaps = [(texts[i], qa[i]["incorrect_answer"]) for i in chosen if "incorrect_answer" in qa[i]]
        if swaps:  # answered with the other neighbour: the relation was treated as symmetric
            metrics["incorrect_inference"] = sum(normalize(p) == normalize(w) for p, w in swaps) / len(swaps)
    return results


def _other_answers(qa: list[dict[str, str]], index: int, known_answers: tuple[str, ...]) -> set[str]:
    """Right answers of other questions than qa[index] (other facts, when rows name their fact)."""
    item = qa[index]
    mine = normalize(item["answer"])
    others = {normalize(row["answer"]) for row in qa
              if row.get("fact", row["question"]) != item.get("fact", item["question"])}
    return (others | {normalize(answer) for answer in known_answers}) - {mine, ""}


def flatten_metrics(results: dict[str, dict[str, Any]], prefix: str = "eval") -> dict[str, float]:
    """{"forward": {"exact_match": x}} -> {"eval_forward_exact_match": x} for the Trainer's log
    (counts left out; "retention" -> eval_retention_drift, ...; a "baseline" is not logged)."""
    return {f"{prefix}_{group}_{name}": value for group, metrics in results.items() if group != "baseline"
            for name, value in metrics.items() if name not in ("n", "n_facts")}


def direction_results(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-direction part of `results` (without "baseline" and "retention")."""
    return {direction: results[direction] for direction in DIRECTIONS if direction in results}


def baseline_results(log_history: list[dict[str, Any]], prefix: str = "eval") -> dict[str, dict[str, float]]:
    """The metrics logged at step 0 (the untouched model), back in `results` form."""
    for entry in log_history:
        if entry.get("step") == 0 and any(key.startswith(f"{prefix}_") for key in entry):
            baseline: dict[str, dict[str, float]] = {}
            for key, value in entry.items():
                for group in (*DIRECTIONS, "retention"):
                    if key.startswith(f"{prefix}_{group}_"):
                        baseline.setdefault(group, {})[key[len(f"{prefix}_{group}_"):]] = value
            return baseline
    return {}


def accuracy_history(log_history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """[(step, exact match)] per direction, and [(step, drift)] under "drift" when retention was
    measured, from the Trainer's `state.log_history`."""
    history: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for direction in DIRECTIONS:
            key = f"eval_{direction}_exact_match"
            if key in entry:
                history.setdefault(direction, []).append((entry["step"], entry[key]))
        if "eval_retention_drift" in entry:
            history.setdefault("drift", []).append((entry["step"], entry["eval_retention_drift"]))
    return history


# report.md's columns beyond exact match: (metric, heading), shown when some direction has it
EXTRA_COLUMNS = (("exact_match_chat", "chat"), ("exact_match_completion", "completion"),
                 ("facts_all_wordings", "facts right in every wording"), ("borrowed", "wrong answers borrowed"))


def write_report(output_dir: str | Path, results: dict[str, Any], log_history: list[dict[str, Any]],
                 title: str, details: dict[str, Any], predictions: list[dict[str, Any]] | None = None) -> None:
    """eval_results.json, report.md (tables), accuracy.png (accuracy, and drift, over training
    steps) and predictions.jsonl (every question with the answer the model gave), when
    `predictions` is given. `results`: per direction, plus "baseline" and "retention" when known."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    if predictions is not None:
        with open(output_dir / "predictions.jsonl", "w") as file:
            file.writelines(json.dumps(row) + "\n" for row in predictions)
    history = accuracy_history(log_history)
    has_plot = plot_history(history, output_dir / "accuracy.png", title)

    directions, baseline = direction_results(results), direction_results(results.get("baseline", {}))
    extra = [(key, heading) for key, heading in EXTRA_COLUMNS if any(key in m for m in directions.values())]
    headings = ["direction", *(["step 0"] if baseline else []), "exact match",
                *[heading for _, heading in extra], "ROUGE-1 recall", "n"]
    lines = [f"# {title}", "", "| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    for direction, metrics in directions.items():
        cells = [direction, *([_cell(baseline.get(direction, {}).get("exact_match"))] if baseline else []),
                 _cell(metrics["exact_match"]), *[_cell(metrics.get(key)) for key, _ in extra],
                 _cell(metrics.get("rouge1_recall")), str(metrics["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    if any("incorrect_inference" in metrics for metrics in directions.values()):
        lines += ["", "| direction | incorrect inference |", "|---|---|"]
        lines += [f"| {d} | {m['incorrect_inference']:.3f} |" for d, m in directions.items() if "incorrect_inference" in m]
    if "retention" in results:
        retention = results["retention"]
        lines += ["", "## Forgetting (mft.retention)", "",
                  "Per-token NLL (nats) of the base model's own continuations of neutral prompts; drift = now - base.",
                  "", "| base model NLL | fine-tuned NLL | drift |", "|---|---|---|",
                  f"| {retention['base_nll']:.3f} | {retention['nll']:.3f} | {retention['drift']:+.3f} |"]
    lines += ["", "| setting | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in details.items()]
    if history:
        lines += ["", "## During training", "", "| step | " + " | ".join(history) + " |",
                  "|---|" + "---|" * len(history)]
        steps = sorted({step for points in history.values() for step, _ in points})
        by_step = {name: dict(points) for name, points in history.items()}
        for step in steps:
            cells = [f"{by_step[name][step]:.3f}" if step in by_step[name] else "" for name in history]
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
    if has_plot:
        lines += ["", "![exact match over training](accuracy.png)"]
    (output_dir / "report.md").write_text("\n".join(lines) + "\n")


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def plot_history(history: dict[str, list[tuple[int, float]]], path: Path, title: str) -> bool:
    accuracy = {name: points for name, points in history.items() if name != "drift"}
    if not accuracy:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drift = history.get("drift")
    figure, axes = plt.subplots(1, 2 if drift else 1, figsize=(10 if drift else 6, 4), squeeze=False)
    axis = axes[0][0]
    for direction, points in accuracy.items():
        steps, values = zip(*points)
        axis.plot(steps, values, marker="o", label=direction)
    axis.set_xlabel("training step")
    axis.set_ylabel("exact match (held-out queries)")
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    if drift:
        steps, values = zip(*drift)
        axes[0][1].plot(steps, values, marker="o", color="tab:red")
        axes[0][1].axhline(0.0, color="grey", linewidth=0.8)
        axes[0][1].set_xlabel("training step")
        axes[0][1].set_ylabel("drift (nats/token vs the base model)")
        axes[0][1].set_title("forgetting")
        axes[0][1].grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


class QASet(list):
    """Evaluation questions: a list of {"question", "answer", "direction"} answered by generation.
    `known_answers`: the right answers of trained questions (for `borrowed`); `retention`: a
    `mft.retention.RetentionSet` whose drift is measured at every evaluation."""

    def __init__(self, rows=(), known_answers: tuple[str, ...] = (), retention=None):
        super().__init__(rows)
        self.known_answers = tuple(known_answers)
        self.retention = retention


class QAEvaluationMixin:
    """For a `transformers.Trainer` subclass: `evaluate` on a `QASet` answers the questions by
    generation and logs exact match and ROUGE-1 recall per direction (other eval datasets get the
    Trainer's usual loss evaluation). The decoding follows the collator's objective (its natural
    decoding and training rules) unless the arguments set `decoding`; `max_new_tokens` comes from
    the arguments (`MFTConfig`)."""

    _decoding_spec: DecodingSpec | None = None

    @property
    def objective(self):
        return getattr(self.data_collator, "objective", None)

    @property
    def decoding_spec(self) -> DecodingSpec:
        """How the model answers: the collator's objective's rules and natural decoding unless the
        arguments set `decoding`. `mft.train` sets it (adding the recipe's system prompt); it is
        saved with every model the trainer writes (`_save`: the final model and each checkpoint)."""
        if self._decoding_spec is None:
            max_new_tokens = mft_option(self.args, "max_new_tokens")
            decoding = getattr(self.args, "decoding", None)
            if self.objective is None:
                return DecodingSpec(decoding=decoding or "causal", max_new_tokens=max_new_tokens)
            return DecodingSpec.of(self.objective, self.processing_class, decoding, max_new_tokens)
        return self._decoding_spec

    @decoding_spec.setter
    def decoding_spec(self, spec: DecodingSpec) -> None:
        self._decoding_spec = spec

    @property
    def decoding(self) -> str:
        return self.decoding_spec.decoding

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            self.decoding_spec.save(output_dir if output_dir is not None else self.args.output_dir)

    def evaluate_qa(self, qa: list[dict[str, str]], predictions: list | None = None) -> dict[str, dict[str, Any]]:
        model = self.accelerator.unwrap_model(self.model)
        spec = self.decoding_spec
        results = evaluate_qa(model, self.processing_class, qa, spec.decoding, spec.max_new_tokens,
                              self.args.per_device_eval_batch_size, predictions=predictions,
                              known_answers=getattr(qa, "known_answers", ()), **spec.rules())
        retention = getattr(qa, "retention", None)
        if retention is not None:
            from .retention import retention_metrics

            results["retention"] = retention_metrics(model, self.processing_class, retention,
                                                     self.args.per_device_eval_batch_size)
        return results

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not isinstance(dataset, QASet):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        metrics = flatten_metrics(self.evaluate_qa(dataset), metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def read_qa_file(qa_file: str | Path, qa_format: str | None = None) -> list[dict[str, str]]:
    """The checked rows of `mft eval --qa FILE` (`qa_format`: the format of every row)."""
    if not Path(qa_file).is_file():
        raise RecipeError(f"--qa {qa_file}: file not found")
    qa = [validate_qa_row(location, row) for location, row in read_rows(qa_file, "--qa")]
    if not qa:
        raise RecipeError(f"--qa {qa_file} has no rows")
    return [{**row, "format": qa_format} for row in qa] if qa_format else qa


def evaluate_base_model(name_or_path: str, qa_file: str | Path, max_new_tokens: int | None = None,
                        batch_size: int = 32, qa_format: str | None = None,
                        system_prompt: str | None = None) -> dict[str, dict[str, Any]]:
    """`mft eval --model NAME`: answer the questions with a pretrained model as it is (a built-in
    name, a local folder or a cached Hub id), decoding causally: the baseline before fine-tuning."""
    from .config import ModelConfig
    from .models import load_tokenizer
    from .models.loading import ensure_pad_token, load_pretrained

    qa = read_qa_file(qa_file, qa_format)
    if batch_size < 1:
        raise RecipeError(f"--batch-size {batch_size}; use at least 1")
    tokenizer = load_tokenizer(ModelConfig(name_or_path=name_or_path, system_prompt=system_prompt))
    ensure_pad_token(tokenizer)
    model, _ = load_pretrained(name_or_path, dtype="float32")
    return evaluate_qa(model, tokenizer, qa, "causal", max_new_tokens or MFTConfig.max_new_tokens, batch_size)


def evaluate_run(output_dir: str | Path, qa_file: str | Path, decoding: str | None = None,
                 max_new_tokens: int | None = None, batch_size: int = 32,
                 qa_format: str | None = None) -> dict[str, dict[str, Any]]:
    """`mft eval`: answer the questions of `qa_file` with a finished run's model. The decoding, the
    answer length and the decoding rules default to the model's decoding spec (`mft.load`)."""
    from .inference import load

    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise RecipeError(f"{output_dir}: no such run folder; give the training.output_dir of a finished run")
    qa = read_qa_file(qa_file, qa_format)
    if not (output_dir / "config.json").is_file() and not (output_dir / "adapter_config.json").is_file():
        latest = checkpoints(output_dir)
        if latest:
            raise RecipeError(f"{output_dir} is not a finished run (no model saved yet); evaluate its latest "
                              f"checkpoint: mft eval {latest[-1]} --qa {qa_file}")
        raise RecipeError(f"{output_dir} holds no model (config.json or adapter_config.json); give the "
                          f"training.output_dir of a finished run, or one of its checkpoint-N folders")
    if batch_size < 1:
        raise RecipeError(f"--batch-size {batch_size}; use at least 1")
    trained = load(output_dir)
    spec = trained.spec
    run_folder = output_dir.parent if output_dir.name.startswith("checkpoint-") else output_dir
    answers_file = run_folder / TRAINED_ANSWERS_FILE
    known_answers = tuple(json.loads(answers_file.read_text())) if answers_file.is_file() else ()
    return evaluate_qa(trained.model, trained.tokenizer, qa, decoding or spec.decoding,
                       spec.max_new_tokens if max_new_tokens is None else max_new_tokens, batch_size,
                       known_answers=known_answers, **spec.rules())
