"""Eval tasks: what is asked and how its answer is known, and the shipped task sets.

Every shipped set but `mcq` is generated from a seed, so there are as many tasks as
wanted, none seen in training, and the same seed gives the same tasks. Answers are
right by construction (computed, never written by hand), except the `mcq` facts
(facts.py). Sets:

- ``arith``: sums, differences and products of whole numbers ("What is 47 + 385?")
- ``compare``: which of two decimals is larger or smaller ("Which is larger, 9.11 or 9.9?")
- ``word``: short word problems with a whole-number answer
- ``mcq``: multiple-choice facts, the choices shuffled under A-D (at most len(FACTS))
- ``format``: instruction following checked by rules (exact word count, JSON keys,
  a required word, no commas, a first word, a length limit)
- ``mixed``: the five in turn (the default)
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from ..answers import canonical, letters
from .facts import FACTS

#: Tasks a shipped set gives when --limit is not given.
DEFAULT_LIMIT = 50
#: The seed of the shipped sets when --seed is not given.
DEFAULT_SEED = 1
NUMBER_SUFFIX = "Give the final answer as 'Answer: <number>'."
CHOICE_SUFFIX = "Answer with the letter of the correct choice."


@dataclass(frozen=True)
class Task:
    """One question. ``kind`` says how it is scored: "number" (``answer`` is a number,
    written canonically), "choice" (``answer`` is the letter of one of ``choices``) or
    "check" (``check`` holds the rules the reply must meet; see checks.py)."""

    id: str
    set: str
    prompt: str
    kind: str
    answer: str | None = None
    choices: tuple[str, ...] = ()
    check: dict[str, Any] | None = field(default=None, hash=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["choices"] = list(self.choices)
        return data


def choice_prompt(question: str, choices: tuple[str, ...] | list[str]) -> str:
    """A question with its choices listed under letters, as the model sees it."""
    lines = [f"{letter}. {text}" for letter, text in zip(letters(len(choices)), choices,
                                                          strict=True)]
    return "\n".join([question.rstrip(), *lines, CHOICE_SUFFIX])


def _number_task(name: str, k: int, question: str, answer: Fraction | int) -> Task:
    return Task(id=f"{name}-{k}", set=name, prompt=f"{question} {NUMBER_SUFFIX}",
                kind="number", answer=canonical(Fraction(answer)))


def arith(rng: random.Random) -> Iterator[Task]:
    for k in itertools.count(1):
        form = rng.randrange(4)
        if form == 0:
            a, b = rng.randint(10, 999), rng.randint(10, 999)
            yield _number_task("arith", k, f"What is {a} + {b}?", a + b)
        elif form == 1:
            a, b = rng.randint(10, 999), rng.randint(10, 999)
            yield _number_task("arith", k, f"What is {a} - {b}?", a - b)
        elif form == 2:
            a, b = rng.randint(2, 99), rng.randint(2, 19)
            yield _number_task("arith", k, f"What is {a} × {b}?", a * b)
        else:
            a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(1, 50)
            yield _number_task("arith", k, f"What is {a} + {b} - {c}?", a + b - c)


def compare(rng: random.Random) -> Iterator[Task]:
    """Two decimals with the same whole part, one with more digits: the classic trap
    (9.11 looks larger than 9.9) whichever way round the answer falls."""
    for k in itertools.count(1):
        whole = rng.randint(0, 20)
        one = Fraction(whole) + Fraction(rng.randint(1, 9), 10)
        two = Fraction(whole) + Fraction(rng.randint(1, 99), 100)
        while two == one or (two * 10).denominator == 1:  # 9.50 is written 9.5
            two = Fraction(whole) + Fraction(rng.randint(1, 99), 100)
        pair = [one, two]
        rng.shuffle(pair)
        larger = rng.random() < 0.5
        word, answer = ("larger", max(pair)) if larger else ("smaller", min(pair))
        question = f"Which is {word}, {canonical(pair[0])} or {canonical(pair[1])}?"
        yield _number_task("compare", k, question, answer)


NAMES = ("Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo")
ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books")
#: (template, answer from the numbers); the numbers are a, b, c, drawn per template.
WORD_PROBLEMS: tuple[tuple[str, Callable[[int, int, int], int], tuple[int, int],
                           tuple[int, int]], ...] = (
    ("{name} has {a} {items}. {name} buys {b} more. How many {items} does {name} have now?",
     lambda a, b, c: a + b, (3, 60), (2, 40)),
    ("{name} had {a} {items} and gave {b} of them to a friend. How many {items} does "
     "{name} have left?", lambda a, b, c: a - b, (20, 90), (1, 19)),
    ("A box holds {a} {items}. How many {items} are there in {b} boxes?",
     lambda a, b, c: a * b, (2, 12), (2, 12)),
    ("{name} shares {ab} {items} equally among {b} friends. How many {items} does each "
     "friend get?", lambda a, b, c: a, (2, 12), (2, 9)),
    ("A notebook costs {a} dollars. How many dollars do {b} notebooks cost?",
     lambda a, b, c: a * b, (2, 15), (2, 9)),
    ("A train travels {a} kilometres every hour. How many kilometres does it travel in "
     "{b} hours?", lambda a, b, c: a * b, (20, 90), (2, 6)),
    ("There are {a} children on a bus. At the stop, {b} get off and {c} get on. How many "
     "children are on the bus now?", lambda a, b, c: a - b + c, (15, 40), (1, 14)),
    ("{name} reads {a} pages every day. How many pages does {name} read in {b} days?",
     lambda a, b, c: a * b, (5, 30), (2, 9)),
)


def word(rng: random.Random) -> Iterator[Task]:
    for k in itertools.count(1):
        template, solve, a_range, b_range = WORD_PROBLEMS[rng.randrange(len(WORD_PROBLEMS))]
        a, b, c = rng.randint(*a_range), rng.randint(*b_range), rng.randint(1, 20)
        question = template.format(name=rng.choice(NAMES), items=rng.choice(ITEMS),
                                   a=a, b=b, c=c, ab=a * b)
        yield _number_task("word", k, question, solve(a, b, c))


def mcq(rng: random.Random) -> Iterator[Task]:
    order = list(range(len(FACTS)))
    rng.shuffle(order)
    for k, index in enumerate(order, start=1):
        question, right, wrong = FACTS[index]
        choices = [right, *wrong]
        rng.shuffle(choices)
        yield Task(id=f"mcq-{k}", set="mcq", prompt=choice_prompt(question, choices),
                   kind="choice", answer=letters(4)[choices.index(right)],
                   choices=tuple(choices))


TOPICS = ("the sea", "autumn", "coffee", "a cat", "the moon", "trains", "bread", "rain",
          "music", "mountains", "a library", "bicycles")
KEY_PAIRS = (("name", "colour"), ("title", "year"), ("city", "country"),
             ("animal", "sound"), ("fruit", "price"), ("author", "book"))
REQUIRED_WORDS = ("blue", "quiet", "morning", "green", "window", "happy")
FIRST_WORDS = ("Because", "Yes", "Honestly", "Today")


def _format_task(rng: random.Random, k: int) -> Task:
    topic = rng.choice(TOPICS)
    form = rng.randrange(6)
    check: dict[str, Any]
    if form == 0:
        n = rng.randint(3, 8)
        prompt, check = (f"Write exactly {n} words about {topic}. Reply with those words "
                         "only.", {"words": n})
    elif form == 1:
        one, two = rng.choice(KEY_PAIRS)
        prompt = (f'Reply with only a JSON object with the keys "{one}" and "{two}", '
                  f"about {topic}.")
        check = {"json_keys": [one, two]}
    elif form == 2:
        required = rng.choice(REQUIRED_WORDS)
        prompt, check = (f'Write one sentence about {topic} that uses the word "{required}".',
                         {"contains": required})
    elif form == 3:
        prompt, check = (f"Describe {topic} in one sentence without using any commas.",
                         {"no_commas": True})
    elif form == 4:
        first = rng.choice(FIRST_WORDS)
        prompt, check = (f'Start your reply with the word "{first}". Why do people like '
                         f"{topic}?", {"starts_with": first})
    else:
        n = rng.randint(5, 12)
        prompt, check = f"Describe {topic} in at most {n} words.", {"max_words": n}
    return Task(id=f"format-{k}", set="format", prompt=prompt, kind="check", check=check)


def format_(rng: random.Random) -> Iterator[Task]:
    for k in itertools.count(1):
        yield _format_task(rng, k)


#: The shipped generated sets, in the order `mixed` takes them in turn.
GENERATORS: dict[str, Callable[[random.Random], Iterator[Task]]] = {
    "arith": arith, "compare": compare, "word": word, "mcq": mcq, "format": format_}
SET_NAMES = (*GENERATORS, "mixed")


def shipped(name: str, seed: int = DEFAULT_SEED, limit: int | None = None) -> list[Task]:
    """The first ``limit`` tasks (default DEFAULT_LIMIT) of a shipped set; each set draws
    from its own generator seeded by (seed, set name), so sets do not shift each other."""
    wanted = DEFAULT_LIMIT if limit is None else limit
    if name != "mixed":
        stream = GENERATORS[name](random.Random(f"{seed}:{name}"))
        return [task for _, task in zip(range(wanted), stream, strict=False)]
    streams = [g(random.Random(f"{seed}:{n}")) for n, g in GENERATORS.items()]
    out: list[Task] = []
    while streams and len(out) < wanted:
        for stream in list(streams):
            if len(out) == wanted:
                break
            task = next(stream, None)
            if task is None:
                streams.remove(stream)
            else:
                out.append(task)
    return out
