"""Answer extraction (localmoa.answers.py): the final number, the choice letter, the
first JSON object. Pure: no model."""

from __future__ import annotations

from fractions import Fraction

import pytest

from localmoa.answers import (
    canonical,
    extract_choice,
    extract_json,
    extract_number,
    parse_number,
)


@pytest.mark.parametrize(("reply", "expected"), [
    ("42", "42"),
    ("17 + 25 = 42.", "42"),
    ("Answer: 9.9", "9.9"),
    ("Answer: 47 + 385 = 432", "432"),  # the marker's line writes the sum out
    ("The answer is 3 + 4 = 7.\nThat was easy, 1 step.", "7"),
    ("The answer is 9.90.", "9.9"),
    ("the final answer is: 12", "12"),
    ("**Answer:** 36", "36"),
    ("**Final answer**: 7", "7"),
    ("Answer = -12", "-12"),
    ("x = -3.5", "-3.5"),
    ("It falls by −4 degrees", "-4"),  # a Unicode minus
    ("5-3=2", "2"),  # a minus between numbers is no sign
    ("There are 1,234 apples.", "1234"),
    ("It costs $1,200.50 in all", "1200.5"),
    ("Answer: 3/4", "0.75"),
    ("one third is 1/3", "1/3"),
    ("about .5 of it", "0.5"),
    ("Answer: 42. I hope this answer helps.", "42"),  # the last marker has no number
    ("The answer of 3 is wrong; it is 26", "26"),  # "answer of" is no marker
    ("The answer is 26.\n\nThe answer of 3 was only 1.", "26"),
    ("The answer is 26 because 13 + 13 = 26 and not 27", "26"),
    ("9.9 is larger than 9.11", "9.11"),  # no marker: the last number, as documented
    ("Answer:\n\n**105**", "105"),
    ("3rd place and 2x faster, then 8", "8"),  # numbers glued to words are not numbers
    ("numbers 3,4,5", "5"),
    ("Two plus two is equal to four.", "4"),  # no digits: the last number word
    ("It is twenty-five", "25"),
    ("Ninety nine", "99"),
    ("one of them is 7", "7"),  # digits win over words
])
def test_extract_number(reply: str, expected: str) -> None:
    value = extract_number(reply)
    assert value is not None and canonical(value) == expected


@pytest.mark.parametrize("reply", ["", "no number here", "version v2", "1/0", "Answer: ?",
                                   "someone is often alone"])
def test_extract_number_finds_none(reply: str) -> None:
    assert extract_number(reply) is None


def test_numbers_compare_by_value() -> None:
    assert extract_number("Answer: 9.90") == extract_number("9.9") == Fraction(99, 10)
    assert extract_number("0.75") == parse_number("3/4")
    assert extract_number("1,000") == parse_number("1000")
    assert extract_number("9.11") != parse_number("9.9")


@pytest.mark.parametrize(("text", "value"), [
    ("42", Fraction(42)), ("-3.5", Fraction(-7, 2)), ("1,234", Fraction(1234)),
    (" 3/4 ", Fraction(3, 4)), ("+7", Fraction(7)), ("0.1", Fraction(1, 10)),
    ("4 2", None), ("42 apples", None), ("abc", None), ("", None), ("1/0", None)])
def test_parse_number_takes_one_number_only(text: str, value: Fraction | None) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize(("value", "written"), [
    (Fraction(42), "42"), (Fraction(-7, 2), "-3.5"), (Fraction(99, 10), "9.9"),
    (Fraction(-1, 20), "-0.05"), (Fraction(1, 3), "1/3"), (Fraction(0), "0"),
    (Fraction(1234567, 1000), "1234.567")])
def test_canonical(value: Fraction, written: str) -> None:
    assert canonical(value) == written


CHOICES = ["giraffe", "horse", "elephant", "camel"]


@pytest.mark.parametrize(("reply", "letter"), [
    ("B", "B"),
    ("B.", "B"),
    ("(C)", "C"),
    ("D) camel", "D"),
    ("A. giraffe", "A"),
    ("**B**", "B"),
    ("The answer is D. camel", "D"),  # the marker wins over the opening letter
    ("A. giraffe\nThe answer is D. camel", "D"),
    ("Answer: (B)", "B"),
    ("I pick (C) because it is big", "C"),
    ("It is a giraffe.", "A"),  # the text of exactly one choice
    ("The Elephant, surely", "C"),
    ("A dog is not on the list", None),  # "A" opening a sentence is no choice
    ("giraffe or camel", None),  # two choices named: no answer
    ("Maybe (A), or (B)?", None),  # two letters in brackets: no answer
    ("I do not know", None),
    ("E", None),  # not a letter of these choices
    ("A. giraffe\nB. horse\nC. elephant", None),  # the choices copied out: no answer
    ("A. giraffe\nIt is the tallest.", "A"),
])
def test_extract_choice(reply: str, letter: str | None) -> None:
    assert extract_choice(reply, CHOICES) == letter


def test_extract_choice_letters_follow_the_number_of_choices() -> None:
    assert extract_choice("E", ["a", "b", "c", "d", "e"]) == "E"
    assert extract_choice("C", ["yes", "no"]) is None


@pytest.mark.parametrize(("reply", "found"), [
    ('{"name": "Rex", "colour": "red"}', {"name": "Rex", "colour": "red"}),
    ('Here you go: {"a": 1} and {"b": 2}', {"a": 1}),
    ('```json\n{"title": "Dune", "year": 1965}\n```', {"title": "Dune", "year": 1965}),
    ('Sure! {"x": } then ```\n{"y": [1, 2]}\n```', {"y": [1, 2]}),
    ('{broken {"ok": true}', {"ok": True}),
    ('{"outer": {"inner": 1}}', {"outer": {"inner": 1}}),
    ("[1, 2, 3]", None),  # an array is not an object
    ("no json here", None),
    ('{"unterminated": 1', None),
])
def test_extract_json(reply: str, found: dict | None) -> None:
    assert extract_json(reply) == found
