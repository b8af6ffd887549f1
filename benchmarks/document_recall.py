"""What a masked model stored from the profiles demo's documents, asked in document form.

    python benchmarks/document_recall.py RUN [RUN ...] [--qa examples/profiles/qa.jsonl] [--trained]
                                         [--out benchmarks/results/document_recall.json]

RUN is a model trained on the profiles corpus with a masked objective (a run folder, `mft.load`
reads it). The corpus is rebuilt from `mft.data.profiles.ProfilesTask` with its defaults, the one
`examples/profiles/make_corpus.py` writes; the people whose questions `--qa` asks are "held out",
the others "trained" (scored only with `--trained`, which doubles the time: the held-out people
alone take 14 minutes on 2 cores where the quickstart trains in 171 s).

Each of a person's paragraphs is shown with one fact's answer hidden by mask tokens, and every
candidate answer of that kind (all 24 names backward; all 24 values of the attribute forward) is
scored by the summed log-probability of its own tokens at the masked slots, each slot read in one
pass (not left to right). The candidate ranked first is the model's recall (top-1). Conditions:

    backward, all values visible   the name hidden; the rest of the paragraph as written
    backward, one value visible    the name and the other two values hidden: the name must come
                                   from one value (the association a backward question needs)
    forward, name visible          one value and the other two values hidden: the value must come
                                   from the name

A QA exact match well below these top-1 figures says the knowledge is stored but the question
does not reach it; figures as low as the QA ones say the documents were not learnt. Candidates
have different token counts, so the slot count itself is a hint (as it is to a masked decoder
that must end the answer); with 24 candidates, chance is about 0.04.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 64


def cloze_rows(tokenizer, text: str, answer_span: tuple[int, int], hidden_spans: list[tuple[int, int]]):
    """(input ids with the answer's and the hidden spans' tokens masked, original ids, answer token
    positions, every masked position) of one paragraph: character spans become the tokens that
    overlap them."""
    from mft.data.tokenize import bos_ids

    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    bos = bos_ids(tokenizer)  # the rows training built: [bos] when the tokenizer uses one, the text, eos
    ids = bos + encoded["input_ids"] + [tokenizer.eos_token_id]
    offsets = [(0, 0)] * len(bos) + encoded["offset_mapping"] + [(len(text), len(text))]

    def covered(span):
        return {i for i, (start, end) in enumerate(offsets) if end > span[0] and start < span[1]}

    answer = sorted(covered(answer_span))
    masked = set(answer).union(*(covered(span) for span in hidden_spans))
    inputs = [tokenizer.mask_token_id if i in masked else token for i, token in enumerate(ids)]
    return inputs, ids, answer, masked


def score_rows(model, tokenizer, rules: dict, rows: list) -> list[float]:
    """Summed log-probability of each row's answer tokens at their masked slots."""
    import torch

    from mft.decoding import logits_at
    from mft.models.attention import attention_implementation, attention_mask_4d, to_model_mask

    shift = int(rules["shift"])
    scores = []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        length = max(len(inputs) for inputs, _, _, _ in chunk)
        input_ids = torch.full((len(chunk), length), tokenizer.pad_token_id, dtype=torch.long)
        key_valid = torch.zeros((len(chunk), length), dtype=torch.bool)
        hidden = torch.zeros((len(chunk), length), dtype=torch.bool)
        read = torch.zeros((len(chunk), length), dtype=torch.bool)
        for b, (inputs, _, answer, masked) in enumerate(chunk):
            input_ids[b, :len(inputs)] = torch.tensor(inputs)
            key_valid[b, :len(inputs)] = True
            hidden[b, sorted(masked)] = not rules["attend_to_masked"]
            read[b, [i - shift for i in answer]] = True
        allowed = attention_mask_4d(key_valid, torch.zeros(len(chunk), dtype=torch.bool), hidden,
                                    torch.full((len(chunk),), rules["keep_sink"]))
        mask = to_model_mask(allowed, attention_implementation(model), next(model.parameters()).dtype)
        with torch.no_grad():
            log_probs = logits_at(model, read, input_ids=input_ids, attention_mask=mask).log_softmax(-1)
        at = 0
        for _, ids, answer, _ in chunk:  # `read` is taken row by row, positions ascending
            scores.append(sum(log_probs[at + j, ids[i]].item() for j, i in enumerate(answer)))
            at += len(answer)
    return scores


