"""The retrieval task of the factorization-curse paper (Sec. 3.1, after Golovneva et al. 2024).

N unique key-value pairs. Every key and every value is a sequence of `tokens_per_entity` tokens, and
no token is shared between two entities, so token statistics carry no hint. Training data:

    every pair as a statement                      "k1 k2 : v1 v2"
    a fraction `query_fraction` of forward queries "[value_of] k1 k2 :" -> "v1 v2"
    a fraction `query_fraction` of backward queries "[key_of] v1 v2 :"  -> "k1 k2"

Every row names its key and value as `entities` (for entity reversal). Evaluation: the held-out
queries in each direction, answered by generation (exact match). A model
that learnt only the left-to-right factorization answers forward queries (the statement gives
key -> value) but not backward ones; backward queries are only answerable by a model that can
predict the key from the value.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .schema import TaskData
from ..errors import RecipeError

FORWARD_PREFIX = "[value_of]"
BACKWARD_PREFIX = "[key_of]"
SEPARATOR = ":"


def unique_token_entities(count: int, tokens_per_entity: int, rng: random.Random) -> list[str]:
    """`count` entities of `tokens_per_entity` tokens ("t17 t4"), no token shared by two entities,
    so that token statistics carry no hint (also used by the relationship task)."""
    names = [f"t{i}" for i in range(count * tokens_per_entity)]
    rng.shuffle(names)
    k = tokens_per_entity
    return [" ".join(names[i:i + k]) for i in range(0, len(names), k)]


@dataclass
class RetrievalTask:
    name = "retrieval"
    num_pairs: int = 200
    tokens_per_entity: int = 2
    query_fraction: float = 0.8
    seed: int = 0

    def __post_init__(self):
        if self.num_pairs < 1:
            raise RecipeError(f"task.num_pairs = {self.num_pairs}: the dataset would be empty; use at least 1 pair")
        if self.tokens_per_entity < 1:
            raise RecipeError(f"task.tokens_per_entity = {self.tokens_per_entity}; use at least 1")
        if not 0.0 <= self.query_fraction <= 1.0:
            raise RecipeError(f"task.query_fraction = {self.query_fraction} is outside [0, 1]")

    def build(self) -> TaskData:
        rng = random.Random(self.seed)
        entities = unique_token_entities(2 * self.num_pairs, self.tokens_per_entity, rng)
        pairs = [(entities[2 * i], entities[2 * i + 1]) for i in range(self.num_pairs)]

        train = [{"text": f"{key} {SEPARATOR} {value}", "entities": [key, value]} for key, value in pairs]
        qa = []
        num_train_queries = round(self.query_fraction * self.num_pairs)
        for direction, prefix, make in (
            ("forward", FORWARD_PREFIX, lambda k, v: (k, v)),
            ("backward", BACKWARD_PREFIX, lambda k, v: (v, k)),
        ):
            order = list(range(self.num_pairs))
            rng.shuffle(order)
            for rank, index in enumerate(order):
                given, answer = make(*pairs[index])
                question = f"{prefix} {given} {SEPARATOR}"
                if rank < num_train_queries:
                    train.append({"prompt": question, "completion": answer, "entities": [given, answer]})
                else:
                    qa.append({"question": question, "answer": answer, "direction": direction})
        rng.shuffle(train)
        return TaskData(train=train, qa=qa)
