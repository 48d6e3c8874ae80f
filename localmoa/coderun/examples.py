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


#: How an example states its expected value after the call: ``f(x) == y``,
#: ``f(x) = y``, ``f(x) ==> y``, ``f(x) ➞ y``, ``f(x) -> y``, ``f(x) => y``,
#: ``f(x) should return y``.
_EXPECT = re.compile(r"^\s*(?:==>|==|=>|->|➞|→|=|should\s+(?:return|be|give)|returns?|gives?)"
                     r"\s*", re.I)

#: Runs the candidate in a namespace of its own, with what the harness needs bound
#: first: a candidate cannot report for the harness, rebind ``eval`` or ``type`` for
#: it, or pass with an object whose ``==`` is always true (types must match).
TEST_HARNESS = """
def __harness__(report=__sandbox_result__, run=exec, evaluate=eval, kind=type,
                absolute=abs, largest=max, same=(int, float)):
    tests = {tests!r}
    scope = {{"__name__": "__candidate__"}}
    run(compile({solution!r}, "<candidate>", "exec"), scope)
    passed = 0
    for call, expected in tests:
        try:
            got, want = evaluate(call, scope), evaluate(expected, {{}})
            if kind(want) is float or kind(got) is float:
                ok = kind(got) in same and kind(want) in same and \\
                    absolute(got - want) <= 1e-6 * largest(1.0, absolute(want))
            else:
                ok = kind(got) is kind(want) and got == want
        except BaseException:  # a call that raises fails its example
            ok = False
        passed += ok is True
    report([passed, len(tests)])


__harness__()
"""


def _literal(text: str) -> str | None:
    """``text`` when it is one Python literal (an expected value), else None."""
    text = text.strip().removesuffix('"""').removesuffix("'''").strip().rstrip(".,;")
    try:
        ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return text


def _doctest_expected(lines: list[str], at: int) -> str | None:
    """The expected output of the ``>>>`` line at ``at``: the next line, when it is a
    literal and not another prompt."""
    following = lines[at + 1].strip() if at + 1 < len(lines) else ""
    if not following or following.startswith((">>>", "...")):
        return None
    return _literal(following)


def tests_of(prompt: str, entry_point: str) -> list[tuple[str, str]]:
    """The prompt's examples that state a result, as (call, expected) pairs: a
    ``>>> f(x)`` line and the literal on the next line, or ``f(x) == y`` (``➞``,
    ``->``, ``=>``, "should return") on one line. Calls and results are literals only;
    each call once, at most MAX_EXAMPLES."""
    found: dict[str, str] = {}
    lines = prompt.splitlines()
    calls = examples(prompt, entry_point)
    for i, line in enumerate(lines):
        for call in calls:
            if call in found or call not in " ".join(line.split()):
                continue
            text = " ".join(line.split())
            after = text[text.index(call) + len(call) :]
            if text.lstrip().startswith(">>>") and not after.strip():
                expected = _doctest_expected(lines, i)
            else:
                match = _EXPECT.match(after)
                expected = _literal(after[match.end() :]) if match else None
            if expected is not None:
                found[call] = expected
    return list(found.items())[:MAX_EXAMPLES]


def test_program(solution: str, tests: list[tuple[str, str]]) -> str:
    """A harness that runs the solution in its own namespace, then each example, and
    reports ``[passed, total]``."""
    return TEST_HARNESS.format(tests=tests, solution=solution)


def passed_of(result: str | None) -> tuple[int, int] | None:
    """A test harness's reported ``[passed, total]``; None when it reported nothing
    usable."""
    try:
        value: Any = json.loads(result) if result is not None else None
    except ValueError:
        return None
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return value[0], value[1]
    return None
