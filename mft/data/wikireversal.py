"""WikiReversal (the factorization-curse paper, Sec. 3.2 and Algorithm 1), built from GenWiki.

GenWiki records are JSON objects

    {"text": "<ENT_0> is the capital and most populous city of <ENT_1> ...",
     "entities": ["Paris", "France"], "graph": [["Paris", "capital of", "France"]],
     "id_long": ..., "id_short": ...}

(`text` with `<ENT_i>` placeholders for `entities[i]`). For every record, with P its text filled in:

    1. keep the *forward* triples (e_i, r, e_j): e_i appears before e_j in P;
    2. ask a forward question F_r(e_i) (answer e_j) and a backward question B_r(e_j) (answer e_i)
       from the relation's templates;
    3. keep only triples whose (e_i, r) and (r, e_j) are each unique over the whole set (every
       question has one answer), then only relations with at least `min_count` such triples;
    4. split the questions of each direction `1 - test_fraction` / `test_fraction` into trained and
       held-out. `split: same` holds out the same triples in both directions; `split: different`
       draws each direction's split with its own seed (the paper's Table 8, right).

Output (mft's formats): training rows = every passage that keeps a triple, as
`{"text", "entities"}`, plus the trained questions as `{"prompt", "completion"}`; QA rows = the
held-out questions with their direction. Templates: a JSON file
`{"relation": {"forward": "What is the capital of {head}?", "backward": "{tail} is the capital of what?"}}`;
a relation without one gets generic questions from its name (`default_templates`).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RecipeError
from .schema import TaskData

PLACEHOLDER = re.compile(r"<ENT_(\d+)>")


def fill_text(record: dict[str, Any]) -> str:
    entities = record["entities"]
    return PLACEHOLDER.sub(lambda m: entities[int(m.group(1))] if int(m.group(1)) < len(entities) else m.group(0),
                           record["text"])


def relation_words(relation: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", relation).replace("_", " ").lower().strip()


PREPOSITIONS = {"of", "in", "for", "by", "to", "at", "on", "from", "with"}


def default_templates(relation: str) -> dict[str, str]:
    """Questions for a relation without templates of its own: a noun relation (birthPlace) asks
    "What is the birth place of X?" / "Whose birth place is Y?"; one ending in a preposition
    (capitalOf) asks "X is the capital of what?" / "What is the capital of Y?"."""
    words = relation_words(relation)
    if words.split()[-1:] and words.split()[-1] in PREPOSITIONS:
        return {"forward": f"{{head}} is the {words} what?", "backward": f"What is the {words} {{tail}}?"}
    return {"forward": f"What is the {words} of {{head}}?", "backward": f"Whose {words} is {{tail}}?"}


def read_genwiki(folder: str | Path) -> list[dict[str, Any]]:
    """Every record of every .json / .jsonl file under `folder` (GenWiki ships JSON lists)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RecipeError(f"task.genwiki (--genwiki) = {folder}: no such folder; download GenWiki and give the folder of its JSON files")
    records = []
    for path in sorted(folder.rglob("*.json*")):
        text = path.read_text(encoding="utf-8")
        try:
            loaded = json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]
        except json.JSONDecodeError as error:
            raise RecipeError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
        for index, record in enumerate(loaded):
            if not (isinstance(record, dict) and isinstance(record.get("text"), str)
                    and isinstance(record.get("entities"), list) and isinstance(record.get("graph"), list)):
                raise RecipeError(f"{path} record {index}: a GenWiki record needs 'text', 'entities' and 'graph'")
            records.append(record)
    if not records:
        raise RecipeError(f"task.genwiki (--genwiki) = {folder}: no GenWiki records (*.json) found")
    return records


@dataclass
class WikiReversalTask:
    name = "wikireversal"
    genwiki: str = ""
    min_count: int = 500
    test_fraction: float = 0.2
    split: str = "same"
    templates: str | None = None
    seed: int = 0

    def __post_init__(self):
        if not self.genwiki:
            raise RecipeError("task.genwiki is empty; give the folder of the GenWiki JSON files")
        if self.split not in ("same", "different"):
            raise RecipeError(f"task.split = {self.split!r}; use 'same' or 'different'")
        if not 0.0 < self.test_fraction < 1.0:
            raise RecipeError(f"task.test_fraction = {self.test_fraction}; use a fraction in (0, 1)")
        if self.min_count < 1:
            raise RecipeError(f"task.min_count = {self.min_count}; use at least 1")

    def build(self) -> TaskData:
        data, _ = self.build_with_stats()
        return data

    def build_with_stats(self) -> tuple[TaskData, dict[str, Any]]:
        templates = json.loads(Path(self.templates).read_text()) if self.templates else {}
        records = read_genwiki(self.genwiki)
        triples = []  # (passage index, head, relation, tail)
        passages = []
        for record in records:
            text = fill_text(record)
            passage = len(passages)
            passages.append((text, [e for e in record["entities"] if e in text]))
            for triple in record["graph"]:
                if len(triple) != 3:
                    continue
                head, relation, tail = triple
                i, j = text.find(head), text.find(tail)
                if i != -1 and j != -1 and i < j:  # a forward triple
                    triples.append((passage, head, relation, tail))
        # Unambiguous questions: (head, relation) and (relation, tail) each occur once in the whole set.
        heads = Counter((h, r) for _, h, r, _ in {(None, h, r, t) for _, h, r, t in triples})
        tails = Counter((r, t) for _, _, r, t in {(None, h, r, t) for _, h, r, t in triples})
        unique = {}
        for passage, head, relation, tail in triples:
            if heads[(head, relation)] == 1 and tails[(relation, tail)] == 1:
                unique.setdefault((head, relation, tail), passage)
        per_relation = Counter(relation for _, relation, _ in unique)
        kept = sorted(key for key in unique if per_relation[key[1]] >= self.min_count)
        if not kept:
            raise RecipeError(f"no relation has {self.min_count} unambiguous forward triples; lower min_count")

        def question(direction: str, head: str, relation: str, tail: str) -> str:
            template = templates.get(relation, default_templates(relation))[direction]
            return template.format(head=head, tail=tail)

        train: list[dict[str, Any]] = []
        qa: list[dict[str, str]] = []
        used_passages = sorted({unique[key] for key in kept})
        train += [{"text": passages[p][0], "entities": passages[p][1]} for p in used_passages]
        num_test = round(self.test_fraction * len(kept))
        for offset, direction in enumerate(("forward", "backward")):
            order = list(kept)
            random.Random(self.seed + (offset if self.split == "different" else 0)).shuffle(order)
            held_out = set(order[:num_test])
            for head, relation, tail in kept:
                q = question(direction, head, relation, tail)
                answer = tail if direction == "forward" else head
                if (head, relation, tail) in held_out:
                    qa.append({"question": q, "answer": answer, "direction": direction})
                else:
                    train.append({"prompt": q, "completion": answer, "entities": [e for e in (head, tail) if e in q or e == answer]})
        stats = {"records": len(records), "forward_triples": len(triples), "unambiguous": len(unique),
                 "kept_triples": len(kept), "relations": dict(sorted(Counter(r for _, r, _ in kept).items())),
                 "passages": len(used_passages), "train_rows": len(train), "qa_rows": len(qa)}
        return TaskData(train=train, qa=qa), stats
