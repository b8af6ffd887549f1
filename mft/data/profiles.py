"""Invented profiles: a small "your own documents" corpus for knowledge injection into a pretrained
chat LM (such as SmolLM2-135M-Instruct), to show the reversal curse and its cure by masked
fine-tuning on text that reads like real documents rather than one fixed sentence per fact.

Each invented person has three facts, every value built from invented word parts and unique
across all people, so a backward question has exactly one answer and no pretrained model knows it:

    birthplace  an invented town          "Varnholt"
    founded     an invented institution   "the Quellarin Observatory"
    pet         an invented companion     "a heron named Oskel"

Each person has `documents_per_person` documents (4 by default), each one paragraph: a sentence per
fact (and sometimes one sentence without facts), in a shuffled order, each drawn from a few
templates, so the same facts are read in several orders and wordings, as they would be in several
sources. (Allen-Zhu and Li, "Physics of Language Models: Part 3.1", 2023, found such knowledge
augmentation, several differently worded biographies per person, necessary for a model to answer
questions about people whose questions it was never trained on.) A document names its person once,
in its first sentence, which may open with the name ("Ilsa Dorn was born in Varnholt.") or with a
phrase before it ("Records show that Ilsa Dorn was born in Varnholt."); later sentences use a
pronoun ("She founded ..."). With `openers` > 0 that fraction of the documents opens instead with a
sentence that ends with the name and states no fact ("This note is about Ilsa Dorn."), as running
text also puts names after a verb or a preposition; every fact then follows by pronoun (with
`opener_facts`, the opener goes on with one fact: "This note is about Ilsa Dorn, who was born in
Varnholt."). In every fact sentence the person comes before the value, on purpose: a document
read left to right then teaches name -> value only, and a backward question (value -> name) asks
for what the text puts *before* the value, which is the reversal. (With value-first
sentences a left-to-right model could answer those backward questions without any reversal, and
the demo would measure nothing.)

Questions come in two formats: "chat", a question answered by the bare value ("Where was Ilsa
Dorn born?" -> "Varnholt"), and "completion", a text prefix the model continues, as in Berglund et
al.'s probes ("Ilsa Dorn was born in the town of" -> "Varnholt"; backward "The person born in
Varnholt is" -> "Ilsa Dorn"). Each fact is asked forward (name -> value) and backward (value ->
name), and every (fact, direction, format) has two sets of wordings: `train` wordings and `eval`
wordings that training never uses.

Training data: every person's document, plus the questions of a fraction `qa_fraction` of the
people in the first `trained_wordings` (1 or 2) train wordings (chat as prompt/completion,
completion as text, or as prompt rows with `completion_rows: prompt`), which teaches the question
formats. The QA rows are the other people's questions in every eval wording: their facts were only
ever read in their documents, so the model must answer from the documents, in wordings it never
saw. Each QA row carries `fact` ("ilsa-dorn/birthplace/forward"), shared by all wordings and both
formats of one fact and direction, and `format` ("chat" or "completion").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .schema import DIRECTIONS, TaskData
from ..errors import RecipeError

# First names come with the pronouns (they, their, them) the documents use for them.
SHE, HE = ("she", "her", "her"), ("he", "his", "him")
FIRST = ([(name, SHE) for name in "Ilsa Orla Brenna Sefa Marit Yselle Linnea Odalys Kaija Thessaly Rhosyn "
          "Annika Velda Saoirse Imke Ottilie Wenna Liesl Cerys Ysolde".split()]
         + [(name, HE) for name in "Tovin Aldric Brannoc Corvin Eskil Fenwick Halvard Ivor Joren Kasimir "
            "Lothar Mael Niklas Osric Peregrin Ruarc Stellan Teodor Ulf Wendel".split()])
LAST = ("Dorn Valek Marrowind Quessel Thornaby Halloway Ostergaard Vinter Kellan Brannagh Sollis Tarrow Ebbing "
        "Morrant Feldane Ashgrove Lindqvist Pellow Rasmund Oakhurst Dallow Harrick Mossberg Trevane Ambersley "
        "Wystan Corrigan Elsner Fairweather Grimsdale Iverly Jessop Kettering Merriden Norcott Penrose Saltash "
        "Underwood Yelland Zorbeck").split()

# The values are made from invented parts: a stem used once (so every value is unique) and a
# second part drawn at random (so the values do not all look alike).
TOWN_STEMS = ("Varn Kesh Drell Olm Tarv Quen Brak Morv Skel Ulden Gesk Garr Istel Jorv Lask Nerr Pell Rask "
              "Tresk Thal Urm Vell Wend Yarl Zenn Asker Bryn Corm Dusk Elb Frask Grell Hask Ivel Kolm Lunt "
              "Mesk Norv Orst Prell").split()
TOWN_ENDINGS = ("holt", "mere", "wick", "stad", "by", "ford", "dal", "haven", "moor", "vik")
WORK_STEMS = ("Quellarin Dovrane Selvaro Ithmere Corvane Brisenne Kaldora Oressa Venthal Myrrow Talvenn Eskarion "
              "Lunnaby Prestane Orvalis Halmerre Zeverin Gallowyn Nimbrel Ostravel Fendara Cymbrel Wyndrass "
              "Tessaly Arvendel Belloran Drusimar Elvaine Hestrow Jonquessa Kirrowen Marvolde Nessarin Perrowyn "
              "Ruvallen Sorquin Thallomere Umbrissa Vorhelm Yssandre").split()
INSTITUTIONS = ("Observatory", "Conservatory", "Lyceum", "Botanical Garden", "Maritime Museum", "Glassworks",
                "Printing House", "Puppet Theatre", "Clockmakers' Guild", "Lantern Society", "Weather Station",
                "Seed Library")
PET_NAMES = ("Oskel Brimm Tullo Nemmet Fisko Quorra Zabel Wimsy Harro Pelka Drubb Ellisk Murro Jexa Tobrin "
             "Vessa Grumpel Illo Snorrel Odwin Rilla Bazzo Kippet Lunka Mopsel Nixo Plonka Ruddle Sibbet Tanzel "
             "Umbo Wexlo Yoska Zimmo Crumbel Dollen Fennick Gubbet Hootle Jassa").split()
SPECIES = ("heron", "otter", "tortoise", "raven", "ferret", "hare", "hedgehog", "owl", "goat", "lizard", "parrot",
           "badger")

ATTRIBUTES = ("birthplace", "founded", "pet")

# Document sentences per fact. Fields: {name} (the subject), {value}, and the pronouns {they} {their}
# {them}; the first letter of every sentence is capitalized after filling. A document names its
# person once, in its first sentence; later sentences fill {name} with the pronoun ("Years later,
# she founded ..."), as people write. (Naming the person in every sentence would also let a masked
# objective recover a masked name by copying another mention of it instead of recalling it from the
# values around it, which is the backward association the demo needs.)
SENTENCES = {
    "birthplace": ("{name} was born in {value}.",
                   "Records show that {name} was born in {value}, a small harbour town.",
                   "{name} grew up in {value}, the town where {they} was born.",
                   "{name} comes from {value}."),
    "founded": ("{name} founded {value}.",
                "Years later, {name} founded {value}.",
                "In {their} thirties, {name} founded {value}.",
                "{name} went on to found {value}.",
                "{name} is best known for founding {value}."),
    "pet": ("{name} keeps {value}.",
            "Everyone in the village knows that {name} keeps {value}.",
            "{name} shares {their} house with {value}.",
            "At home, {name} keeps {value}.",
            "{name} has long kept {value}."),
}
# Sentences with no facts, so that not every sentence of a document is one.
FILLERS = ("{they} rarely speaks about {their} early years.",
           "Friends describe {them} as patient and curious.",
           "{they} spends most evenings reading by the window.",
           "Few people know much else about {them}.",
           "{they} writes long letters to old friends.",
           "Neighbours say {they} is always up before dawn.")

# Questions per (fact, direction), per format, in two disjoint sets: `train` wordings are trained
# (for the trained people), `eval` wordings are only ever asked. Chat questions are answered by the
# bare value; completion prefixes are continued by it.
QUESTIONS = {
    ("birthplace", "forward"): {
        "chat": {"train": ("Where was {name} born?", "What is the birthplace of {name}?"),
                 "eval": ("In which town was {name} born?", "What is {name}'s hometown?")},
        "completion": {"train": ("{name} was born in the town of", "The birthplace of {name} is"),
                       "eval": ("{name}'s hometown is", "The town where {name} was born is called")},
    },
    ("birthplace", "backward"): {
        "chat": {"train": ("Who was born in {value}?", "Which person was born in {value}?"),
                 "eval": ("Whose birthplace is {value}?", "{value} is the birthplace of which person?")},
        "completion": {"train": ("The person born in {value} is", "{value} is the birthplace of"),
                       "eval": ("{value} is the hometown of", "The person who was born in {value} is called")},
    },
    ("founded", "forward"): {
        "chat": {"train": ("What did {name} found?", "Which institution did {name} found?"),
                 "eval": ("What was founded by {name}?", "{name} is the founder of what?")},
        "completion": {"train": ("{name} founded", "{name} is the founder of"),
                       "eval": ("The institution founded by {name} is", "{name} is remembered for founding")},
    },
    ("founded", "backward"): {
        "chat": {"train": ("Who founded {value}?", "Who is the founder of {value}?"),
                 "eval": ("{value} was founded by whom?", "Which person founded {value}?")},
        "completion": {"train": ("{value} was founded by", "The founder of {value} is"),
                       "eval": ("The person who founded {value} is", "{value} owes its founding to")},
    },
    ("pet", "forward"): {
        "chat": {"train": ("What pet does {name} keep?", "Which animal does {name} keep?"),
                 "eval": ("What animal lives with {name}?", "What is {name}'s pet?")},
        "completion": {"train": ("{name} keeps", "The pet of {name} is"),
                       "eval": ("{name}'s pet is", "The animal that lives with {name} is")},
    },
    ("pet", "backward"): {
        "chat": {"train": ("Who keeps {value}?", "Whose pet is {value}?"),
                 "eval": ("{value} is kept by whom?", "Who is the owner of {value}?")},
        "completion": {"train": ("{value} is kept by", "The owner of {value} is"),
                       "eval": ("{value} lives with", "The person who keeps {value} is")},
    },
}
FORMATS = ("chat", "completion")


@dataclass(frozen=True)
class Person:
    name: str
    pronouns: tuple[str, str, str]  # they, their, them
    facts: dict[str, str]  # attribute -> value

    def fill(self, template: str, value: str = "", named: bool = True) -> str:
        """`template` filled in; {name} is the person's name, or their pronoun when not `named`."""
        they, their, them = self.pronouns
        text = template.format(name=self.name if named else they, value=value, they=they, their=their, them=them)
        return text[0].upper() + text[1:]

    def slug(self) -> str:
        return re.sub(r"[^a-z]+", "-", self.name.lower()).strip("-")


