"""When two answers agree, for the selectors: the rules of the consensus short-cut and
of `localmoa eval`'s extraction, strongest first.

1. code: when the query asks for a Python function (coderun/extract.entry_point) and
   the answer's code defines it, its behaviour on the prompt's example calls (when
   model-written code may run: ``behaviour``), else its text with white space
   collapsed;
2. JSON: an answer that opens with a JSON object (or a fenced ```json block): the
   object, keys sorted;
3. a short answer (consensus.SHORT_WORDS): its final number, else its choice letter;
4. the normalised text (consensus.normalise).

An answer with nothing to compare (empty) has no key and agrees with nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from .. import answers, consensus
from ..coderun import examples
from ..coderun.extract import defines, entry_point, extract_code

#: behaviour(code, entry_point) -> a key from the code's outputs, or None.
Behaviour = Callable[[str, str], "str | None"]


def _json_key(text: str) -> str | None:
    stripped = text.lstrip()
    if not (stripped.startswith("{") or stripped.startswith("```json")):
        return None
    found = answers.extract_json(text)
    return None if found is None else "json:" + json.dumps(found, sort_keys=True)


def answer_key(text: str, query: str, behaviour: Behaviour | None = None) -> str | None:
    """The key ``text`` votes with, answering ``query`` (see the module's rules)."""
    if not text.strip():
        return None
    name = entry_point(query)
    if name is not None:
        code = extract_code(text, name)
        if code is not None and defines(code, name):
            if behaviour is not None:
                return behaviour(code, name)
            return "code:" + examples.text_key(code)
    found = _json_key(text)
    if found is not None:
        return found
    if consensus.is_short(text):
        number = consensus.final_number(text)
        if number is not None:
            return "number:" + number
        letter = consensus.choice(text)
        if letter is not None:
            return "choice:" + letter
    return "text:" + consensus.normalise(text)


def keys_of(
    texts: Sequence[str], query: str, behaviour: Behaviour | None = None
) -> list[str | None]:
    return [answer_key(t, query, behaviour) for t in texts]
