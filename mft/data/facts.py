"""Fictional facts for knowledge injection into a pretrained LM (after Berglund et al.'s
NameDescription and Pan et al.'s setting): invented people, one distinctive description each.

Every fact is written once, name first, with no paraphrase:

    "Orvella Quintaine is the founder of the Silver Lantern Observatory."

Forward QA asks for the description from the name ("Who is Orvella Quintaine?" -> "the founder of
the Silver Lantern Observatory"); backward QA asks for the name from the description ("Who is the
founder of the Silver Lantern Observatory?" -> "Orvella Quintaine"). A model fine-tuned left to
right learns name -> description; answering backward needs a factorization-agnostic objective.

Training data: every fact, plus the QA pairs (both directions) of a fraction `qa_fraction` of the
people, which teaches the question format; the QA pairs of the other people are held out and
asked at evaluation. Names and descriptions are built from invented parts, so they are unique and
(almost surely) unknown to any pretrained model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .schema import TaskData
from ..errors import RecipeError

FIRST = ("Orvella Daxton Mirela Quillon Savrin Tamsel Ulrika Brevan Calixte Dorrin Elvanna Faustin Galdric "
         "Henrike Ismay Jorvik Kestrel Liora Maddox Nerissa Oswin Perpetua Quenby Rosalind Sorrel Thaddeus "
         "Ysolde Zephyra Alaric Bettina Cosimo Delphine Emrys Fenella Gideon Honora Ivo Juniper Leopold "
         "Marisol").split()
LAST = ("Quintaine Voskuijlen Marrowby Tessendorf Halloran Cavendell Strythe Ambrecourt Pellinore Dunmarrow "
        "Everhollow Kinnaird Lockridge Moravec Northcote Ostrander Penhallow Rathbourne Silverwood Thornquist "
        "Underhill Valcourt Whitlock Yardley Ashcombe Blackwood Crestfall Davenmoor Elsworth Fairbrook").split()
ROLES = ("the founder of", "the architect of", "the first director of", "the inventor of", "the composer of",
         "the keeper of", "the cartographer who mapped", "the chef who created", "the author of",
         "the engineer who built")
ADJECTIVES = ("Silver", "Hollow", "Amber", "Crimson", "Whispering", "Gilded", "Frozen", "Sunken", "Velvet",
              "Iron", "Drifting", "Emerald")
THINGS = {
    "the founder of": ("Lantern Observatory", "Harbor Guild", "Orchard Academy", "Tide Museum"),
    "the architect of": ("Spiral Library", "Bridge of Sighs", "Glass Cathedral", "Moon Tower"),
    "the first director of": ("Cloud Institute", "River Archive", "Falcon Theatre", "Salt Observatory"),
    "the inventor of": ("clockwork lute", "pocket lighthouse", "tidal loom", "echo compass"),
    "the composer of": ("Lantern Sonata", "Fjord Requiem", "Ember Overture", "Meadow Nocturne"),
    "the keeper of": ("Lighthouse of Varn", "Garden of Keys", "Vault of Maps", "Well of Echoes"),
    "the cartographer who mapped": ("Isles of Mirth", "Ash Plateau", "Veiled Delta", "Copper Coast"),
    "the chef who created": ("moonlit tart", "fog pudding", "thunder bread", "river stew"),
    "the author of": ("Book of Tides", "Chronicle of Lanterns", "Atlas of Dreams", "Ballad of Stones"),
    "the engineer who built": ("Sky Railway", "Canal of Lights", "Windmill Bridge", "Deep Elevator"),
}


@dataclass
class FactsTask:
    name = "facts"
    num_people: int = 40
    qa_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self):
        most = min(len(FIRST), sum(len(things) for things in THINGS.values()))
        if not 1 <= self.num_people <= most:
            raise RecipeError(f"task.num_people = {self.num_people}; use between 1 and {most}")
        if not 0.0 <= self.qa_fraction < 1.0:
            raise RecipeError(f"task.qa_fraction = {self.qa_fraction}; use a fraction in [0, 1) (some people "
                              f"must be held out for evaluation)")

    def people(self) -> list[tuple[str, str]]:
        """(name, description) pairs: distinct first names, distinct descriptions."""
        rng = random.Random(self.seed)
        firsts, lasts = rng.sample(FIRST, len(FIRST)), rng.sample(LAST, len(LAST))
        # Every person gets a (role, thing) pair of their own, so two descriptions never differ by
        # the adjective alone: each description is distinctive, not a near-copy of another.
        pairs = [(role, thing) for role in ROLES for thing in THINGS[role]]
        rng.shuffle(pairs)
        descriptions = [f"{role} the {rng.choice(ADJECTIVES)} {thing}" for role, thing in pairs]
        names = [f"{firsts[i]} {lasts[i % len(lasts)]}" for i in range(self.num_people)]
        return list(zip(names, descriptions))

    def build(self) -> TaskData:
        rng = random.Random(self.seed + 1)
        people = self.people()
        train = [{"text": f"{name} is {description}."} for name, description in people]
        order = list(range(len(people)))
        rng.shuffle(order)
        num_trained = round(self.qa_fraction * len(people))
        qa = []
        for rank, index in enumerate(order):
            name, description = people[index]
            pairs = [(f"Who is {name}?", description, "forward"), (f"Who is {description}?", name, "backward")]
            for question, answer, direction in pairs:
                if rank < num_trained:
                    train.append({"prompt": question, "completion": answer})
                else:
                    qa.append({"question": question, "answer": answer, "direction": direction})
        rng.shuffle(train)
        return TaskData(train=train, qa=qa)