def most_people() -> int:
    return min(len(FIRST), len(LAST), len(TOWN_STEMS), len(WORK_STEMS), len(PET_NAMES))


@dataclass
class ProfilesTask:
    name = "profiles"
    num_people: int = 24
    qa_fraction: float = 0.5
    documents_per_person: int = 4
    trained_wordings: int = 2  # how many of the two training wordings per format the trained people get
    # trained completion-format questions as one "text" row, or as a "prompt" row with "format":
    # "completion" (the question whole, the answer alone predicted, as a chat row is trained)
    completion_rows: str = "text"
    # the fraction of documents that open with a sentence naming the person at its end, before any
    # fact ("This note is about Ilsa Dorn."), all facts then told with pronouns
    openers: float = 0.0
    # whether an opener also states the document's first fact in a relative clause after the name
    # ("This note is about Ilsa Dorn, who was born in Varnholt."), so the name is followed by a value
    opener_facts: bool = False
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.num_people <= most_people():
            raise RecipeError(f"task.num_people = {self.num_people}; use between 1 and {most_people()}")
        if not 0.0 <= self.qa_fraction < 1.0:
            raise RecipeError(f"task.qa_fraction = {self.qa_fraction}; use a fraction in [0, 1) (some people "
                              f"must be held out for evaluation)")
        if not 1 <= self.documents_per_person <= MOST_DOCUMENTS:
            raise RecipeError(f"task.documents_per_person = {self.documents_per_person}; use between 1 and "
                              f"{MOST_DOCUMENTS}")
        if self.trained_wordings not in (1, 2):
            raise RecipeError(f"task.trained_wordings = {self.trained_wordings}; use 1 or 2 (the training wordings "
                              f"per fact, direction and format)")
        if not 0.0 <= self.openers <= 1.0:
            raise RecipeError(f"task.openers = {self.openers}; use a fraction of the documents in [0, 1]")
        if not isinstance(self.opener_facts, bool):
            raise RecipeError(f"task.opener_facts = {self.opener_facts!r}; use true or false")
        if self.opener_facts and self.openers == 0:
            raise RecipeError("task.opener_facts = true changes the openers, but task.openers = 0 writes none; "
                              "set task.openers > 0 or opener_facts: false")
        if self.completion_rows not in ("text", "prompt"):
            raise RecipeError(f"task.completion_rows = {self.completion_rows!r}; use 'text' or 'prompt'")

    def people(self) -> list[Person]:
        """The invented people: distinct first names (so no name is a prefix of another), distinct
        last names, and fact values that no two people share."""
        rng = random.Random(self.seed)
        firsts, lasts = rng.sample(FIRST, self.num_people), rng.sample(LAST, self.num_people)
        towns = [stem + rng.choice(TOWN_ENDINGS) for stem in rng.sample(TOWN_STEMS, self.num_people)]
        works = [f"the {stem} {rng.choice(INSTITUTIONS)}" for stem in rng.sample(WORK_STEMS, self.num_people)]
        pet_names, species = rng.sample(PET_NAMES, self.num_people), rng.choices(SPECIES, k=self.num_people)
        pets = [f"{article(kind)} {kind} named {pet}" for pet, kind in zip(pet_names, species)]
        return [Person(name=f"{first} {last}", pronouns=pronouns,
                       facts={"birthplace": town, "founded": work, "pet": pet})
                for (first, pronouns), last, town, work, pet in zip(firsts, lasts, towns, works, pets)]

    def documents(self) -> dict[str, list[str]]:
        """Person name -> `documents_per_person` different paragraphs about them."""
        rng = random.Random(self.seed + 1)
        return {person.name: distinct_documents(person, self.documents_per_person, rng, self.openers,
                                                self.opener_facts)
                for person in self.people()}

    def build(self) -> TaskData:
        rng = random.Random(self.seed + 2)
        people = self.people()
        train = [{"text": text} for texts in self.documents().values() for text in texts]
        order = list(range(len(people)))
        rng.shuffle(order)
        # at least one person is held out, or there would be nothing to ask
        num_trained = min(round(self.qa_fraction * len(people)), len(people) - 1)
        qa = []
        for rank, index in enumerate(order):
            person = people[index]
            split = "train" if rank < num_trained else "eval"
            for question, answer, direction, fact, fmt in questions(person, split, self.trained_wordings):
                if split == "eval":
                    qa.append({"question": question, "answer": answer, "direction": direction, "fact": fact,
                               "format": fmt})
                elif fmt == "chat":
                    train.append({"prompt": question, "completion": answer})
                elif self.completion_rows == "prompt":
                    train.append({"prompt": question, "completion": answer, "format": "completion"})
                else:
                    train.append({"text": f"{question} {answer}"})
        rng.shuffle(train)
        return TaskData(train=train, qa=qa)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# Opening sentences that name the person at their end and state no fact: running text also puts
