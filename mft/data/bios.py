"""BioS-style biographies (Zhu & Li 2023, as used by the factorization-curse paper, Sec. 3.1).

N fictional people, each with a unique full name (first middle last) and attributes drawn
uniformly and independently: birth date, birth city, university, major, employer. Birth dates are
drawn without replacement, so the backward question has one right answer. Biographies keep one
sentence order, written as space-separated words (one word = one token for the task's word-level
tokenizer):

    "Funolo Yatara Krugedor was born on 28 July 1945 . He grew up in Brackwater . He studied at
     Selwyn College . He majored in philosophy . He works for Halcyon Foods ."

`attributes` chooses which of the four sentences after the birth date a biography has (all four
by default, always in the order above): fewer attributes make shorter rows and fewer facts to
memorise, which is how `benchmarks/reproduce_paper.py` fits BioS into a CPU budget.

`biographies_per_person` (1 to 4) writes each person's biography that many times, each with its own
wording of the birth sentence ("... was born on ...", "... came into the world on ...", ...), always
name first. This is Zhu & Li's knowledge augmentation: a fact seen in several wordings is stored so
that questions in yet another wording can reach it (MLM-U on 1000 people, 11000 steps: held-out
forward questions 0.12 with one wording, 0.80 with four; BENCHMARKS.md).

Questions: forward "When was Funolo Yatara Krugedor born ?" -> "28 July 1945"; backward "Who was born
on 28 July 1945 ?" -> "Funolo Yatara Krugedor". Training data: every biography plus both questions for a
fraction `qa_fraction` of the people (which teaches the question format); the questions of the
others are asked at evaluation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .schema import TaskData
from ..errors import RecipeError


def _name_pools(sizes: tuple[int, ...], seed: int = 0) -> list[list[str]]:
    """Disjoint pools of made-up two-syllable names ("Tavo", "Brenik"), as many as `sizes` asks.

    Zhu & Li draw names from pools of hundreds of first and middle names and a thousand last
    names, so that among a thousand people most name words belong to one or two of them. With
    pools of ~30 names a name word is shared by ~30 people and a person is told apart only by the
    conjunction of three words, which masked objectives learn far more slowly (BENCHMARKS.md).
    """
    onsets = "B Br C D Dr F G Gr H J K Kr L M N P R S St T V W Y Z".split()
    vowels = "a e i o u".split()
    endings = ("", "n", "r", "l", "s", "k", "th", "ra", "lo", "nik", "wen", "dor")
    words = sorted({o + v + m.lower() + w + e for o in onsets for v in vowels for m in "bdgklmnrstvz"
                    for w in vowels for e in endings})
    random.Random(seed).shuffle(words)
    pools, start = [], 0
    for size in sizes:
        pools.append(words[start:start + size])
        start += size
    return pools


FIRST, MIDDLE, LAST = _name_pools((400, 400, 1000))

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
# Wordings of the first sentence. Every one names the person before the date, so that next-token
# training still only ever sees name -> date (the backward question stays a reversal).
BIRTH_SENTENCES = ("{name} was born on {date} .", "{name} came into the world on {date} .",
                   "{name} celebrates a birthday on {date} .", "{name} arrived on {date} .")


@dataclass
class BioSTask:
    name = "bios"
    num_people: int = 1000
    qa_fraction: float = 0.5
    first_year: int = 1900
    last_year: int = 2009
    attributes: list[str] = field(default_factory=lambda: list(ATTRIBUTES))
    biographies_per_person: int = 1
    seed: int = 0

    def __post_init__(self):
        most_names = len(FIRST) * len(MIDDLE) * len(LAST)
        most_dates = 12 * 28 * (self.last_year - self.first_year + 1)
        if self.last_year < self.first_year:
            raise RecipeError(f"task.last_year = {self.last_year} < task.first_year = {self.first_year}")
        if not 1 <= self.num_people <= min(most_names, most_dates):
            raise RecipeError(f"task.num_people = {self.num_people}; use between 1 and {min(most_names, most_dates)} "
                              f"(unique names and birth dates)")
        if (isinstance(self.attributes, str) or any(name not in ATTRIBUTES for name in self.attributes)
                or len(set(self.attributes)) != len(self.attributes)):
            raise RecipeError(f"task.attributes = {list(self.attributes)}; use distinct names from {list(ATTRIBUTES)}")
        if not 1 <= self.biographies_per_person <= len(BIRTH_SENTENCES):
            raise RecipeError(f"task.biographies_per_person = {self.biographies_per_person}; use between 1 and "
                              f"{len(BIRTH_SENTENCES)} (one per wording of the birth sentence)")
        if not 0.0 <= self.qa_fraction < 1.0:
            raise RecipeError(f"task.qa_fraction = {self.qa_fraction}; use a fraction in [0, 1) (some people "
                              f"must be held out for evaluation)")

    def people(self) -> list[dict[str, str]]:
        rng = random.Random(self.seed)
        # Distinct indices into the (first, middle, last) product, which is too large to list.
        names = [(FIRST[i // (len(MIDDLE) * len(LAST))], MIDDLE[i // len(LAST) % len(MIDDLE)], LAST[i % len(LAST)])
                 for i in rng.sample(range(len(FIRST) * len(MIDDLE) * len(LAST)), self.num_people)]
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

    def biography(self, person: dict[str, str], wording: int = 0) -> str:
        p = person
        sentences = [BIRTH_SENTENCES[wording].format(name=p["name"], date=p["birth_date"])]
        sentences += [f"{p['pronoun']} {ATTRIBUTES[name]} {p[name]} ." for name in ATTRIBUTES if name in self.attributes]
        return " ".join(sentences)

    def build(self) -> TaskData:
        people = self.people()
        rng = random.Random(self.seed + 1)
        train = [{"text": self.biography(p, wording), "entities": [p["name"], p["birth_date"]]}
                 for p in people for wording in range(self.biographies_per_person)]
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
