"""Answer extraction: the final number, the choice letter, the first JSON object. Used
by `localmoa eval` to score answers and by the consensus short-cut to compare them.

Each function takes a model's raw reply and returns what it answered, or None when
it answered nothing recognisable. The rules (docs/eval.md says the same):

- number: the first number after the last "answer" marker ("Answer: 42", "the answer
  is 42", "final answer = 42"; "answer" followed by is, was, would be, ":" or "="), or,
  when the marker's line writes a sum out ("Answer: 47 + 385 = 432"), the first number
  after its last "="; else the last number in the reply. Thousands separators (1,234), signs (-3.5),
  decimals (.5) and fractions (3/4) are read; values compare exactly, so 9.9 equals
  9.90 and 0.75 equals 3/4. A reply with no number in digits is read for number words
  ("four", "twenty-five"; the last one).
- choice: the letter after the last "answer" marker, else a letter opening the reply
  ("B", "B.", "(B)", "B)"; not when the reply copies several choices out line by
  line), else a single distinct "(B)" anywhere, else the text of exactly one choice
  appearing in the reply.
- JSON: the first JSON object in the reply; a fenced ```json block is looked at first.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from typing import Any

# A number not glued to a word or to another number: 1,234.5 | -3 | 0.75 | .5 | 3/4
_NUMBER = re.compile(
    r"(?<![\w./])"
    r"(?P<sign>[-−+]?)"
    r"(?P<body>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:/(?P<den>\d+(?!\.\d)))?"
    r"(?!\w|\.\d)")
# "Answer: 42", "the answer is 42", "**Final answer**: 42"; not "the answer of 3".
_MARKER = re.compile(r"\b(?:final\s+)?answer\b[*_]*\s*(?:is|was|would\s+be|:|=)[\s*_:]*",
                     re.IGNORECASE)
#: Powers of ten a value may need to be written as a plain decimal.
_MAX_DECIMALS = 12


def parse_number(text: str) -> Fraction | None:
    """``text`` as an exact value when it is one number (as a task file writes its
    answer: 42, "-3.5", "1,234", "3/4"), else None."""
    found = list(_NUMBER.finditer(text.strip()))
    if len(found) != 1 or found[0].span() != (0, len(text.strip())):
        return None
    return _value(found[0])


def _value(match: re.Match[str]) -> Fraction | None:
    body = match["body"].replace(",", "")
    value = Fraction(body)
    if match["den"] is not None:
        if int(match["den"]) == 0:
            return None
        value /= int(match["den"])
    return -value if match["sign"] in ("-", "−") else value


def extract_number(reply: str) -> Fraction | None:
    """The number a reply ends on (see the module's rules), or None."""
    markers = list(_MARKER.finditer(reply))
    if markers:
        after = reply[markers[-1].end():]
        line = after.split("\n", 1)[0]
        if "=" in line:  # "Answer: 47 + 385 = 432": the result, not the first term
            after = line.rsplit("=", 1)[1]
        for match in _NUMBER.finditer(after):
            value = _value(match)
            if value is not None:
                return value
    for match in reversed(list(_NUMBER.finditer(reply))):
        value = _value(match)
        if value is not None:
            return value
    words = list(_NUMBER_WORD.finditer(reply))
    return _word_value(words[-1]) if words else None


_UNITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
          "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
          "seventeen", "eighteen", "nineteen")
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
# "four", "twenty", "twenty-five": only read when the reply holds no number in digits
_NUMBER_WORD = re.compile(
    rf"\b(?:(?P<tens>{'|'.join(_TENS)})(?:[- ](?P<ones>{'|'.join(_UNITS[1:10])}))?"
    rf"|(?P<unit>{'|'.join(_UNITS)}))\b", re.IGNORECASE)


def _word_value(match: re.Match[str]) -> Fraction:
    if match["unit"]:
        return Fraction(_UNITS.index(match["unit"].lower()))
    ones = _UNITS.index(match["ones"].lower()) if match["ones"] else 0
    return Fraction(20 + 10 * _TENS.index(match["tens"].lower()) + ones)


def canonical(value: Fraction) -> str:
    """A value written the one way: 9.9, 1234, -3.5; 1/3 where no decimal is exact."""
    if value.denominator == 1:
        return str(value.numerator)
    for places in range(1, _MAX_DECIMALS + 1):
        scaled = value * 10**places
        if scaled.denominator == 1:
            sign = "-" if scaled < 0 else ""
            digits = str(abs(scaled.numerator)).rjust(places + 1, "0")
            return f"{sign}{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")
    return f"{value.numerator}/{value.denominator}"


def letters(count: int) -> str:
    """The letters of ``count`` choices: A, B, C ..."""
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:count]


def extract_choice(reply: str, choices: tuple[str, ...] | list[str]) -> str | None:
    """The letter of the choice a reply picks (see the module's rules), or None."""
    valid = letters(len(choices))
    found = choice_letter(reply, valid)
    if found is not None:
        return found
    named = [valid[i] for i, text in enumerate(choices)
             if re.search(rf"(?<!\w){re.escape(text.strip())}(?!\w)", reply, re.IGNORECASE)]
    return named[0] if len(named) == 1 else None


def choice_letter(reply: str, valid: str) -> str | None:
    """The letter among ``valid`` a reply names: after an answer marker, opening the
    reply, or alone in brackets (the module's rules without the choices' texts)."""
    letter = rf"\(?([{valid}])\)?(?![\w'])"
    markers = list(_MARKER.finditer(reply))
    if markers:
        found = re.match(letter, reply[markers[-1].end():].lstrip("*_ "))
        if found:
            return found[1]
    opening = re.match(rf"\W*{letter}", reply.strip())
    listed = set(re.findall(rf"^\W*([{valid}])[.)]", reply, re.MULTILINE))
    # not "A dog is ...", nor the choices copied out line by line
    if opening and not re.match(rf"\W*[{valid}]\s+\w", reply.strip()) and len(listed) < 2:
        return opening[1]
    bracketed = set(re.findall(rf"\(([{valid}])\)", reply))
    return bracketed.pop() if len(bracketed) == 1 else None


def extract_json(reply: str) -> dict[str, Any] | None:
    """The first JSON object of a reply (a fenced ```json block first), or None."""
    decoder = json.JSONDecoder()
    fenced = [m[1] for m in re.finditer(r"```(?:json)?\s*\n?(.*?)```", reply, re.DOTALL)]
    for text in [*fenced, reply]:
        for start in [m.start() for m in re.finditer(r"\{", text)]:
            try:
                value, _ = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None