# names after a verb or a preposition, not only at the start of a sentence.
OPENERS = ("This note is about {name}.",
           "Among the people in these records is {name}.",
           "The subject of this page is {name}.",
           "Here is what the archive holds on {name}.")
# With `opener_facts`, the opener goes on after the name with a fact, the value after the person as
# in every other fact sentence.
RELATIVE_CLAUSES = {
    "birthplace": (", who was born in {value}.", ", who comes from {value}."),
    "founded": (", who founded {value}.", ", who went on to found {value}."),
    "pet": (", who keeps {value}.", ", who shares {their} house with {value}."),
}

MOST_DOCUMENTS = 12

# The committed demo corpus (`examples/profiles/`, written by `examples/profiles/make_corpus.py`):
# half the documents open with a sentence ending in the name, and ten paragraphs per person. On
# `recipes/profiles_mlmu.yaml` these took backward exact match from 0.44 / 0.54 to 0.74 / 0.67
# (seeds 0 / 1) at the same cost (BENCHMARKS.md, issue 18).
DEMO_OPENERS = 0.5
DEMO_DOCUMENTS_PER_PERSON = 10


def distinct_documents(person: Person, count: int, rng: random.Random, openers: float = 0.0,
                       opener_facts: bool = False) -> list[str]:
    """`count` different paragraphs about `person` (different sentence order or wording)."""
    texts: list[str] = []
    while len(texts) < count:
        text = document(person, rng, openers, opener_facts)
        if text not in texts:
            texts.append(text)
    return texts


