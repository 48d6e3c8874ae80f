"""The ``verify`` selector: candidates checked by running them.

For code (the query asks for a Python function: coderun/extract.entry_point), the
prompt's examples that state a result (``>>> f(2)`` then ``4``; ``f(2) == 4``;
``f(2) ➞ 4``) become tests (coderun/examples.tests_of). Each candidate's code runs on
them in the sandbox (coderun/sandbox.py); its score is the share it passes. With a
``check`` command in the profile, each candidate runs that instead (coderun/command.py):
exit 0 scores 1. The best score wins; ties go to the more confident model
(confidence.py), then to the candidate in its model's majority, then the first listed.

Nothing runs unless model-written code may run (``execute: true`` in the profile's
``select``, or ``--execute``). When the prompt has no usable examples and there is no
check command, the selector says so in the report and falls back to ``confidence``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..coderun import examples
from ..coderun.extract import defines, entry_point, extract_code, imports_of, prompt_code, solution
from ..coderun.sandbox import Outcome
from . import Candidate, Selection
from .confidence import by_confidence, model_scores

NO_TESTS = (
    "no examples with a stated result in the prompt and no check command: chosen by confidence"
)


@dataclass(frozen=True)
class Score:
    """What one candidate passed: ``passed`` of ``total``, and a line on how it ran."""

    passed: int
    total: int
    detail: str

    @property
    def share(self) -> float:
        return self.passed / self.total if self.total else 0.0


@dataclass(frozen=True)
class CodeTests:
    """A query's function, the code it gives (None: a free-form prompt), its tests."""

    entry_point: str
    prompt: str | None
    tests: list[tuple[str, str]]


def code_tests(query: str) -> CodeTests | None:
    """The tests the query's examples give; None when it asks for no function or its
    examples state no result."""
    name = entry_point(query)
    if name is None:
        return None
    given = prompt_code(query, name)
    tests = examples.tests_of(given or query, name)
    return CodeTests(name, given, tests) if tests else None


def score_code(answer: str, found: CodeTests, run: Callable[[str], Outcome]) -> Score:
    """One candidate's code on the tests, in the sandbox (``run``)."""
    total = len(found.tests)
    code = extract_code(answer, found.entry_point)
    if code is None:
        return Score(0, total, "no code in the answer")
    if defines(code, found.entry_point):  # its own definition, with the prompt's imports
        module = f"{imports_of(found.prompt or '')}\n{code}\n"
    else:  # a bare body completes the prompt's stub
        module = solution(code, found.prompt or "", found.entry_point)
    outcome = run(examples.test_program(module, found.tests))
    counted = examples.passed_of(outcome.result) if outcome.passed else None
    if counted is None or not 0 <= counted[0] <= counted[1] == total:
        return Score(0, total, f"{outcome.status}: {outcome.detail}".rstrip(": "))
    return Score(counted[0], counted[1], f"{counted[0]}/{counted[1]} examples pass")


def by_verify(
    candidates: Sequence[Candidate],
    scores: Sequence[Score | None],
    keys: Sequence[str | None],
    records: Mapping[str, Mapping[str, int]],
) -> Selection:
    """The candidate that passes the most (see the module); ``scores`` None: nothing ran
    (no tests), so the confidence selector's choice, said as the fallback."""
    if all(s is None for s in scores):
        fallen = by_confidence(candidates, keys, records)
        return Selection("verify", fallen.index, fallen.why, fallen.scores, NO_TESTS)
    shares = [s.share if s else 0.0 for s in scores]
    top = max(shares)
    confidence = {m.model: m for m in model_scores(candidates, keys, records)}

    def rank(i: int) -> tuple[float, int, int]:
        own = confidence[candidates[i].model]
        return (own.confidence, int(keys[i] is not None and keys[i] == own.key), -i)

    best = max((i for i, s in enumerate(shares) if s == top), key=rank)
    tied = sum(s == top for s in shares)
    chosen = scores[best]
    fallback = None if top > 0 else "no candidate passed an example: chosen by confidence"
    why = (f"passes {chosen.passed}/{chosen.total}" if chosen else "passes nothing") + (
        f"; {tied} candidates tied, the more confident model's" if tied > 1 else ""
    )
    table = [
        {
            "agent": c.agent,
            "model": c.model,
            "passed": s.passed if s else None,
            "total": s.total if s else None,
            "detail": s.detail if s else "not run",
        }
        for c, s in zip(candidates, scores, strict=True)
    ]
    return Selection("verify", best, why, table, fallback)
