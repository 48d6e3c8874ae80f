"""The selectors the engine calls when the last proposer layer ends (``confidence``,
``verify``), and the judge's answer read back; timed, with the keys and the sandbox
set up from the profile's ``select``."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from ..coderun import examples
from ..coderun.command import run_check
from ..coderun.extract import entry_point, extract_code, prompt_code, solution
from ..coderun.sandbox import Limits, containment, run_program
from ..profile_spec import SelectSpec
from . import Candidate, Selection, records
from .confidence import by_confidence
from .judge import by_judge, parse
from .keys import Behaviour, keys_of
from .verify import Score, by_verify, code_tests, score_code


def behaviour_of(query: str, limits: Limits) -> Behaviour:
    """Code compared by its outputs on the query's example calls, run in the sandbox
    (the code's text where the query has no example calls)."""

    def behaviour(code: str, name: str) -> str | None:
        given = prompt_code(query, name)
        calls = examples.examples(given or query, name)
        if not calls:
            return "code:" + examples.text_key(code)
        module = solution(code, given, name) if given else code
        outcome = run_program(examples.behaviour_program(module, calls), limits, containment())
        key = examples.key_of(outcome.result) if outcome.passed else None
        return None if key is None else "behaviour:" + key

    return behaviour


def verify_scores(
    spec: SelectSpec, query: str, candidates: Sequence[Candidate]
) -> list[Score | None]:
    """Each candidate's score: the check command's verdict, else its code on the query's
    examples; all None when there is nothing to run."""
    if spec.check is not None:
        out: list[Score | None] = []
        name = entry_point(query) or ""
        for c in candidates:
            code = extract_code(c.answer, name)
            done = run_check(spec.check, c.answer, code, spec.check_timeout_s, containment())
            out.append(Score(int(done.passed), 1, done.detail))
        return out
    found = code_tests(query)
    if found is None:
        return [None] * len(candidates)
    limits = Limits(timeout_s=spec.check_timeout_s)
    return [
        score_code(c.answer, found, lambda source: run_program(source, limits, containment()))
        for c in candidates
    ]


def choose(
    spec: SelectSpec,
    query: str,
    candidates: Sequence[Candidate],
    stored: Mapping[str, Mapping[str, int]] | None = None,
) -> Selection:
    """The ``confidence`` or ``verify`` selection among ``candidates`` (the judge's is
    ``judged``)."""
    start = time.perf_counter()
    stored = records.load() if stored is None else stored
    behaviour = (
        behaviour_of(query, Limits(timeout_s=spec.check_timeout_s)) if spec.execute else None
    )
    keys = keys_of([c.answer for c in candidates], query, behaviour)
    if spec.by == "verify":
        chosen = by_verify(candidates, verify_scores(spec, query, candidates), keys, stored)
    else:
        chosen = by_confidence(candidates, keys, stored)
    chosen.seconds = time.perf_counter() - start
    return chosen


def judged(
    spec: SelectSpec, query: str, candidates: Sequence[Candidate], reply: str, judge_model: str
) -> Selection:
    """The judge's choice from its ``reply``; the confidence selection when it named
    none (its reply failed or was out of range)."""
    start = time.perf_counter()
    fallen = Selection("judge", 0, "")  # not used: the judge named one
    if parse(reply, len(candidates)) is None:
        fallen = choose(spec.model_copy(update={"by": "confidence"}), query, candidates)
    chosen = by_judge(candidates, reply, judge_model, fallen)
    chosen.seconds = time.perf_counter() - start
    return chosen
