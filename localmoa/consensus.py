"""When proposers agree, and which answer a vote picks.

Two answers agree when their *keys* are equal. The key of an answer is, in order:

1. its normalised text (case folded, Markdown emphasis, quotes and surrounding
   punctuation dropped, white space collapsed): "9.9" and "**9.9.**" agree;
2. for a short answer (at most ``SHORT_WORDS`` words), its final number
   ("The answer is 42." and "42") or its choice letter ("B", "(B)", "Answer: B"), read
   by the rules `localmoa eval` scores with (answers.py);

Answers agree when every one has the same normalised text, or every one is short and
they all give the same final number, or the same choice. Failed agents do not vote; at
least two answers must agree.

``vote`` is the rule of ``aggregate: never``: the answer whose key the most agents
share, ties going to the agent listed first; when no two share a key, the first
agent's answer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from . import answers

#: An answer of at most this many words is short: its final number or choice counts.
SHORT_WORDS = 40

_EMPHASIS = re.compile(r"[*_`\"'“”‘’]")


def normalise(text: str) -> str:
    """Case folded, without Markdown emphasis or quotes, white space collapsed, and no
    punctuation at either end."""
    plain = _EMPHASIS.sub("", text).casefold()
    return " ".join(plain.split()).strip(" .,;:!?")


def final_number(text: str) -> str | None:
    """The number the answer ends on, written one way ("1,234.50" -> "1234.5"; the
    rules of answers.extract_number)."""
    value = answers.extract_number(text)
    return None if value is None else answers.canonical(value)


def choice(text: str) -> str | None:
    """A choice letter A-E the answer gives: "B", "(B) Paris", "The answer is B"; not
    the article of "A cat sleeps" (answers.choice_letter)."""
    return answers.choice_letter(text, "ABCDE")


def is_short(text: str) -> bool:
    return len(text.split()) <= SHORT_WORDS


@dataclass(frozen=True)
class Agreement:
    """Whether answers agree, by which rule, and how many."""

    agree: bool
    count: int  # answers that share the winning key
    of: int  # answers that voted
    rule: str  # "same text" | "same final number" | "same choice" | "majority" | ...
    index: int  # which answer stands for them (the first with the winning key)

    def summary(self) -> str:
        return f"{self.count}/{self.of} agree ({self.rule})"


def _keys(answers: Sequence[str]) -> list[tuple[str, list[str | None]]]:
    """The keys to try, strongest first: the text, then for short answers the final
    number and the choice."""
    keys: list[tuple[str, list[str | None]]] = [("same text", [normalise(a) or None
                                                               for a in answers])]
    if all(is_short(a) for a in answers):
        keys.append(("same final number", [final_number(a) for a in answers]))
        keys.append(("same choice", [choice(a) for a in answers]))
    return keys


def agreement(answers: Sequence[str]) -> Agreement:
    """Whether every answer agrees with every other (two at least)."""
    if len(answers) < 2:
        return Agreement(False, len(answers), len(answers), "too few answers", 0)
    for rule, keys in _keys(answers):
        if keys[0] is not None and all(k == keys[0] for k in keys):
            return Agreement(True, len(answers), len(answers), rule, 0)
    return Agreement(False, 0, len(answers), "no agreement", 0)


def majority(keys: Sequence[str | None]) -> tuple[int, int] | None:
    """The largest group of equal keys: (index of its first member, its size). A None key
    never votes; a tie goes to the group whose first member comes first. None when no
    key is given."""
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None
    top = max(counts.values())
    first = next(i for i, k in enumerate(keys) if k is not None and counts[k] == top)
    return first, top


def vote(answers: Sequence[str]) -> Agreement:
    """The answer most agents share (see the module's rule)."""
    if not answers:
        raise ValueError("no answers to vote on")
    best = Agreement(False, 1, len(answers), "first answer (no two agree)", 0)
    for rule, keys in _keys(answers):
        found = majority(keys)
        if found is None or found[1] < 2 or found[1] <= best.count:
            continue
        index, top = found
        best = Agreement(top == len(answers), top, len(answers), f"majority, {rule}", index)
    return best
