"""``aggregate: select`` in a run: the answer chosen from the last proposer layer's
(selection/), or named by the judge in the aggregator's stage. What was chosen, by
whom, with every candidate's score, goes into the report's ``recipe.selection``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import consensus
from ..metrics import AgentRun, RunReport
from ..prompts import latest_query
from ..recipe import Agent, MoaGraph, judge_agent
from ..selection import Candidate, Selection
from ..selection.choose import choose, judged
from .state import Execution


def candidates_of(ok: list[AgentRun]) -> list[Candidate]:
    return [Candidate(r.agent.rpartition("/")[2], r.model, r.answer) for r in ok]


def select_now(
    ex: Execution,
    graph: MoaGraph,
    job: int,
    ok: list[AgentRun],
    recipe: dict[str, Any],
    report: Callable[..., RunReport],
) -> RunReport | None:
    """The answer chosen when the last proposer layer ends; None when the judge must
    read them first (the aggregator's stage)."""
    assert graph.select is not None
    candidates = candidates_of(ok)
    query = latest_query(ex.conversations[job])
    if graph.select.by == "judge":
        agreed = consensus.agreement([c.answer for c in candidates])
        if len(candidates) > 1 and not agreed.agree:
            ex.candidates[job] = candidates
            return None
        why = (
            f"all {len(candidates)} answers agree ({agreed.rule}): the judge was not asked"
            if agreed.agree
            else "one answer: the judge was not asked"
        )
        chosen = Selection("judge", agreed.index if agreed.agree else 0, why)
    else:
        chosen = choose(graph.select, query, candidates)
    return _answer(ex, job, candidates, chosen, recipe, report)


def select_judged(
    ex: Execution,
    graph: MoaGraph,
    job: int,
    final: AgentRun,
    recipe: dict[str, Any],
    report: Callable[..., RunReport],
) -> RunReport:
    """The candidate the judge (the aggregator's run ``final``) named; the confidence
    selection, said as the fallback, when it failed or named none."""
    assert graph.select is not None
    candidates = ex.candidates[job]
    query = latest_query(ex.conversations[job])
    chosen = judged(graph.select, query, candidates, final.answer if final.ok else "", final.model)
    if not final.ok and chosen.fallback:
        chosen.fallback = f"the judge failed ({final.error}): chosen by confidence"
    return _answer(ex, job, candidates, chosen, recipe, report)


def _answer(
    ex: Execution,
    job: int,
    candidates: list[Candidate],
    chosen: Selection,
    recipe: dict[str, Any],
    report: Callable[..., RunReport],
) -> RunReport:
    recipe["selection"] = chosen.to_dict(candidates)
    ex.log("selected", request=job, selector=chosen.selector, chosen=candidates[chosen.index].agent)
    return report(job, answer=candidates[chosen.index].answer)


def judges(
    graph: MoaGraph, stage: list[Agent], agents: dict[str, Agent], references: dict[int, list[str]]
) -> None:
    """Each request's judge set for the answers it will read (its schema's numbers)."""
    if graph.select is None or graph.select.by != "judge" or not stage[0].is_aggregator:
        return
    for agent in stage:
        count = len(references.get(agent.job, []))
        if count:
            agents[agent.id] = judge_agent(agent, count)