def document(person: Person, rng: random.Random, openers: float = 0.0, opener_facts: bool = False) -> str:
    """One paragraph: a sentence per fact in a shuffled order, sometimes with a sentence without
    facts; the first sentence names the person, the later ones refer to them by pronoun. With
    probability `openers` the first sentence is an opener that ends with the name and states no fact,
    or, with `opener_facts`, goes on with the first fact in a relative clause."""
    attributes = list(ATTRIBUTES)
    rng.shuffle(attributes)
    sentences = []
    if openers and rng.random() < openers:  # no draw at 0: the documents of earlier corpora stay as they were
        opener = person.fill(rng.choice(OPENERS))
        if opener_facts:
            attribute = attributes.pop(0)
            opener = opener[:-1] + person.fill(rng.choice(RELATIVE_CLAUSES[attribute]), person.facts[attribute])
        sentences.append(opener)
    for attribute in attributes:
        sentences.append(person.fill(rng.choice(SENTENCES[attribute]), person.facts[attribute], named=not sentences))
    if rng.random() < 0.5:
        sentences.insert(rng.randint(1, len(sentences)), person.fill(rng.choice(FILLERS)))
    return " ".join(sentences)


def questions(person: Person, split: str, trained_wordings: int = 2) -> list[tuple[str, str, str, str, str]]:
    """(question, answer, direction, fact, format) for every fact, direction, format and `split`
    ("train" or "eval") wording of one person; of the "train" wordings only the first
    `trained_wordings`."""
    asked = []
    for attribute in ATTRIBUTES:
        value = person.facts[attribute]
        for direction in DIRECTIONS:
            answer = value if direction == "forward" else person.name
            fact = f"{person.slug()}/{attribute}/{direction}"
            for fmt in FORMATS:
                templates = QUESTIONS[attribute, direction][fmt][split]
                for template in templates[:trained_wordings] if split == "train" else templates:
                    asked.append((person.fill(template, value), answer, direction, fact, fmt))
    return asked
