"""The papers' task generators: relationship, BioS, star graph; entity annotations in the schema."""

from __future__ import annotations

import json

import pytest
import torch

from mft.config import RecipeError
from mft.data import TASKS, BioSTask, RelationshipTask, StarGraphTask, build_word_tokenizer, encode_row, row_texts
from mft.data.relationship import BACKWARD_ARROW, FORWARD_ARROW
from mft.data.schema import load_data_files
from mft.eval import evaluate_qa


@pytest.mark.parametrize("task", [RelationshipTask(num_chains=20), BioSTask(num_people=20), StarGraphTask(num_train=20, num_test=5)])
def test_deterministic_and_seeded(task):
    first, again = task.build(), type(task)(**{**vars(task)}).build()
    assert (first.train, first.qa) == (again.train, again.qa)
    other = type(task)(**{**vars(task), "seed": 1}).build()
    assert first.train != other.train


def test_every_task_is_registered():
    assert {"retrieval", "relationship", "bios", "star_graph", "facts"} <= set(TASKS)


def _chains(data):
    chains = {}
    for row in data.train:
        if "text" in row:
            a, b, c = (part.strip() for part in row["text"].split(FORWARD_ARROW))
            chains[b] = (a, c)
    return chains


def test_relationship_questions_answers_and_incorrect_answers():
    data = RelationshipTask(num_chains=40, tokens_per_entity=2, query_fraction=0.75, seed=0).build()
    chains = _chains(data)
    assert len(chains) == 40
    entities = [e for b, (a, c) in chains.items() for e in (a, b, c)]
    tokens = [t for e in entities for t in e.split()]
    assert len(tokens) == len(set(tokens)) == 40 * 3 * 2, "entities must share no token"
    assert len(data.qa) == 2 * 10
    for item in data.qa:
        b, arrow = item["question"].rsplit(" ", 1)
        a, c = chains[b]
        if item["direction"] == "forward":
            assert arrow == FORWARD_ARROW and (item["answer"], item["incorrect_answer"]) == (c, a)
        else:
            assert arrow == BACKWARD_ARROW and (item["answer"], item["incorrect_answer"]) == (a, c)
    trained = {row["prompt"] for row in data.train if "prompt" in row}
    assert not trained & {item["question"] for item in data.qa}, "a held-out question is in the training data"
    assert all(row["entities"] for row in data.train)


def test_bios_names_and_birth_dates_unique_and_questions_answerable():
    task = BioSTask(num_people=300, qa_fraction=0.5, seed=0)
    people = task.people()
    assert len({p["name"] for p in people}) == 300
    assert len({p["birth_date"] for p in people}) == 300
    data = task.build()
    bios = [row["text"] for row in data.train if "text" in row]
    assert len(bios) == 300
    by_name = {p["name"]: p for p in people}
    by_date = {p["birth_date"]: p for p in people}
    assert len(data.qa) == 2 * 150
    for item in data.qa:
        if item["direction"] == "forward":
            name = item["question"].removeprefix("When was ").removesuffix(" born ?")
            assert by_name[name]["birth_date"] == item["answer"]
        else:
            date = item["question"].removeprefix("Who was born on ").removesuffix(" ?")
            assert by_date[date]["name"] == item["answer"]
    # every attribute appears in its person's biography, which starts with the full name
    for p in people[:20]:
        bio = task.biography(p)
        assert bio.startswith(p["name"] + " was born on " + p["birth_date"])
        for key in ("birth_city", "university", "major", "employer"):
            assert p[key] in bio


def test_bios_name_pools_are_disjoint_single_words_of_zhu_and_lis_sizes():
    from mft.data.bios import FIRST, LAST, MIDDLE

    assert (len(FIRST), len(MIDDLE), len(LAST)) == (400, 400, 1000)
    assert len(set(FIRST) | set(MIDDLE) | set(LAST)) == 1800  # no word in two pools
    assert all(word.isalpha() and word[0].isupper() for word in FIRST + MIDDLE + LAST)
    # a person's three name words come from the three pools, in order
    for p in BioSTask(num_people=50, seed=3).people():
        first, middle, last = p["name"].split()
        assert first in FIRST and middle in MIDDLE and last in LAST


def test_bios_attributes_choose_the_sentences_after_the_birth_date():
    task = BioSTask(num_people=10, attributes=["major"], seed=0)
    for p in task.people():
        assert task.biography(p) == f"{p['name']} was born on {p['birth_date']} . {p['pronoun']} majored in {p['major']} ."
    assert BioSTask(num_people=10, attributes=[]).biography(task.people()[0]).count(" . ") == 0
    for bad in (["shoe_size"], ["major", "major"], "major"):
        with pytest.raises(ValueError, match="task.attributes"):
            BioSTask(num_people=10, attributes=bad)


