"""The deterministic checkers (localmoa/eval/checks.py) and the vote (consensus.majority). Pure."""

from __future__ import annotations

from typing import Any

import pytest

from localmoa.consensus import majority
from localmoa.eval.checks import RULES, Verdict, check_problem, count_words, score, vote_key
from localmoa.eval.tasks import Task


def number(answer: str) -> Task:
    return Task(id="t", set="file", prompt="?", kind="number", answer=answer)


def choice(answer: str) -> Task:
    return Task(id="t", set="file", prompt="?", kind="choice", answer=answer,
                choices=("Rome", "Oslo", "Lima"))


def rules(**check: Any) -> Task:
    return Task(id="t", set="file", prompt="?", kind="check", check=check)


@pytest.mark.parametrize(("task", "reply", "extracted", "correct"), [
    (number("42"), "6 x 7 = 42", "42", True),
    (number("9.9"), "Answer: 9.90", "9.9", True),
    (number("9.9"), "Answer: 9.11", "9.11", False),
    (number("0.75"), "It is 3/4.", "0.75", True),
    (number("-5"), "Answer: -5", "-5", True),
    (number("1234"), "That makes 1,234 in all.", "1234", True),
    (number("42"), "I cannot say", None, False),
    (number("42"), "   ", None, False),
    (choice("A"), "A", "A", True),
    (choice("A"), "The answer is (B)", "B", False),
    (choice("C"), "Lima, of course", "C", True),
    (choice("A"), "Hmm", None, False),
    (rules(words=3), "Red green blue.", "Red green blue.", True),
    (rules(words=3), "  Red, green - and blue  ", "Red, green - and blue", False),
    (rules(max_words=3), "Red green", "Red green", True),
    (rules(max_words=3), "", None, False),  # an empty reply is never right
    (rules(max_chars=5), "Hello", "Hello", True),
    (rules(max_chars=4), "Hello", "Hello", False),
    (rules(contains="blue"), "The sky is Blue today", "The sky is Blue today", True),
    (rules(contains="blue"), "The sky is bluest", "The sky is bluest", False),  # whole words
    (rules(contains=["sky", "sea"]), "sky and sea", "sky and sea", True),
    (rules(contains=["sky", "sea"]), "sky only", "sky only", False),
    (rules(not_contains="very"), "It is very big", "It is very big", False),
    (rules(not_contains=["very"]), "It is everything", "It is everything", True),
    (rules(no_commas=True), "No commas here.", "No commas here.", True),
    (rules(no_commas=True), "One, two", "One, two", False),
    (rules(starts_with="Because"), "because it is warm", "because it is warm", True),
    (rules(starts_with="Because"), "It is warm", "It is warm", False),
    (rules(ends_with="."), "Done.", "Done.", True),
    (rules(json_keys=["name", "age"]), 'Sure: {"name": "Al", "age": 3}',
     {"name": "Al", "age": 3}, True),
    (rules(json_keys=["name", "age"]), '{"name": "Al"}', {"name": "Al"}, False),
    (rules(json_keys=["name"]), "name: Al", None, False),
    (rules(words=2, no_commas=True), "Red, blue", "Red, blue", False),
])
def test_score(task: Task, reply: str, extracted: Any, correct: bool) -> None:
    verdict = score(task, reply)
    assert verdict.extracted == extracted
    assert verdict.correct is correct
    assert (verdict.why == "") is correct  # a wrong answer always says why


def test_score_says_why() -> None:
    assert score(number("42"), "41").why == "expected 42"
    assert score(rules(words=3), "one two").why == "2 words, not 3"
    assert score(rules(words=2, no_commas=True), "a, b, c").why == "3 words, not 2; 2 commas"
    assert "lacks 'age'" in score(rules(json_keys=["name", "age"]), '{"name": 1}').why


@pytest.mark.parametrize(("text", "words"), [
    ("", 0), ("one", 1), ("one two  three", 3), ("Hello, world.", 2), ("a - b", 2),
    ("it's well-known", 2), ("\n one\ttwo \n", 2)])
def test_count_words(text: str, words: int) -> None:
    assert count_words(text) == words


@pytest.mark.parametrize(("check", "fragment"), [
    ({"words": 3}, None),
    ({"contains": ["a", "b"], "no_commas": True}, None),
    ({}, '"check" must be an object of rules'),
    ([1], '"check" must be an object of rules'),
    ({"wordz": 3}, 'unknown rule "wordz"'),
    ({"words": 0}, 'rule "words" takes a whole number from 1, e.g. "words": 5'),
    ({"words": "3"}, 'rule "words" takes a whole number'),
    ({"words": True}, 'rule "words" takes a whole number'),
    ({"no_commas": False}, 'rule "no_commas" takes true'),
    ({"contains": ""}, 'rule "contains" takes a non-empty string or a list of them'),
    ({"contains": []}, 'rule "contains" takes a non-empty string or a list of them'),
    ({"json_keys": "name"}, 'rule "json_keys" takes a non-empty list of strings'),
    ({"starts_with": 5}, 'rule "starts_with" takes a non-empty string'),
])
def test_check_problem(check: Any, fragment: str | None) -> None:
    problem = check_problem(check)
    assert (problem is None) if fragment is None else (fragment in (problem or ""))


def test_every_rule_has_a_valid_example() -> None:
    import json

    for rule in RULES.values():
        assert check_problem(json.loads("{" + rule.example + "}")) is None, rule.name


@pytest.mark.parametrize(("verdict", "key"), [
    (Verdict("9.9", True), "9.9"), (Verdict("B", False), "b"),
    (Verdict("  Red  Green ", True), "red green"), (Verdict(None, False), None),
    (Verdict({"b": 1, "a": 2}, True), '{"a": 2, "b": 1}')])
def test_vote_key(verdict: Verdict, key: str | None) -> None:
    assert vote_key(verdict) == key


@pytest.mark.parametrize(("keys", "winner"), [
    (["42", "41", "42"], 0),  # the majority, picked at its first member
    (["41", "42", "42"], 1),
    (["41", "42", "43"], 0),  # all tied: the earliest agent
    (["41", "42", "42", "41"], 0),  # two tied groups: the one that came first
    (["42", "41", "41", "42"], 0),
    ([None, "7", None, "8", "8"], 3),  # None never votes
    ([None, "7"], 1),
    ([None, None], None),
    ([], None),
])
def test_majority_and_its_tie_rule(keys: list[str | None], winner: int | None) -> None:
    found = majority(keys)
    assert (found[0] if found is not None else None) == winner
