"""The invented-profiles task: varied documents, disjoint train/eval wordings, chat and completion."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from mft.config import parse_recipe
from mft.data import TASKS
from mft.data.profiles import ATTRIBUTES, MOST_DOCUMENTS, OPENERS, QUESTIONS, ProfilesTask, most_people
from mft.errors import RecipeError


@pytest.fixture(scope="module")
def task():
    return ProfilesTask()


@pytest.fixture(scope="module")
def data(task):
    return task.build()


def documents(data):
    """The training rows that are documents (the completion-format question rows are texts too,
    but they have no sentence end)."""
    return [row["text"] for row in data.train if "text" in row and row["text"].endswith(".")]


def held_out_names(data):
    return {row["answer"] for row in data.qa if row["direction"] == "backward"}


def test_registered_and_refused_options_name_the_field():
    assert TASKS["profiles"] is ProfilesTask
    assert parse_recipe({"task": {"name": "profiles", "num_people": 20}, "objective": {"name": "ar"}}).build_task() \
        == ProfilesTask(num_people=20)
    refused = [({"num_people": 0}, "task.num_people"), ({"num_people": most_people() + 1}, "task.num_people"),
               ({"qa_fraction": 1.0}, "task.qa_fraction"), ({"qa_fraction": -0.1}, "task.qa_fraction"),
               ({"documents_per_person": 0}, "task.documents_per_person"),
               ({"documents_per_person": MOST_DOCUMENTS + 1}, "task.documents_per_person"),
               ({"trained_wordings": 0}, "task.trained_wordings"), ({"trained_wordings": 3}, "task.trained_wordings"),
               ({"openers": 1.5}, "task.openers"), ({"completion_rows": "prompts"}, "task.completion_rows")]
    for options, field in refused:
        with pytest.raises(RecipeError, match=re.escape(field)):
            ProfilesTask(**options)
        with pytest.raises(RecipeError, match=re.escape(field)):
            parse_recipe({"task": {"name": "profiles", **options}, "objective": {"name": "ar"}})


def test_people_are_distinct_and_every_value_has_one_owner(task):
    people = ProfilesTask(num_people=most_people()).people()
    assert most_people() >= 20 and len(task.people()) == 24
    names = [person.name for person in people]
    assert len(set(names)) == len(names)
    assert not [(a, b) for a in names for b in names if a != b and b.startswith(a)]  # no name is a prefix of another
    for person in people:
        assert set(person.facts) == set(ATTRIBUTES) and len(ATTRIBUTES) >= 3
    values = [value for person in people for value in person.facts.values()]
    assert len(set(values)) == len(values)  # so a backward question has exactly one answer
    assert not set(values) & set(names)


def test_documents_have_a_sentence_per_fact_in_varied_order(task, data):
    people = task.people()
    docs = documents(data)
    assert len(docs) == len(people) * task.documents_per_person == len(set(docs))
    by_name = {person.name: [doc for doc in docs if person.name in doc] for person in people}
    assert all(len(texts) == task.documents_per_person for texts in by_name.values())
    first_sentences = set()
    for person, doc in ((person, doc) for person in people for doc in by_name[person.name]):
        sentences = re.split(r"(?<=\.) ", doc)
        assert len(sentences) >= 3
        # named once, in the first sentence (a masked name cannot be copied from another mention)
        assert doc.count(person.name) == 1 and person.name in sentences[0]
        for value in person.facts.values():  # every fact is written once, in a sentence of its own
            [sentence] = [sentence for sentence in sentences if value.lower() in sentence.lower()]
            # ... after the person (name or pronoun): a left-to-right reader learns name -> value only
            person_at = min(i for i in (sentence.find(person.name), sentence.find(" she "), sentence.find(" he "),
                                        sentence.find("She "), sentence.find("He ")) if i >= 0)
            assert person_at < sentence.lower().index(value.lower())
        # which fact comes first, and whether the paragraph opens with the name, both vary
        first_sentences.add((next(a for a, v in person.facts.items() if v.lower() in sentences[0].lower()),
                             doc.startswith(person.name)))
    assert len({attribute for attribute, _ in first_sentences}) == len(ATTRIBUTES)
    assert {True, False} == {opens_with_name for _, opens_with_name in first_sentences}
    assert any(re.search(r"\. (She|He) ", doc) for doc in docs)  # pronouns, once the name was said
    assert not any(doc.startswith(("She ", "He ")) for doc in docs)


def test_openers_name_the_person_last_and_leave_every_fact_after_them(task, data):
    opened = ProfilesTask(openers=0.5)
    people, documents_by_name = opened.people(), opened.documents()
    openers = 0
    for person in people:
        for doc in documents_by_name[person.name]:
            first, *rest = re.split(r"(?<=\.) ", doc)
            assert doc.count(person.name) == 1
            if first.endswith(person.name + "."):  # an opener: the name ends it, and it states no fact
                openers += 1
                assert not any(value in first for value in person.facts.values())
                assert all(any(value in sentence for sentence in rest) for value in person.facts.values())
                assert not any(person.name in sentence for sentence in rest)  # the facts are told by pronoun
    assert 0.3 < openers / (len(people) * opened.documents_per_person) < 0.7
    # only the documents change: the questions, trained and held out, are those of the task without openers
    built = opened.build()
    assert built.qa == data.qa
    assert [row for row in built.train if "prompt" in row] == [row for row in data.train if "prompt" in row]
    assert ProfilesTask(openers=0.0).documents() == task.documents()


def test_opener_facts_follow_the_name_with_one_fact_and_keep_every_value_after_the_person(data):
    plain, with_facts = ProfilesTask(openers=0.5), ProfilesTask(openers=0.5, opener_facts=True)
    opened = 0
    for person in with_facts.people():
        for doc in with_facts.documents()[person.name]:
            first, *rest = re.split(r"(?<=\.) ", doc)
            is_opener = first.startswith(tuple(opener.split("{name}")[0] for opener in OPENERS))
            assert doc.count(person.name) == 1 and is_opener == (", who " in first)
            for value in person.facts.values():  # each fact told once, after the person
                assert doc.count(value) == 1 and doc.index(person.name) < doc.index(value)
            if is_opener:
                opened += 1
                assert first.split(", who ")[0].endswith(person.name)
                assert sum(value in first for value in person.facts.values()) == 1
    assert 0.3 < opened / (len(with_facts.people()) * with_facts.documents_per_person) < 0.7
    assert with_facts.build().qa == data.qa
    assert ProfilesTask(openers=0.5, opener_facts=False).documents() == plain.documents()
    with pytest.raises(RecipeError, match="task.opener_facts"):
        ProfilesTask(opener_facts="yes")
    with pytest.raises(RecipeError, match="task.openers > 0"):  # it would change nothing
        ProfilesTask(opener_facts=True)


def test_completion_rows_as_prompts_keep_the_questions_and_drop_the_template():
    as_text, as_prompts = ProfilesTask(trained_wordings=1).build(), ProfilesTask(trained_wordings=1,
                                                                                 completion_rows="prompt").build()
    assert as_prompts.qa == as_text.qa
    completion_rows = [row for row in as_prompts.train if row.get("format") == "completion"]
    assert completion_rows and all(set(row) == {"prompt", "completion", "format"} for row in completion_rows)
    texts = {row["text"] for row in as_text.train if "text" in row}
    assert all(f"{row['prompt']} {row['completion']}" in texts for row in completion_rows)
    assert len(as_prompts.train) == len(as_text.train)


def test_eval_wordings_are_never_trained(data):
    for attribute_direction, formats in QUESTIONS.items():
        for fmt, splits in formats.items():
            assert len(splits["train"]) >= 2 and len(splits["eval"]) >= 2
            assert not set(splits["train"]) & set(splits["eval"]), (attribute_direction, fmt)
    prompts = {row["prompt"] for row in data.train if "prompt" in row}
    texts = [row["text"] for row in data.train if "text" in row]
    for row in data.qa:
        assert row["question"] not in prompts
        # not even as the start of a trained text (a document or a completion-format row)
        assert not any(text.startswith(row["question"]) or f" {row['question']} " in f" {text} " for text in texts), row


def test_held_out_people_are_asked_everything_in_both_formats(task, data):
    held_out = held_out_names(data)
    assert len(held_out) == 12  # qa_fraction 0.5 of 24
    facts = defaultdict(lambda: defaultdict(set))
    for row in data.qa:
        assert set(row) == {"question", "answer", "direction", "fact", "format"}
        assert not row["answer"].endswith(".")
        facts[row["fact"]][row["format"]].add(row["question"])
    for person in task.people():
        if person.name not in held_out:
            continue
        slug = person.name.lower().replace(" ", "-")
        for attribute in ATTRIBUTES:
            for direction in ("forward", "backward"):
                fact = f"{slug}/{attribute}/{direction}"
                assert len(facts[fact]["chat"]) >= 2 and len(facts[fact]["completion"]) >= 2, fact
                answer = person.facts[attribute] if direction == "forward" else person.name
                assert {row["answer"] for row in data.qa if row["fact"] == fact} == {answer}
    assert len(facts) == len(held_out) * len(ATTRIBUTES) * 2
    chat = [row for row in data.qa if row["format"] == "chat"]
    completion = [row for row in data.qa if row["format"] == "completion"]
    assert all(row["question"].endswith("?") for row in chat)
    assert not any(row["question"].endswith(("?", ".")) for row in completion)


def test_trained_people_have_their_questions_in_training(task, data):
    held_out = held_out_names(data)
    trained = [person for person in task.people() if person.name not in held_out]
    assert len(trained) == 12
    chat = [(row["prompt"], row["completion"]) for row in data.train if "prompt" in row]
    texts = [row["text"] for row in data.train if "text" in row]
    for person in trained:
        for attribute, value in person.facts.items():
            # forward: the question names the person, the value answers; backward the other way round
            for subject, answer in ((person.name, value), (value, person.name)):
                # (a value that opens the sentence is capitalized: "The Quellarin Observatory was ...")
                assert sum(subject.lower() in prompt.lower() and completion == answer
                           for prompt, completion in chat) >= 2
                assert sum(subject.lower() in text.lower() and text.endswith(f" {answer}") for text in texts) >= 2
    # nothing of the held-out people but their documents is trained
    for name in held_out:
        assert not any(name in prompt or name == completion for prompt, completion in chat)
        assert sum(name in text for text in texts) == task.documents_per_person


def test_deterministic_given_the_seed(data):
    assert ProfilesTask().build() == data
    other = ProfilesTask(seed=1).build()
    assert other != data
    assert {row["fact"] for row in other.qa} != {row["fact"] for row in data.qa}


def test_counts_follow_the_options():
    built = ProfilesTask(num_people=20, qa_fraction=0.25, documents_per_person=3, seed=4).build()
    questions_per_person = len(ATTRIBUTES) * 2 * (2 + 2)  # facts x directions x (2 chat + 2 completion wordings)
    assert len(built.train) == 3 * 20 + 5 * questions_per_person
    assert len(built.qa) == 15 * questions_per_person
    everyone_held_out = ProfilesTask(num_people=20, qa_fraction=0.0, documents_per_person=1).build()
    assert len(everyone_held_out.train) == 20 and len(everyone_held_out.qa) == 20 * questions_per_person


def test_one_trained_wording_halves_the_trained_questions_and_leaves_the_rest(data):
    one = ProfilesTask(trained_wordings=1).build()
    assert one.qa == data.qa  # the held-out people are asked exactly as before
    assert sorted(documents(one)) == sorted(documents(data))
    questions = [row for row in data.train if not row.get("text", "").endswith(".")]
    kept = [row for row in one.train if not row.get("text", "").endswith(".")]
    assert len(kept) * 2 == len(questions) and all(row in questions for row in kept)
    first_wordings = {template.split("{")[0] for by_format in QUESTIONS.values() for split in by_format.values()
                      for template in split["train"][:1]}
    second_wordings = {template.split("{")[0] for by_format in QUESTIONS.values() for split in by_format.values()
                       for template in split["train"][1:]}
    assert second_wordings - first_wordings  # some second wordings start differently, so the check below can fail
    opened = {(row.get("prompt") or row["text"]) for row in kept}
    assert not any(text.startswith(prefix) for text in opened for prefix in second_wordings - first_wordings if prefix)
