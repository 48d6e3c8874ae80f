"""Votes over code compare behaviour, not text.

Two code answers agree when they give the same outputs on the inputs of the prompt's
examples: the calls of the function in its docstring (``>>> f(3)``, ``f(3) == 9``,
``f(3) ➞ 9``), kept only when every argument is a literal. Each candidate runs once in
the sandbox on all of them; its key is the list of ``repr`` of each output ("raises
ValueError" for a call that raised). A candidate that cannot run (no code, a syntax
error, a timeout) has no key and does not vote. A prompt without usable examples falls
back to the code's text, white space collapsed.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

#: Most example calls taken from one prompt.
MAX_EXAMPLES = 12
#: Longest repr of one output that is compared (longer ones are cut).
MAX_REPR_CHARS = 300

HARNESS = """

__examples__ = {examples!r}
__outputs__ = []
for __call__ in __examples__:
    try:
        __outputs__.append(repr(eval(__call__))[:{limit}])
    except BaseException as __error__:  # what a call raises is part of its behaviour
        __outputs__.append("raises " + type(__error__).__name__)
__sandbox_result__(__outputs__)
"""


def _literal_call(text: str, name: str) -> bool:
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return False
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == name):
        return False
    try:
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            ast.literal_eval(arg)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return not any(isinstance(a, ast.Starred) for a in node.args)


def examples(prompt: str, entry_point: str) -> list[str]:
    """The example calls of ``entry_point`` in ``prompt`` whose arguments are literals,
    in order, each once (the definition itself is not one)."""
    found: list[str] = []
    for match in re.finditer(rf"(?<![\w.]){re.escape(entry_point)}\s*\(", prompt):
        if re.search(r"def\s+$", prompt[:match.start()]):
            continue
        closes = [m.end() for m in re.finditer(r"\)", prompt[match.end():])]
        for end in closes[:64]:
            text = prompt[match.start():match.end() + end]
            if "\n\n" not in text and _literal_call(text, entry_point):
                call = " ".join(text.split())
                if call not in found:
                    found.append(call)
                break
        if len(found) == MAX_EXAMPLES:
            break
    return found


def behaviour_program(solution: str, calls: list[str]) -> str:
    """The solution, then a harness that evaluates each call and reports the reprs."""
    return solution + HARNESS.format(examples=calls, limit=MAX_REPR_CHARS)


def key_of(result: str | None) -> str | None:
    """A harness's reported result (JSON text) as a vote key; None when it reported
    nothing usable."""
    if result is None:
        return None
    try:
        outputs: Any = json.loads(result)
    except ValueError:
        return None
    if not isinstance(outputs, list):
        return None
    return json.dumps(outputs)


def text_key(code: str) -> str:
    """The fallback key of a prompt without examples: the code, white space collapsed."""
    return " ".join(code.split())