def measure(run: Path, qa_file: str, with_trained: bool) -> list[dict]:
    import mft
    from mft.data.profiles import ATTRIBUTES, ProfilesTask

    trained = mft.load(run)
    model, tokenizer = trained.model.eval(), trained.tokenizer
    if tokenizer.mask_token_id is None:
        raise SystemExit(f"{run}: no mask token; document recall needs a model trained with a masked objective")
    task = ProfilesTask()
    people, documents = task.people(), task.documents()
    asked = {json.loads(line)["fact"].split("/")[0] for line in Path(qa_file).read_text().splitlines() if line.strip()}
    names = [person.name for person in people]

    cases = []  # (group, condition, attribute, right candidate index, rows)
    for person in people:
        group = "held out" if person.slug() in asked else "trained"
        if group == "trained" and not with_trained:
            continue
        for text in documents[person.name]:
            spans = {attribute: (text.index(value), text.index(value) + len(value))
                     for attribute, value in person.facts.items()}
            name_at = text.index(person.name)
            for condition, attributes in (("backward, all values visible", [None]),
                                          ("backward, one value visible", ATTRIBUTES)):
                for attribute in attributes:
                    rows = []
                    for candidate in names:
                        shifted = len(candidate) - len(person.name)
                        filled = text[:name_at] + candidate + text[name_at + len(person.name):]
                        hide = [(s + shifted, e + shifted) if s > name_at else (s, e)
                                for other, (s, e) in spans.items() if attribute is not None and other != attribute]
                        rows.append(cloze_rows(tokenizer, filled, (name_at, name_at + len(candidate)), hide))
                    cases.append((group, condition, attribute, names.index(person.name), rows))
            for attribute in ATTRIBUTES:
                start, end = spans[attribute]
                values = [other.facts[attribute] for other in people]
                rows = []
                for candidate in values:
                    shifted = len(candidate) - (end - start)
                    filled = text[:start] + candidate + text[end:]
                    hide = [(s + shifted, e + shifted) if s > start else (s, e)
                            for other, (s, e) in spans.items() if other != attribute]
                    rows.append(cloze_rows(tokenizer, filled, (start, start + len(candidate)), hide))
                cases.append((group, "forward, name visible", attribute, values.index(person.facts[attribute]), rows))

    scores = score_rows(model, tokenizer, trained.spec.rules(), [row for case in cases for row in case[4]])
    right: dict[tuple[str, str, str], list[bool]] = {}
    at = 0
    for group, condition, attribute, answer, rows in cases:
        ranked = scores[at:at + len(rows)]
        at += len(rows)
        right.setdefault((group, condition, attribute or "all"), []).append(max(range(len(ranked)), key=ranked.__getitem__) == answer)
    results = []
    for group in ("held out", "trained") if with_trained else ("held out",):
        for condition in ("backward, all values visible", "backward, one value visible", "forward, name visible"):
            cells = {key[2]: values for key, values in right.items() if key[:2] == (group, condition)}
            pooled = [hit for values in cells.values() for hit in values]
            row = {"run": str(run), "people": group, "condition": condition, "n": len(pooled),
                   "top1": sum(pooled) / len(pooled)}
            row.update({attribute: sum(values) / len(values) for attribute, values in cells.items() if attribute != "all"})
            results.append(row)
    return results


def main() -> None:
    from import_time import write_results  # benchmarks/ is on the path when a script runs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--qa", default=str(ROOT / "examples" / "profiles" / "qa.jsonl"))
    parser.add_argument("--trained", action="store_true", help="also score the people whose questions were trained")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "document_recall.json"))
    args = parser.parse_args()
    rows = [row for run in args.runs for row in measure(run, args.qa, args.trained)]
    print("| run | people | condition | top-1 | birthplace | founded | pet | n |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        by_attribute = " | ".join(f"{row[a]:.2f}" if a in row else "-" for a in ("birthplace", "founded", "pet"))
        print(f"| {Path(row['run']).name} | {row['people']} | {row['condition']} | {row['top1']:.3f} | {by_attribute} | {row['n']} |")
    write_results(args.out, 1, rows)


if __name__ == "__main__":
    main()
