"""``aggregate: select``: the final answer is one of the last proposer layer's answers,
chosen by a selector and never rewritten (SLM-MUX, Wang et al. 2025: for small models,
selecting beats synthesis).

    keys.py        when two answers agree: number, choice, JSON, code (text or behaviour)
    confidence.py  each model's share of samples agreeing with its own majority
    verify.py      candidates run against the prompt's examples, or the user's check
    judge.py       the aggregator's model names the best answer, its output constrained
    records.py     each model's stored `localmoa eval` record: the tie-break

The engine calls ``confidence`` and ``verify`` when the last proposer layer ends (no
aggregator runs); ``judge`` is the aggregator stage with the judge's prompt and a
constraint to the candidates' numbers. The report's ``recipe.selection`` says which
selector chose what, with every candidate's score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The selectors, in the order `--select` lists them.
SELECTORS = ("confidence", "judge", "verify")


@dataclass(frozen=True)
class Candidate:
    """One answer to choose from: the agent (its id in the request), its model, the text."""

    agent: str
    model: str
    answer: str


@dataclass
class Selection:
    """Which candidate a selector chose (``index``), why in one line, each candidate's
    scores, and the fallback taken when the selector could not decide alone."""

    selector: str
    index: int
    why: str
    scores: list[dict[str, Any]] = field(default_factory=list)
    fallback: str | None = None
    seconds: float = 0.0

    def to_dict(self, candidates: list[Candidate]) -> dict[str, Any]:
        chosen = candidates[self.index]
        return {
            "selector": self.selector,
            "chosen": chosen.agent,
            "model": chosen.model,
            "why": self.why,
            "fallback": self.fallback,
            "scores": self.scores,
            "candidates": len(candidates),
            "seconds": round(self.seconds, 4),
            "summary": f"{self.selector} chose {chosen.agent} ({chosen.model}): {self.why}",
        }
