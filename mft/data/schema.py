"""mft's data schemas and their loaders.

Training rows (a corpus):  {"text": str}                       plain text, every token is content
                           {"prompt": str, "completion": str}  a prompt (context) and its answer
QA rows (evaluation):      {"question": str, "answer": str, "direction": "forward" | "backward"}

Optional fields. A training row may name its entities, `"entities": [str, ...]`, each a substring of
the row (of `text`, or of `prompt` or `completion`); the entity-reversal objective keeps each
entity's own token order while reversing the row (`mft.objectives.autoregressive`). A QA row may
give `"incorrect_answer"`, the answer a model that swaps subject and object would give (the
relationship task); evaluation then reports the incorrect-inference rate.

Files are JSONL (one object per line) or a JSON list of objects. A bad row is reported with its
file, line (or index) and the fix, before any model is built.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RecipeError
from ..utils import hub_reachable

DIRECTIONS = ("forward", "backward")


@dataclass
class TaskData:
    train: list[dict[str, str]]
    qa: list[dict[str, str]] = field(default_factory=list)


def read_text(path: Path, what: str) -> str:
    """The file as UTF-8 text (a leading byte-order mark is dropped); a byte that is not UTF-8 is a
    `RecipeError` naming the file, the line and the byte offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise RecipeError(f"{what} {path} line {line}: byte {error.start} (0x{data[error.start]:02x}) is not UTF-8; "
                          f"save the file as UTF-8") from None


def read_rows(path: str | Path, what: str) -> list[tuple[str, Any]]:
    """[(location, row)] from a JSONL file or a JSON list; location is 'FILE line N' or 'FILE item N'."""
    path = Path(path)
    text = read_text(path, what)
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise RecipeError(f"{what} {path}: not valid JSON ({error.msg} at line {error.lineno}); fix the file") from None
        return [(f"{path} item {i}", row) for i, row in enumerate(rows)]
    located = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            located.append((f"{path} line {number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise RecipeError(f"{what} {path} line {number}: not valid JSON ({error.msg}); one JSON object per line") from None
    return located


TRAIN_KEYS = ("text", "prompt", "completion", "entities")
QA_KEYS = ("question", "answer", "direction", "incorrect_answer")


def check_row_keys(location: str, row: Any, known: tuple[str, ...]) -> None:
    """Refuse a key that looks like a misspelling of a known one (`entites`): the row would be read
    without it, silently. Other extra keys (an id, a source) are metadata and are not read."""
    if not isinstance(row, dict):
        return
    for key in row:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.75)
            if close:
                raise RecipeError(f"{location}: unknown key {key!r}; did you mean {close[0]!r}? (rows are read with "
                                  f"the keys {', '.join(known)})")


def validate_train_row(location: str, row: Any) -> dict[str, Any]:
    check_row_keys(location, row, TRAIN_KEYS)
    # (a `datasets` table gives every row every column, None where a row has no value)
    if isinstance(row, dict) and row.get("text") is not None and (row.get("prompt") is not None
                                                                 or row.get("completion") is not None):
        raise RecipeError(f"{location}: a training row has either 'text' or 'prompt' and 'completion', not both; "
                          f"split it into two rows")
    if isinstance(row, dict) and isinstance(row.get("text"), str) and row["text"].strip():
        valid: dict[str, Any] = {"text": row["text"]}
    elif isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        if not row["completion"].strip():
            raise RecipeError(f"{location}: 'completion' is empty; give every row a non-empty completion")
        valid = {"prompt": row["prompt"], "completion": row["completion"]}
    else:
        raise RecipeError(f"{location}: a training row needs a non-empty string 'text', or 'prompt' and 'completion' "
                          f"strings; got {_preview(row)}")
    if "entities" in row:
        entities = row["entities"]
        if not isinstance(entities, list) or not all(isinstance(e, str) and e.strip() for e in entities):
            raise RecipeError(f"{location}: 'entities' must be a list of non-empty strings; got {_preview(entities)}")
        texts = [value for key, value in valid.items() if key in ("text", "prompt", "completion")]
        for entity in entities:
            if not any(entity in text for text in texts):
                raise RecipeError(f"{location}: entity {entity!r} does not occur in the row; list only substrings of "
                                  f"its text")
        valid["entities"] = list(entities)
    return valid


def validate_qa_row(location: str, row: Any) -> dict[str, str]:
    check_row_keys(location, row, QA_KEYS)
    if not isinstance(row, dict):
        raise RecipeError(f"{location}: a QA row is an object with 'question', 'answer', 'direction'; got {_preview(row)}")
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise RecipeError(f"{location}: '{key}' is missing or empty; give every QA row a non-empty {key}")
    if row.get("direction") not in DIRECTIONS:
        raise RecipeError(f"{location}: 'direction' is {row.get('direction')!r}; use 'forward' or 'backward'")
    valid = {"question": row["question"], "answer": row["answer"], "direction": row["direction"]}
    if "incorrect_answer" in row:
        if not isinstance(row["incorrect_answer"], str) or not row["incorrect_answer"].strip():
            raise RecipeError(f"{location}: 'incorrect_answer' must be a non-empty string; remove it or fill it in")
        valid["incorrect_answer"] = row["incorrect_answer"]
    return valid


def read_dataset_rows(name_or_path: str, split: str) -> list[tuple[str, Any]]:
    """[(location, row)] from a `datasets` dataset: a folder saved with `save_to_disk`, or a name
    `load_dataset` knows (from the local cache or the Hub)."""
    import datasets

    try:
        if Path(name_or_path).is_dir():
            dataset = datasets.load_from_disk(name_or_path)
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset[split]
            elif split != "train":
                raise KeyError(split)  # a single saved Dataset has no other split
        else:
            if not hub_reachable():  # read the local cache only, at once, instead of retrying the Hub
                datasets.config.HF_HUB_OFFLINE = True
            dataset = datasets.load_dataset(name_or_path, split=split)
    except KeyError:
        raise RecipeError(f"data.train_split = {split!r} is not a split of {name_or_path}") from None
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as error:
        raise RecipeError(f"data.train_dataset = {name_or_path}: cannot be loaded ({str(error).splitlines()[0]}); "
                          f"give a saved dataset folder or a dataset in the local cache") from None
    return [(f"{name_or_path} [{split}] row {i}", row) for i, row in enumerate(dataset)]


def load_data_files(train_file: str | None, qa_file: str | None, train_dataset: str | None = None,
                    train_split: str = "train") -> TaskData:
    if train_dataset is not None:
        located, source = read_dataset_rows(train_dataset, train_split), f"data.train_dataset {train_dataset}"
    else:
        located, source = read_rows(train_file, "data.train_file"), f"data.train_file {train_file}"
    train = [validate_train_row(loc, row) for loc, row in located]
    if not train:
        raise RecipeError(f"{source} has no rows; the training set would be empty")
    qa = []
    if qa_file:
        qa = [validate_qa_row(loc, row) for loc, row in read_rows(qa_file, "data.qa_file")]
        if not qa:
            raise RecipeError(f"data.qa_file {qa_file} has no rows; remove data.qa_file or add QA rows")
    return TaskData(train=train, qa=qa)


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _preview(row: Any) -> str:
    text = json.dumps(row) if not isinstance(row, str) else repr(row)
    return text if len(text) <= 80 else text[:77] + "..."
