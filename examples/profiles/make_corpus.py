"""Write the profiles demo corpus as a user keeps documents: one Markdown file per person, plus the
trained questions and the held-out questions as JSONL.

    python examples/profiles/make_corpus.py [--out examples/profiles] [--num-people 24] [--seed 0] [--openers 0] [--opener-facts]

    documents/<person>.md     four paragraphs per invented person (three facts, varied order and
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
from mft.data.profiles import ProfilesTask
from mft.errors import RecipeError


def write_corpus(out: Path, num_people: int = 24, seed: int = 0, openers: float = 0.0,
                 opener_facts: bool = False) -> None:
    task = ProfilesTask(num_people=num_people, seed=seed, openers=openers, opener_facts=opener_facts)
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
                            openers=openers, opener_facts=opener_facts).build()
        write_jsonl(out / name, [row for row in data.train if row.get("text") not in written])
    write_jsonl(out / "qa.jsonl", data.qa)  # the same for either wording count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent))
    parser.add_argument("--num-people", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--openers", type=float, default=0.0,
                        help="the fraction of documents that open with a sentence ending with the person's name "
                             "(0: the committed corpus; BENCHMARKS.md measured 0.5)")
    parser.add_argument("--opener-facts", action="store_true",
                        help="openers go on with the first fact after the name (\"..., who was born in X.\")")
    args = parser.parse_args()
    try:
        write_corpus(Path(args.out), args.num_people, args.seed, args.openers, args.opener_facts)
    except RecipeError as error:  # a bad option: one line, before anything is written
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
