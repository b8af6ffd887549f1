"""Path-finding on star graphs (Bachmann & Nagarajan 2024), the factorization-curse paper's planning task.

A star graph has a centre node with `degree` arms; each arm is a path of `path_length` - 1 further
nodes, so the path from the centre to the end of an arm has `path_length` nodes. Node labels are
drawn without replacement from 0..`num_nodes` - 1. An example lists the graph's directed edges in
random order, then the start (the centre) and the goal (the end of one arm), then the path:

    "5 12 | 31 7 | 5 31 | 12 40 | ... / 5 40 = 5 12 40"
     ^ edges (parent child), shuffled   ^ start goal  ^ the path from start to goal

The prompt is everything up to and including "="; the completion is the path. Left-to-right
models fail in a characteristic way (the "Clever Hans cheat"): the first step after the start is
the hard one, and teacher forcing never makes them plan it, while the rest of the path follows
from the previous node. Scoring: exact match of the whole path (one direction, reported as
"forward"). Training and evaluation graphs are drawn independently from the same distribution.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .schema import TaskData
from ..errors import RecipeError


@dataclass
class StarGraphTask:
    name = "star_graph"
    degree: int = 2
    path_length: int = 5
    num_nodes: int = 50
    num_train: int = 20000
    num_test: int = 500
    seed: int = 0

    def __post_init__(self):
        if self.degree < 2:
            raise RecipeError(f"task.degree = {self.degree}; use at least 2 (one arm leaves nothing to choose)")
        if self.path_length < 2:
            raise RecipeError(f"task.path_length = {self.path_length}; use at least 2 nodes (start and goal)")
        needed = 1 + self.degree * (self.path_length - 1)
        if self.num_nodes < needed:
            raise RecipeError(f"task.num_nodes = {self.num_nodes} is too few for degree {self.degree} and path length "
                              f"{self.path_length}; use at least {needed}")
        if self.num_train < 0 or self.num_test < 1:
            raise RecipeError(f"task.num_train = {self.num_train}, task.num_test = {self.num_test}; use num_train >= 0 "
                              f"and num_test >= 1")

    def graph(self, rng: random.Random) -> tuple[str, str]:
        """(prompt, path) of one random star graph."""
        nodes = rng.sample(range(self.num_nodes), 1 + self.degree * (self.path_length - 1))
        start, rest = nodes[0], nodes[1:]
        arms = [rest[i * (self.path_length - 1):(i + 1) * (self.path_length - 1)] for i in range(self.degree)]
        edges = [(([start] + arm)[i], arm[i]) for arm in arms for i in range(len(arm))]
        rng.shuffle(edges)
        path = [start] + rng.choice(arms)
        prompt = " | ".join(f"{a} {b}" for a, b in edges) + f" / {start} {path[-1]} ="
        return prompt, " ".join(map(str, path))

    def build(self) -> TaskData:
        rng = random.Random(self.seed)
        train = [dict(zip(("prompt", "completion"), self.graph(rng))) for _ in range(self.num_train)]
        qa = [{"question": prompt, "answer": path, "direction": "forward"}
              for prompt, path in (self.graph(rng) for _ in range(self.num_test))]
        return TaskData(train=train, qa=qa)
