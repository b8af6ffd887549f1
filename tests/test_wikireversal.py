"""The WikiReversal builder (Algorithm 1) on a GenWiki-format fixture written for these tests
(tests/fixtures/genwiki: capitals and birthplaces, a backward triple, an ambiguous tail, a rare
relation, an entity missing from its text)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mft.cli import main as cli_main
from mft.config import RecipeError
from mft.data import WikiReversalTask
from mft.data.wikireversal import default_templates, fill_text

FIXTURE = str(Path(__file__).parent / "fixtures" / "genwiki")


def _build(**options):
    return WikiReversalTask(genwiki=FIXTURE, **{"min_count": 3, "test_fraction": 0.25, **options}).build_with_stats()


def test_placeholders_are_filled():
    record = {"text": "<ENT_1> lies in <ENT_0> .", "entities": ["Europe", "Rome"], "graph": []}
    assert fill_text(record) == "Rome lies in Europe ."


def test_only_forward_unambiguous_frequent_triples_are_kept():
    data, stats = _build()
    assert stats["relations"] == {"birthPlace": 4, "capitalOf": 5}
    answers = {(q["direction"], q["answer"]) for q in data.qa} | {
        ("forward" if " is the capital of what?" in r["prompt"] or "What is the birth place of" in r["prompt"]
         else "backward", r["completion"]) for r in data.train if "prompt" in r}
    names = {a for _, a in answers}
    assert "Albert Einstein" not in names and "Ulm" not in names, "a backward triple was kept"
    assert "Brno" not in names and "Kurt Godel" not in names, "an ambiguous (relation, tail) pair was kept"
    assert "The Hobbit" not in names, "a relation below min_count was kept"
    assert "Norway" not in names, "a triple whose tail is not in the text was kept"
    assert {"Italy", "Rome", "Copenhagen", "Niels Bohr"} <= names


def test_questions_come_from_the_templates_and_passages_are_training_rows():
    data, stats = _build()
    passages = [r for r in data.train if "text" in r]
    assert len(passages) == stats["passages"] == 9
    assert all("<ENT_" not in r["text"] and r["entities"] for r in passages)
    questions = {r["prompt"]: r["completion"] for r in data.train if "prompt" in r}
    questions.update({q["question"]: q["answer"] for q in data.qa})
    assert questions["Rome is the capital of what?"] == "Italy"
    assert questions["What is the capital of Italy?"] == "Rome"
    assert questions["What is the birth place of Ada Byron?"] == "London"
    assert questions["Whose birth place is London?"] == "Ada Byron"
    assert default_templates("team") == {"forward": "What is the team of {head}?", "backward": "Whose team is {tail}?"}


def test_custom_templates(tmp_path):
    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps({"capitalOf": {"forward": "{head} is the capital of which country?",
                                                   "backward": "What is the capital of {tail}?"}}))
    data, _ = _build(templates=str(templates))
    prompts = {r["prompt"] for r in data.train if "prompt" in r} | {q["question"] for q in data.qa}
    assert "Paris is the capital of which country?" in prompts
    assert "What is the birth place of Ada Byron?" in prompts, "relations without a template keep the default"


@pytest.mark.parametrize("split", ["same", "different"])
def test_splits_hold_out_a_fraction_of_each_direction(split):
    data, stats = _build(split=split, test_fraction=0.4)
    held = {d: {q["answer"] for q in data.qa if q["direction"] == d} for d in ("forward", "backward")}
    assert len(held["forward"]) == len(held["backward"]) == round(0.4 * stats["kept_triples"])
    trained = {r["prompt"] for r in data.train if "prompt" in r}
    assert not trained & {q["question"] for q in data.qa}
    # "same": the held-out backward questions ask about the very triples held out forward
    forward_tails = held["forward"]
    backward_questions = [q["question"] for q in data.qa if q["direction"] == "backward"]
    tails_asked_backward = {t for t in forward_tails if any(q.endswith(f" {t}?") for q in backward_questions)}
    assert (tails_asked_backward == forward_tails) == (split == "same")


def test_seeds_change_the_split():
    first, _ = _build(seed=0, test_fraction=0.4)
    other, _ = _build(seed=3, test_fraction=0.4)
    assert first.qa != other.qa


def test_cli_writes_corpus_qa_and_stats(tmp_path):
    out = tmp_path / "wiki"
    assert cli_main(["data", "wikireversal", "--genwiki", FIXTURE, "--out", str(out),
                     "--option", "min_count=3"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    qa = [json.loads(line) for line in (out / "qa.jsonl").read_text().splitlines()]
    assert len(train) == stats["train_rows"] and len(qa) == stats["qa_rows"] > 0
    from mft.data.schema import load_data_files
    loaded = load_data_files(str(out / "train.jsonl"), str(out / "qa.jsonl"))  # mft's own loader accepts them
    assert len(loaded.train) == len(train)


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(RecipeError, match="task.genwiki .* no such folder"):
        WikiReversalTask(genwiki=str(tmp_path / "missing")).build()
    (tmp_path / "bad.json").write_text(json.dumps([{"text": "x"}]))
    with pytest.raises(RecipeError, match="bad.json record 0: a GenWiki record needs"):
        WikiReversalTask(genwiki=str(tmp_path)).build()
    with pytest.raises(RecipeError, match="lower min_count"):
        WikiReversalTask(genwiki=FIXTURE, min_count=500).build()
    with pytest.raises(ValueError, match="task.split"):
        WikiReversalTask(genwiki=FIXTURE, split="other")
