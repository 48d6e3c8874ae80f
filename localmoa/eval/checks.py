"""Deterministic checkers: a reply and its task -> a Verdict, with no judge.

A numeric task is right when the extracted number equals the answer exactly; a
multiple-choice task when the extracted letter is the answer's; an instruction task
when every rule of its ``check`` holds on the reply (leading and trailing whitespace
stripped). The rules, with the value each takes:

    words: N          exactly N words (a word: a run of non-spaces with a letter or digit)
    max_words: N      at most N words
    max_chars: N      at most N characters
    contains: W       the word or phrase W (or each of a list), case-insensitive, whole words
    not_contains: W   none of the words or phrases, same matching
    no_commas: true   no comma anywhere
    starts_with: S    the reply begins with S (case-insensitive)
    ends_with: S      the reply ends with S (case-insensitive)
    json_keys: [K..]  the reply holds a JSON object (see answers.py) with every key K

A code task (kind "code", HumanEval) is right when its code passes the task's tests in
the sandbox (codecheck.py); that needs a CodeJudge, which exists only with --execute.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..answers import canonical, extract_choice, extract_json, extract_number, parse_number
from .tasks import Task
from .verdict import Verdict

if TYPE_CHECKING:
    from .codecheck import CodeJudge


def count_words(text: str) -> int:
    return sum(1 for token in text.split() if re.search(r"\w", token))


def _phrases(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _has(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.IGNORECASE) is not None


def _words(text: str, n: int) -> str | None:
    got = count_words(text)
    return None if got == n else f"{got} words, not {n}"


def _max_words(text: str, n: int) -> str | None:
    got = count_words(text)
    return None if got <= n else f"{got} words, more than {n}"


def _max_chars(text: str, n: int) -> str | None:
    return None if len(text) <= n else f"{len(text)} characters, more than {n}"


def _contains(text: str, value: Any) -> str | None:
    missing = [p for p in _phrases(value) if not _has(text, p)]
    return f"does not contain {', '.join(map(repr, missing))}" if missing else None


def _not_contains(text: str, value: Any) -> str | None:
    found = [p for p in _phrases(value) if _has(text, p)]
    return f"contains {', '.join(map(repr, found))}" if found else None


def _no_commas(text: str, value: Any) -> str | None:
    n = text.count(",")
    return f"{n} comma{'s' if n > 1 else ''}" if n and value else None


def _starts_with(text: str, prefix: str) -> str | None:
    return None if text.lower().startswith(prefix.lower()) else f"does not start with {prefix!r}"


def _ends_with(text: str, suffix: str) -> str | None:
    return None if text.lower().endswith(suffix.lower()) else f"does not end with {suffix!r}"


def _json_keys(text: str, keys: list[str]) -> str | None:
    found = extract_json(text)
    if found is None:
        return "no JSON object"
    missing = [k for k in keys if k not in found]
    return f"JSON object lacks {', '.join(map(repr, missing))}" if missing else None


@dataclass(frozen=True)
class Rule:
    """One instruction rule: the value it takes (``example`` shows it) and its test,
    which returns None when the reply passes and else why it fails."""

    name: str
    value: str  # "count" | "phrases" | "true" | "text" | "keys"
    example: str
    test: Callable[[str, Any], str | None]


RULES: dict[str, Rule] = {r.name: r for r in [
    Rule("words", "count", '"words": 5', _words),
    Rule("max_words", "count", '"max_words": 20', _max_words),
    Rule("max_chars", "count", '"max_chars": 80', _max_chars),
    Rule("contains", "phrases", '"contains": "blue"', _contains),
    Rule("not_contains", "phrases", '"not_contains": ["very"]', _not_contains),
    Rule("no_commas", "true", '"no_commas": true', _no_commas),
    Rule("starts_with", "text", '"starts_with": "Yes"', _starts_with),
    Rule("ends_with", "text", '"ends_with": "."', _ends_with),
    Rule("json_keys", "keys", '"json_keys": ["name", "age"]', _json_keys),
]}


def check_problem(check: Any) -> str | None:
    """What is wrong with a ``check`` object (a task file's), or None when it is valid."""
    known = ", ".join(RULES)
    if not isinstance(check, dict) or not check:
        return f'"check" must be an object of rules, e.g. {{"words": 5}}; rules: {known}'
    for name, value in check.items():
        rule = RULES.get(name)
        if rule is None:
            return f'unknown rule "{name}" in "check"; rules: {known}'
        if not _fits(rule.value, value):
            return f'rule "{name}" takes {_WANTS[rule.value]}, e.g. {rule.example}'
    return None


_WANTS = {"count": "a whole number from 1", "phrases": "a non-empty string or a list of them",
          "true": "true", "text": "a non-empty string", "keys": "a non-empty list of strings"}


def _fits(kind: str, value: Any) -> bool:
    def text(v: Any) -> bool:
        return isinstance(v, str) and bool(v.strip())

    if kind == "count":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if kind == "true":
        return value is True
    if kind == "text":
        return text(value)
    if kind == "phrases" and text(value):
        return True
    return isinstance(value, list) and bool(value) and all(text(v) for v in value)


def score(task: Task, reply: str, judge: CodeJudge | None = None) -> Verdict:
    """The verdict on ``reply`` for ``task``. An empty reply is never right (it would meet
    "at most N words"). A code task needs ``judge`` to run its tests (else it is wrong,
    its code not run)."""
    if not reply.strip():
        return Verdict(None, False, "empty reply", status="error" if task.kind == "code"
                       else None)
    if task.kind == "code":
        if judge is None:
            return Verdict(None, False, "code not run: --execute not given")
        return judge.verdict(task, reply)
    if task.kind == "number":
        value = extract_number(reply)
        if value is None:
            return Verdict(None, False, "no number in the reply")
        expected = parse_number(task.answer or "")
        right = value == expected
        return Verdict(canonical(value), right, "" if right else f"expected {task.answer}")
    if task.kind == "choice":
        letter = extract_choice(reply, task.choices)
        if letter is None:
            return Verdict(None, False, "no choice in the reply")
        right = letter == task.answer
        return Verdict(letter, right, "" if right else f"expected {task.answer}")
    text = reply.strip()
    rules = task.check or {}
    failures = [why for name, value in rules.items()
                if (why := RULES[name].test(text, value)) is not None]
    extracted: Any = extract_json(text) if "json_keys" in rules else text
    return Verdict(extracted, not failures, "; ".join(failures))


def vote_key(verdict: Verdict) -> str | None:
    """What two answers must share to count as the same vote: the canonical number, the
    letter, the JSON object, or the text with case and spacing ignored."""
    value = verdict.extracted
    if value is None:
        return None
    if isinstance(value, str):
        return " ".join(value.lower().split())
    return json.dumps(value, sort_keys=True)
