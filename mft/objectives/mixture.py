"""A mixture of objectives: each example (or each batch) is trained with one component, drawn with
probability proportional to its weight.

    objective:
      name: mixture
      mix: {ar: 0.5, mlm_u: 0.5}      # component -> weight
      per: example                     # or: batch (one component for the whole batch)
      options: {mlm_u: {weighting: uniform}}   # optional options of the components

Or route by row kind: text rows (documents) to one objective, prompt/completion rows to another,
e.g. documents with masked fine-tuning and questions with completion-only AR:

    objective:
      name: mixture
      route: {text: masked_reconstruct, prompt: ar}
      options: {ar: {predict_prompt: false}}

Each row remembers which component made it (`Row.source`), so the trainer logs every component's
loss separately (`loss_ar`, `loss_mlm_u`) next to the total.

The mixture's rules combine its components': it needs a mask token, is bidirectional, shifts or
keeps the sink when any component does; it trains the architectures all components can train. Its
natural decoding is the one of the component that answers questions: with `route`, the component
of prompt rows (questions are prompts); with `mix`, the heaviest (the first listed among equals).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .base import OBJECTIVES, Objective, Row
from ..errors import RecipeError


@dataclass
class Mixture(Objective):
    name = "mixture"
    mix: dict[str, float] = field(default_factory=dict)
    per: Literal["example", "batch"] = "example"
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    route: dict[str, str] | None = None

    def __post_init__(self):
        known = [name for name in OBJECTIVES if name != "mixture"]
        if self.route is not None:
            for kind in self.route:
                if kind not in ("text", "prompt"):
                    close = difflib.get_close_matches(str(kind), ["text", "prompt"], n=1)
                    hint = f"did you mean {close[0]}? " if close else ""
                    raise RecipeError(f"objective.route.{kind}: unknown row kind; {hint}route maps the row kinds "
                                      f"text and prompt to objectives")
            for kind in ("text", "prompt"):
                if kind not in self.route:
                    raise RecipeError(f"objective.route.{kind} is missing; route maps both row kinds, e.g. "
                                      f"{{text: masked_reconstruct, prompt: ar}}")
                if self.route[kind] not in known:
                    raise RecipeError(f"objective.route.{kind}: unknown objective {self.route[kind]!r}; choose from "
                                      f"{', '.join(known)}")
            routed = {name: 1.0 for name in dict.fromkeys(self.route.values())}
            # A resolved recipe repeats the mix that the route implies; any other mix is a conflict.
            if self.mix and self.mix != routed:
                raise RecipeError("objective.route and objective.mix exclude each other (route implies the mix); "
                                  "remove objective.mix")
            self.mix = routed
        if not self.mix:
            raise RecipeError("objective.mix is empty; give components and weights, e.g. {ar: 0.5, mlm_u: 0.5}")
        for component, weight in self.mix.items():
            if component not in OBJECTIVES or component == "mixture":
                raise RecipeError(f"objective.mix: unknown objective {component!r}; choose from "
                                  f"{', '.join(n for n in OBJECTIVES if n != 'mixture')}")
            if not isinstance(weight, (int, float)) or weight < 0:
                raise RecipeError(f"objective.mix.{component} = {weight!r}; weights are numbers >= 0")
        if sum(self.mix.values()) <= 0:
            raise RecipeError("objective.mix: the weights sum to 0; give at least one positive weight")
        for component in self.options:
            if component not in self.mix:
                raise RecipeError(f"objective.options.{component}: {component!r} is not in objective.mix")
        if self.per not in ("example", "batch"):
            raise RecipeError(f"objective.per = {self.per!r}; use 'example' or 'batch'")
        self._components = tuple(OBJECTIVES[name](**self.options.get(name, {})) for name in self.mix)
        total = sum(self.mix.values())
        self.probabilities = torch.tensor([weight / total for weight in self.mix.values()])

    @property
    def components(self) -> tuple[Objective, ...]:
        return self._components

    @property
    def component_names(self) -> list[str]:
        return list(self.mix)

    @property
    def answering_component(self) -> Objective:
        """The component whose decoding answers questions (see the module docstring)."""
        if self.route is not None:
            return self.components[self.component_names.index(self.route["prompt"])]
        return self.components[self.component_names.index(max(self.mix, key=self.mix.get))]

    @property
    def decoding(self) -> str:
        return self.answering_component.decoding

    @property
    def needs_mask_token(self) -> bool:
        return any(component.needs_mask_token for component in self.components)

    @property
    def bidirectional(self) -> bool:
        return any(component.bidirectional for component in self.components)

    @property
    def two_stream(self) -> bool:
        return any(component.two_stream for component in self.components)

    @property
    def shift(self) -> bool:
        return any(component.shift for component in self.components)

    @property
    def keep_sink(self) -> bool:
        return any(component.keep_sink for component in self.components)

    @property
    def attend_to_masked(self) -> bool:
        return any(component.attend_to_masked for component in self.components if component.bidirectional)

    @property
    def prompt_sees_answer(self) -> bool:
        return all(component.prompt_sees_answer for component in self.components)

    @property
    def architectures(self) -> frozenset[str]:
        return frozenset.intersection(*(component.architectures for component in self.components))

    @property
    def reads_prompt(self) -> bool:
        return self.route is not None or any(component.reads_prompt for component in self.components)

    def setup(self, special, tokenizer=None) -> None:
        super().setup(special, tokenizer)
        for component in self.components:
            component.setup(special, tokenizer)

    def vocabulary_texts(self) -> list[str]:
        return [text for component in self.components for text in component.vocabulary_texts()]

    def draw(self, generator: torch.Generator) -> int:
        return int(torch.multinomial(self.probabilities, 1, generator=generator).item())

    def __call__(self, example: dict[str, Any], generator: torch.Generator) -> list[Row]:
        if self.route is not None:
            kind = "prompt" if example.get("prompt_length", 0) > 0 else "text"
            return self.rows_from(self.component_names.index(self.route[kind]), example, generator)
        return self.rows_from(self.draw(generator), example, generator)

    def rows_from(self, index: int, example: dict[str, Any], generator: torch.Generator) -> list[Row]:
        rows = self.components[index](example, generator)
        for row in rows:
            row.source = self.component_names[index]
        return rows

    def batch_rows(self, examples: list[dict[str, Any]], generators: list[torch.Generator]) -> list[Row]:
        if self.per == "example":
            return super().batch_rows(examples, generators)
        index = self.draw(generators[0])  # one draw for the batch, from its first example's stream
        return [row for example, generator in zip(examples, generators)
                for row in self.rows_from(index, example, generator)]