def test_bios_several_biographies_per_person_differ_in_wording_and_keep_the_name_first():
    task = BioSTask(num_people=20, attributes=["major"], biographies_per_person=3, seed=0)
    data = task.build()
    texts = [row["text"] for row in data.train if "text" in row]
    assert len(texts) == 60
    for p in task.people():
        own = [t for t in texts if t.startswith(p["name"] + " ")]
        assert len(own) == 3 and len(set(own)) == 3
        for text in own:  # the name before the date, the attribute sentences unchanged
            assert text.index(p["birth_date"]) > len(p["name"])
            assert text.endswith(f"{p['pronoun']} majored in {p['major']} .")
    for bad in (0, 5):
        with pytest.raises(ValueError, match="task.biographies_per_person"):
            BioSTask(num_people=10, biographies_per_person=bad)


def test_bios_rejects_more_people_than_unique_dates():
    with pytest.raises(ValueError, match="num_people"):
        BioSTask(num_people=12 * 28 + 1, first_year=2000, last_year=2000)


@pytest.mark.parametrize("degree,path_length", [(2, 5), (3, 4), (5, 2)])
def test_star_graph_path_follows_the_edges_from_start_to_goal(degree, path_length):
    task = StarGraphTask(degree=degree, path_length=path_length, num_nodes=40, num_train=30, num_test=10, seed=2)
    data = task.build()
    rows = [(r["prompt"], r["completion"]) for r in data.train] + [(q["question"], q["answer"]) for q in data.qa]
    for prompt, path in rows:
        edges_text, query = prompt.split(" / ")
        edges = [tuple(map(int, edge.split())) for edge in edges_text.split(" | ")]
        start, goal = map(int, query.removesuffix(" =").split())
        nodes = list(map(int, path.split()))
        assert len(edges) == degree * (path_length - 1)
        assert len({n for e in edges for n in e}) == 1 + degree * (path_length - 1)
        assert all(0 <= n < 40 for e in edges for n in e)
        assert [a for a, _ in edges].count(start) == degree, "the start is the centre of the star"
        assert nodes[0] == start and nodes[-1] == goal and len(nodes) == path_length
        assert all((a, b) in edges for a, b in zip(nodes, nodes[1:]))
    assert all(q["direction"] == "forward" for q in data.qa)


def test_star_graph_refuses_too_few_nodes():
    with pytest.raises(ValueError, match="num_nodes"):
        StarGraphTask(degree=3, path_length=5, num_nodes=12)


def test_entity_spans_are_token_spans_of_the_entities():
    data = RelationshipTask(num_chains=5, seed=0).build()
    tokenizer = build_word_tokenizer([t for row in data.train for t in row_texts(row)])
    for row in data.train:
        example = encode_row(tokenizer, row)
        spans = example["entity_spans"]
        decoded = [tokenizer.decode(example["input_ids"][a:b]) for a, b in spans]
        assert sorted(decoded) == sorted(row["entities"])
        assert all(b <= c for (_, b), (c, _) in zip(spans, spans[1:])), "spans overlap or are unsorted"


def test_entity_spans_found_after_a_space_in_a_bpe_vocabulary():
    """BPE vocabularies encode a word differently after a space; the span search tries both."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # byte-level BPE without merges: every character is a token, "Ġ" marks a preceding space
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend = Tokenizer(models.BPE({c: i for i, c in enumerate(sorted(alphabet))}, []))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="A")
    example = encode_row(tokenizer, {"text": "Bob met the king", "entities": ["Bob", "the king"]})
    decoded = [tokenizer.decode(example["input_ids"][a:b]).strip() for a, b in example["entity_spans"]]
    assert decoded == ["Bob", "the king"]


def test_bad_entities_are_refused_with_the_row(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "a b c", "entities": ["x y"]}) + "\n")
    with pytest.raises(RecipeError, match=r"line 1: entity 'x y' does not occur"):
        load_data_files(str(path), None)
    path.write_text(json.dumps({"text": "a b c", "entities": "a"}) + "\n")
    with pytest.raises(RecipeError, match="line 1: 'entities' must be a list"):
        load_data_files(str(path), None)


def test_incorrect_inference_rate_is_reported(monkeypatch):
    """Through the real evaluation code, with answers looked up in a table instead of generated."""
    from mft import eval as mft_eval

    qa = [{"question": "q1", "answer": "a", "direction": "forward", "incorrect_answer": "c"},
          {"question": "q2", "answer": "d", "direction": "forward", "incorrect_answer": "f"},
          {"question": "q3", "answer": "g", "direction": "backward", "incorrect_answer": "i"}]
    answers = {"q1": "c", "q2": "d", "q3": "i"}
    monkeypatch.setattr(mft_eval, "encode_question", lambda tokenizer, question, *rules: question)
    monkeypatch.setattr(mft_eval, "generate", lambda model, tokenizer, prompts, *a, **k: [answers[p] for p in prompts])
    tokenizer = type("Tokenizer", (), {"decode": staticmethod(lambda text, skip_special_tokens=True: text)})()
    model = torch.nn.Linear(1, 1)
    results = evaluate_qa(model, tokenizer, qa, "causal")
    assert results["forward"]["exact_match"] == 0.5 and results["forward"]["incorrect_inference"] == 0.5
    assert results["backward"]["exact_match"] == 0.0 and results["backward"]["incorrect_inference"] == 1.0
