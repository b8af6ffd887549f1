"""The relationship task of the factorization-curse paper (Sec. 3.1, "non-reciprocal relationships").

N chains of three unique entities, each a sequence of `tokens_per_entity` tokens that no other
entity shares:

    statement            "a1 a2 => b1 b2 => c1 c2"      entities A, B, C
    forward question     "b1 b2 =>"  -> "c1 c2"          (what B points to: C)
    backward question    "b1 b2 <="  -> "a1 a2"          (what points to B: A)

Training data: every statement plus a fraction `query_fraction` of the questions in each
direction; the other questions are asked at evaluation. Each held-out question also records the
*incorrect* answer a model that treats "=>" as symmetric would give (A for the forward question,
C for the backward one): B has a neighbour on each side, and only the arrow says which one is
asked. Entities are listed on every row, for the entity-reversal objective.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .retrieval import unique_token_entities
from .schema import TaskData
from ..errors import RecipeError

FORWARD_ARROW = "=>"
BACKWARD_ARROW = "<="


@dataclass
class RelationshipTask:
    name = "relationship"
    num_chains: int = 200
    tokens_per_entity: int = 2
    query_fraction: float = 0.8
    seed: int = 0

    def __post_init__(self):
        if self.num_chains < 1:
            raise RecipeError(f"task.num_chains = {self.num_chains}: the dataset would be empty; use at least 1")
        if self.tokens_per_entity < 1:
            raise RecipeError(f"task.tokens_per_entity = {self.tokens_per_entity}; use at least 1")
        if not 0.0 <= self.query_fraction <= 1.0:
            raise RecipeError(f"task.query_fraction = {self.query_fraction} is outside [0, 1]")

    def build(self) -> TaskData:
        rng = random.Random(self.seed)
        entities = unique_token_entities(3 * self.num_chains, self.tokens_per_entity, rng)
        chains = [tuple(entities[3 * i:3 * i + 3]) for i in range(self.num_chains)]

        train = [{"text": f"{a} {FORWARD_ARROW} {b} {FORWARD_ARROW} {c}", "entities": [a, b, c]} for a, b, c in chains]
        qa = []
        num_train_queries = round(self.query_fraction * self.num_chains)
        for direction, arrow, pick in (("forward", FORWARD_ARROW, lambda a, c: (c, a)),
                                       ("backward", BACKWARD_ARROW, lambda a, c: (a, c))):
            order = list(range(self.num_chains))
            rng.shuffle(order)
            for rank, index in enumerate(order):
                a, b, c = chains[index]
                answer, incorrect = pick(a, c)
                question = f"{b} {arrow}"
                if rank < num_train_queries:
                    train.append({"prompt": question, "completion": answer, "entities": [b, answer]})
                else:
                    qa.append({"question": question, "answer": answer, "direction": direction,
                               "incorrect_answer": incorrect})
        rng.shuffle(train)
        return TaskData(train=train, qa=qa)
