"""BioS-style biographies (Zhu & Li 2023, as used by the factorization-curse paper, Sec. 3.1).

N fictional people, each with a unique full name (first middle last) and attributes drawn
uniformly and independently: birth date, birth city, university, major, employer. Birth dates are
drawn without replacement, so the backward question has one right answer. One biography per
person, always in the same sentence order, written as space-separated words (one word = one token
for the task's word-level tokenizer):

    "Orla Wynn Castell was born on 14 March 1987 . She grew up in Tarvik . She studied at
     Harrow Institute . She majored in geology . She works for Quill Systems ."

`attributes` chooses which of the four sentences after the birth date a biography has (all four
by default, always in the order above): fewer attributes make shorter rows and fewer facts to
memorise, which is how `benchmarks/reproduce_paper.py` fits BioS into a CPU budget.

Questions: forward "When was Orla Wynn Castell born ?" -> "14 March 1987"; backward "Who was born on
14 March 1987 ?" -> "Orla Wynn Castell". Training data: every biography plus both questions for a
fraction `qa_fraction` of the people (which teaches the question format); the questions of the
others are asked at evaluation.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from .schema import TaskData

FIRST = ("Orla Bram Cato Dalia Eirik Faye Gorm Hana Ilse Jaro Kaia Lenn Mira Nils Odile Piet Quin Rhea Sven "
         "Tova Ulla Vito Wren Xeno Yara Zeno Asha Bodil Cyra Dag Edda Finn Greta Hugo Ines Jonas Kira Lior "
         "Maren Noor").split()
MIDDLE = ("Wynn Ash Bay Cole Dale Elm Fox Glen Hart Ivy June Kent Lake Moss Nash Oak Pike Reed Sage Tate "
          "Vale West York Zane").split()
LAST = ("Castell Brandt Dufour Ekberg Falk Garron Holm Ibsen Jarl Kessler Lund Marek Norberg Ostrom Pilar "
        "Quist Rask Soren Thal Urban Vesper Wilde Yllan Zorn Abrams Berglund Corvin Dahl Engel Forde").split()
MONTHS = ("January February March April May June July August September October November December").split()
CITIES = ("Tarvik Osmere Lindhaven Brackwater Dunmore Ellisport Fenwick Galloway Harrowgate Ironvale "
          "Juniper Kestown Larkspur Millbrook Northwood Oakhurst Pinecrest Queensbay Riverton Stonebridge").split()
UNIVERSITIES = ("Harrow Institute", "Lindon University", "Calder College", "Marsh Polytechnic", "Eastfield University",
                "Northgate Institute", "Selwyn College", "Ardent University", "Bellmoor College", "Thorne Academy")
MAJORS = ("geology", "linguistics", "economics", "chemistry", "architecture", "mathematics", "history",
          "astronomy", "biology", "philosophy", "music", "medicine")
EMPLOYERS = ("Quill Systems", "Northwind Labs", "Halcyon Foods", "Meridian Bank", "Copperleaf Media",
             "Bluefin Shipping", "Atlas Robotics", "Verdant Energy", "Solstice Health", "Ironbark Mining")
# The sentences a biography may have after its birth date, in this order: attribute -> its verb.
ATTRIBUTES = {"birth_city": "grew up in", "university": "studied at", "major": "majored in", "employer": "works for"}


@dataclass
class BioSTask:
    name = "bios"
    num_people: int = 1000
    qa_fraction: float = 0.5
    first_year: int = 1900
    last_year: int = 2009
    attributes: list[str] = field(default_factory=lambda: list(ATTRIBUTES))
    seed: int = 0

    def __post_init__(self):
        most_names = len(FIRST) * len(MIDDLE) * len(LAST)
        most_dates = 12 * 28 * (self.last_year - self.first_year + 1)
        if self.last_year < self.first_year:
            raise ValueError(f"task.last_year = {self.last_year} < task.first_year = {self.first_year}")
        if not 1 <= self.num_people <= min(most_names, most_dates):
            raise ValueError(f"task.num_people = {self.num_people}; use between 1 and {min(most_names, most_dates)} "
                             f"(unique names and birth dates)")
        if (isinstance(self.attributes, str) or any(name not in ATTRIBUTES for name in self.attributes)
                or len(set(self.attributes)) != len(self.attributes)):
            raise ValueError(f"task.attributes = {list(self.attributes)}; use distinct names from {list(ATTRIBUTES)}")
        if not 0.0 <= self.qa_fraction < 1.0:
            raise ValueError(f"task.qa_fraction = {self.qa_fraction}; use a fraction in [0, 1) (some people "
                             f"must be held out for evaluation)")

    def people(self) -> list[dict[str, str]]:
        rng = random.Random(self.seed)
        names = rng.sample(list(itertools.product(FIRST, MIDDLE, LAST)), self.num_people)
        # Days 1..28 in every month, so that every drawn date exists.
        dates = rng.sample(range(12 * 28 * (self.last_year - self.first_year + 1)), self.num_people)
        people = []
        for name, date in zip(names, dates):
            year, rest = divmod(date, 12 * 28)
            month, day = divmod(rest, 28)
            people.append({
                "name": " ".join(name),
                "birth_date": f"{day + 1} {MONTHS[month]} {self.first_year + year}",
                "birth_city": rng.choice(CITIES),
                "university": rng.choice(UNIVERSITIES),
                "major": rng.choice(MAJORS),
                "employer": rng.choice(EMPLOYERS),
                "pronoun": rng.choice(("He", "She")),
            })
        return people

    def biography(self, person: dict[str, str]) -> str:
        p = person
        sentences = [f"{p['name']} was born on {p['birth_date']} ."]
        sentences += [f"{p['pronoun']} {ATTRIBUTES[name]} {p[name]} ." for name in ATTRIBUTES if name in self.attributes]
        return " ".join(sentences)

    def build(self) -> TaskData:
        people = self.people()
        rng = random.Random(self.seed + 1)
        train = [{"text": self.biography(p), "entities": [p["name"], p["birth_date"]]} for p in people]
        order = list(range(len(people)))
        rng.shuffle(order)
        num_trained = round(self.qa_fraction * len(people))
        qa = []
        for rank, index in enumerate(order):
            p = people[index]
            questions = [("forward", f"When was {p['name']} born ?", p["birth_date"]),
                         ("backward", f"Who was born on {p['birth_date']} ?", p["name"])]
            for direction, question, answer in questions:
                if rank < num_trained:
                    train.append({"prompt": question, "completion": answer, "entities": [p["name"], p["birth_date"]]})
                else:
                    qa.append({"question": question, "answer": answer, "direction": direction})
        rng.shuffle(train)
        return TaskData(train=train, qa=qa)
