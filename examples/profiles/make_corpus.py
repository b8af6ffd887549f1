"""Write the profiles demo corpus as a user keeps documents: one Markdown file per person, plus the
trained questions and the held-out questions as JSONL.

    python examples/profiles/make_corpus.py [--out examples/profiles] [--num-people 24] [--seed 0] [--openers 0.5]
                                            [--opener-facts] [--documents-per-person 10]

    documents/<person>.md     ten paragraphs per invented person (three facts, varied order and
                              wording), separated by blank lines: recipes read them with
                              `data.split: paragraph`
    trained_questions.jsonl   the questions of half the people, in the training wordings: chat rows
                              {"prompt", "completion"} and completion-format rows {"text"}
    trained_questions_one_wording.jsonl
                              the same with only the first training wording per fact, direction
                              and format (half the rows: more of each epoch goes to the documents)
    qa.jsonl                  the other people's questions in wordings training never uses, chat
                              and completion format, with "fact" ids (see mft.data.profiles)

The recipes `recipes/profiles_*.yaml` train on `documents/` and one of the question files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mft.data import write_jsonl
from mft.data.profiles import DEMO_DOCUMENTS_PER_PERSON, DEMO_OPENERS, MOST_DOCUMENTS, ProfilesTask
from mft.errors import RecipeError


def write_corpus(out: Path, num_people: int = 24, seed: int = 0, openers: float = DEMO_OPENERS,
                 opener_facts: bool = False, documents_per_person: int = DEMO_DOCUMENTS_PER_PERSON) -> None:
    task = ProfilesTask(num_people=num_people, seed=seed, openers=openers, opener_facts=opener_facts,
                        documents_per_person=documents_per_person)
    documents = out / "documents"
    documents.mkdir(parents=True, exist_ok=True)
    for old in documents.glob("*.md"):
        old.unlink()
    texts = task.documents()
    for person in task.people():
        (documents / f"{person.slug()}.md").write_text("\n\n".join(texts[person.name]) + "\n", encoding="utf-8")
    written = {text for paragraphs in texts.values() for text in paragraphs}
    for name, trained_wordings in (("trained_questions.jsonl", 2), ("trained_questions_one_wording.jsonl", 1)):
        data = ProfilesTask(num_people=num_people, seed=seed, trained_wordings=trained_wordings,
                            openers=openers, opener_facts=opener_facts,
                            documents_per_person=documents_per_person).build()
        write_jsonl(out / name, [row for row in data.train if row.get("text") not in written])
    write_jsonl(out / "qa.jsonl", data.qa)  # the same for either wording count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent))
    parser.add_argument("--num-people", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--openers", type=float, default=DEMO_OPENERS,
                        help="the fraction of documents that open with a sentence ending with the person's name "
                             "(\"This note is about Ilsa Dorn.\"), all facts then told by pronoun")
    parser.add_argument("--opener-facts", action="store_true",
                        help="openers go on with the first fact after the name (\"..., who was born in X.\")")
    parser.add_argument("--documents-per-person", type=int, default=DEMO_DOCUMENTS_PER_PERSON,
                        help=f"paragraphs per person, each with its own sentence order and wording (at most {MOST_DOCUMENTS})")
    args = parser.parse_args()
    try:
        write_corpus(Path(args.out), args.num_people, args.seed, args.openers, args.opener_facts,
                     args.documents_per_person)
    except RecipeError as error:  # a bad option: one line, before anything is written
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
