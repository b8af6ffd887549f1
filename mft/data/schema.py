"""mft's data schemas and their loaders.

Training rows (a corpus):  {"text": str}                       plain text, every token is content
                           {"prompt": str, "completion": str}  a prompt (context) and its answer
                                                               (optional "format", as for QA rows)
QA rows (evaluation):      {"question": str, "answer": str, "direction": "forward" | "backward"}

Optional fields. A training row may name its entities, `"entities": [str, ...]`, each a substring of
the row (of `text`, or of `prompt` or `completion`); the entity-reversal objective keeps each
entity's own token order while reversing the row (`mft.objectives.autoregressive`). A QA row may
give `"incorrect_answer"`, the answer a model that swaps subject and object would give (the
relationship task); evaluation then reports the incorrect-inference rate.

Files are JSONL (one object per line) or a JSON list of objects. Documents as users keep them are
read too: a `.txt` or `.md` file is one text row (`split="document"`), or one text row per
paragraph, paragraphs being separated by blank lines (`split="paragraph"`); `data.train_file` may
be a list of files or a folder of them. A bad row is reported with its file, line (or index) and
the fix, before any model is built.

QA rows may also carry `"fact"`, an id shared by the wordings (and formats) of one question:
evaluation then also reports, per direction, the fraction of facts answered right in every
wording; and `"format"`: "chat" (the question is a user turn of the chat template; the default)
or "completion" (a raw text prefix the model continues, no template).
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


TRAIN_KEYS = ("text", "prompt", "completion", "entities", "format")
QA_KEYS = ("question", "answer", "direction", "incorrect_answer", "fact", "format")
QA_FORMATS = ("chat", "completion")
DOCUMENT_SUFFIXES = (".txt", ".md")
ROW_SUFFIXES = (".jsonl", ".json")


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
        if row.get("format") is not None:
            check_format(location, row["format"])
            valid["format"] = row["format"]
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
    if "fact" in row:
        if not isinstance(row["fact"], (str, int)) or isinstance(row["fact"], bool) or not str(row["fact"]).strip():
            raise RecipeError(f"{location}: 'fact' must be a non-empty id (a string or number) shared by the wordings "
                              f"of one question; got {_preview(row['fact'])}")
        valid["fact"] = str(row["fact"])
    if "format" in row:
        check_format(location, row["format"])
        valid["format"] = row["format"]
    return valid


def check_format(location: str, format: Any) -> None:
    if format not in QA_FORMATS:
        raise RecipeError(f"{location}: 'format' is {format!r}; use 'chat' (a question in the chat template) "
                          f"or 'completion' (a text prefix the model continues)")


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


def train_files(train_file: str | list[str]) -> list[Path]:
    """The files `data.train_file` names: a file, a list of files, or a folder's row and document
    files (sorted by name, hidden files skipped)."""
    paths = [Path(path) for path in (train_file if isinstance(train_file, list) else [train_file])]
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(child for child in path.iterdir() if child.is_file() and not child.name.startswith(".")
                           and child.suffix.lower() in ROW_SUFFIXES + DOCUMENT_SUFFIXES)
            if not found:
                raise RecipeError(f"data.train_file folder {path} holds no {', '.join(ROW_SUFFIXES + DOCUMENT_SUFFIXES)} "
                                  f"files; put the documents there or name the files")
            files.extend(found)
        else:
            files.append(path)
    return files


def read_documents(path: Path, split: str = "document") -> list[tuple[str, Any]]:
    """[(location, {"text": ...})] from a .txt/.md file: the whole file as one document, or one per
    paragraph (`split="paragraph"`: blocks of lines separated by blank lines)."""
    text = read_text(path, "data.train_file")
    if split == "document":
        return [(f"{path}", {"text": text.strip()})] if text.strip() else []
    located, lines, first_line = [], [], 0
    for number, line in enumerate(text.splitlines() + [""], start=1):
        if line.strip():
            first_line = first_line or number
            lines.append(line)
        elif lines:
            located.append((f"{path} line {first_line}", {"text": "\n".join(lines).strip()}))
            lines, first_line = [], 0
    return located


def read_train_rows(train_file: str | list[str], split: str = "document") -> list[tuple[str, Any]]:
    """[(location, row)] from every file `data.train_file` names: rows from JSONL/JSON files,
    documents from .txt/.md files."""
    located = []
    for path in train_files(train_file):
        if path.suffix.lower() in DOCUMENT_SUFFIXES:
            located.extend(read_documents(path, split))
        else:
            located.extend(read_rows(path, "data.train_file"))
    return located


def load_data_files(train_file: str | list[str] | None, qa_file: str | None, train_dataset: str | None = None,
                    train_split: str = "train", split: str = "document", qa_format: str | None = None) -> TaskData:
    if train_dataset is not None:
        located, source = read_dataset_rows(train_dataset, train_split), f"data.train_dataset {train_dataset}"
    else:
        located, source = read_train_rows(train_file, split), f"data.train_file {train_file}"
    train = [validate_train_row(loc, row) for loc, row in located]
    if not train:
        raise RecipeError(f"{source} has no rows; the training set would be empty")
    qa = []
    if qa_file:
        qa = [validate_qa_row(loc, row) for loc, row in read_rows(qa_file, "data.qa_file")]
        if not qa:
            raise RecipeError(f"data.qa_file {qa_file} has no rows; remove data.qa_file or add QA rows")
        if qa_format is not None:
            qa = [{**row, "format": qa_format} for row in qa]
    return TaskData(train=train, qa=qa)


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _preview(row: Any) -> str:
    text = json.dumps(row) if not isinstance(row, str) else repr(row)
    return text if len(text) <= 80 else text[:77] + "..."
