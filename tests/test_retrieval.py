"""The retrieval task generator (mft.data.RetrievalTask)."""

from __future__ import annotations

import pytest

from mft.data import RetrievalTask
from mft.data.retrieval import BACKWARD_PREFIX, FORWARD_PREFIX, SEPARATOR


def _pairs(data):
    """{key: value} from the statements "k : v" of the training rows."""
    pairs = {}
    for row in data.train:
        if "text" in row:
            key, sep, value = row["text"].partition(f" {SEPARATOR} ")
            assert sep, row
            assert key not in pairs, f"key {key!r} has two statements"
            pairs[key] = value
    return pairs


def _statements(data):
    return [row["text"] for row in data.train if "text" in row]


def _train_queries(data, prefix):
    return [row for row in data.train if "prompt" in row and row["prompt"].startswith(prefix + " ")]


def test_deterministic_for_a_seed():
    first = RetrievalTask(num_pairs=30, seed=3).build()
    second = RetrievalTask(num_pairs=30, seed=3).build()
    assert first.train == second.train
    assert first.qa == second.qa


def test_different_seed_gives_different_data():
    a = RetrievalTask(num_pairs=30, seed=0).build()
    b = RetrievalTask(num_pairs=30, seed=1).build()
    assert _pairs(a) != _pairs(b)
    assert (a.train, a.qa) != (b.train, b.qa)


@pytest.mark.parametrize("tokens_per_entity", [1, 2, 3])
def test_entities_have_the_right_length_and_share_no_token(tokens_per_entity):
    num_pairs = 25
    data = RetrievalTask(num_pairs=num_pairs, tokens_per_entity=tokens_per_entity, seed=0).build()
    pairs = _pairs(data)
    assert len(pairs) == num_pairs
    entities = list(pairs) + list(pairs.values())
    assert len(entities) == 2 * num_pairs
    seen: set[str] = set()
    for entity in entities:
        tokens = entity.split()
        assert len(tokens) == tokens_per_entity, entity
        assert len(set(tokens)) == tokens_per_entity, f"a token repeats inside {entity!r}"
        assert not seen & set(tokens), f"{entity!r} shares a token with another entity"
        assert SEPARATOR not in tokens
        assert FORWARD_PREFIX not in tokens and BACKWARD_PREFIX not in tokens
        seen |= set(tokens)
    assert len(seen) == 2 * num_pairs * tokens_per_entity


def test_every_pair_appears_as_exactly_one_statement():
    num_pairs = 40
    data = RetrievalTask(num_pairs=num_pairs, seed=5).build()
    statements = _statements(data)
    assert len(statements) == num_pairs
    assert len(set(statements)) == num_pairs
    pairs = _pairs(data)
    for key, value in pairs.items():
        assert statements.count(f"{key} {SEPARATOR} {value}") == 1
    # every training row is a statement or a query, naming its key and value as entities
    for row in data.train:
        assert set(row) in ({"text", "entities"}, {"prompt", "completion", "entities"}), row
        texts = [row.get("text", "")] + [row.get("prompt", ""), row.get("completion", "")]
        assert len(row["entities"]) == 2 and all(any(e in t for t in texts) for e in row["entities"])


@pytest.mark.parametrize("num_pairs,query_fraction", [(40, 0.8), (10, 0.5), (7, 0.3), (12, 0.0), (12, 1.0)])
def test_query_split(num_pairs, query_fraction):
    data = RetrievalTask(num_pairs=num_pairs, query_fraction=query_fraction, seed=2).build()
    trained = round(query_fraction * num_pairs)
    forward_train = _train_queries(data, FORWARD_PREFIX)
    backward_train = _train_queries(data, BACKWARD_PREFIX)
    assert len(forward_train) == trained
    assert len(backward_train) == trained
    assert len(data.train) == num_pairs + 2 * trained

    forward_qa = [item for item in data.qa if item["direction"] == "forward"]
    backward_qa = [item for item in data.qa if item["direction"] == "backward"]
    assert len(forward_qa) == num_pairs - trained
    assert len(backward_qa) == num_pairs - trained
    assert len(data.qa) == 2 * (num_pairs - trained)
    for item in data.qa:
        assert set(item) == {"question", "answer", "direction"}

    # each pair is asked exactly once per direction, either in training or in the QA set
    forward_questions = [row["prompt"] for row in forward_train] + [item["question"] for item in forward_qa]
    backward_questions = [row["prompt"] for row in backward_train] + [item["question"] for item in backward_qa]
    assert len(set(forward_questions)) == num_pairs
    assert len(set(backward_questions)) == num_pairs

    # no QA question is among the training prompts
    train_prompts = {row["prompt"] for row in data.train if "prompt" in row}
    assert not train_prompts & {item["question"] for item in data.qa}


def test_answers_are_correct():
    data = RetrievalTask(num_pairs=30, query_fraction=0.5, seed=4).build()
    pairs = _pairs(data)
    keys_of = {value: key for key, value in pairs.items()}

    def given(question, prefix):
        assert question.startswith(prefix + " ") and question.endswith(" " + SEPARATOR), question
        return question[len(prefix) + 1: -len(SEPARATOR) - 1]

    assert data.qa
    for item in data.qa:
        if item["direction"] == "forward":
            assert item["answer"] == pairs[given(item["question"], FORWARD_PREFIX)]
        else:
            assert item["direction"] == "backward"
            assert item["answer"] == keys_of[given(item["question"], BACKWARD_PREFIX)]
    for row in _train_queries(data, FORWARD_PREFIX):
        assert row["completion"] == pairs[given(row["prompt"], FORWARD_PREFIX)]
    for row in _train_queries(data, BACKWARD_PREFIX):
        assert row["completion"] == keys_of[given(row["prompt"], BACKWARD_PREFIX)]


def test_zero_pairs_raises():
    with pytest.raises(ValueError, match="num_pairs"):
        RetrievalTask(num_pairs=0)
