"""The fictional-facts task for knowledge injection into pretrained LMs."""

from __future__ import annotations

import pytest

from mft.data import FactsTask


def test_facts_are_unique_name_first_and_deterministic():
    task = FactsTask(num_people=40, qa_fraction=0.5, seed=0)
    people = task.people()
    assert len(people) == 40
    names, descriptions = zip(*people)
    assert len(set(names)) == 40 and len(set(descriptions)) == 40
    assert len({name.split()[0] for name in names}) == 40  # no two people share a first name
    from mft.data.facts import ADJECTIVES
    without_adjective = {next(d.replace(f" {a} ", " ", 1) for a in ADJECTIVES if f" {a} " in d) for d in descriptions}
    assert len(without_adjective) == 40  # distinctive: no two differ by the adjective alone
    data = task.build()
    statements = [row["text"] for row in data.train if "text" in row]
    assert sorted(statements) == sorted(f"{n} is {d}." for n, d in people)  # each fact once, name first
    assert task.build() == data
    assert FactsTask(seed=1).build() != data


def test_qa_split_and_answers():
    task = FactsTask(num_people=40, qa_fraction=0.5, seed=3)
    people = dict(task.people())
    by_description = {d: n for n, d in people.items()}
    data = task.build()
    trained = [row for row in data.train if "prompt" in row]
    assert len(trained) == 40 and len(data.qa) == 40  # 20 people x 2 directions each
    for item in data.qa:
        subject = item["question"].removeprefix("Who is ").removesuffix("?")
        expected = people[subject] if item["direction"] == "forward" else by_description[subject]
        assert item["answer"] == expected
    held_out = {item["question"] for item in data.qa}
    assert not held_out & {row["prompt"] for row in trained}
    # a held-out person is held out in both directions
    forward = {item["answer"] for item in data.qa if item["direction"] == "backward"}
    assert {item["question"].removeprefix("Who is ").removesuffix("?") for item in data.qa
            if item["direction"] == "forward"} == forward


@pytest.mark.parametrize("options", [{"num_people": 0}, {"num_people": 41}, {"qa_fraction": 1.0}])
def test_bad_sizes_are_refused(options):
    with pytest.raises(ValueError, match="task."):
        FactsTask(**options)
