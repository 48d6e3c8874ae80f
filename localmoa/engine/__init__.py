"""Executes a Plan: for each wave, load, run its agents at once, unload.

The engine decides nothing about memory or order: the Plan says which instance
of which model serves each agent, with how many threads, and when instances are
loaded and freed. Between layers it passes the references on; the aggregator's
text is streamed through the events. The one departure it handles is an agent
that timed out and did not stop: its instance is held (freed when the agent
returns), a later wave gets a fresh one when the budget allows, and the report
says so.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import consensus
from ..backends.base import Message
from ..cancel import INTERRUPTED, Control, Flag
from ..config import Config
from ..errors import (
    AggregatorFailedError,
    LayerFailedError,
    LocalMoaError,
    RunInterrupted,
    Terminated,
)
from ..host import ModelHost
from ..memory.planner import Instance, Plan, Wave
from ..memory.probe import MemorySampler
from ..metrics import AgentRun, RunReport
from ..prompt_fit import check_fits, longest_token_bytes
from ..recipe import Agent, MoaGraph
from .loading import clear_dead, load_wave, prestart_next
from .selecting import judges, select_judged, select_now
from .state import Execution, RunEvents
from .waves import run_wave

__all__ = ["ModelHost", "RunEvents", "execute_jobs", "execute_plan"]


def execute_plan(config: Config, graph: MoaGraph, conversation: Sequence[Message], plan: Plan,
                 paths: dict[str, Path], *, events: RunEvents | None = None,
                 host: ModelHost | None = None,
                 runtime: dict[str, Any] | None = None,
                 cancel: Flag | None = None) -> RunReport:
    """Run ``graph`` on ``conversation`` exactly as ``plan`` says and return the report.

    With a ``host`` (a chat), models already loaded are used and whatever the
    plan keeps stays loaded; without one, every model is freed at the end.
    ``runtime`` (e.g. the cpu_repack choice) goes into the report as it is. ``cancel``
    (the request's Cancel), set from another thread, stops the run as Ctrl-C does
    (RunInterrupted).
    Raises LayerFailedError when a whole layer produced nothing and
    AggregatorFailedError when the aggregator failed; both carry ``report``
    with everything produced so far.
    """
    [outcome] = execute_jobs(config, graph, [conversation], plan, paths, events=events,
                             host=host, runtime=runtime, cancels=[cancel])
    if isinstance(outcome, LocalMoaError):
        raise outcome
    return outcome


def execute_jobs(config: Config, graph: MoaGraph, conversations: Sequence[Sequence[Message]],
                 plan: Plan, paths: dict[str, Path], *, events: RunEvents | None = None,
                 host: ModelHost | None = None, runtime: dict[str, Any] | None = None,
                 cancels: Sequence[Flag | None] | None = None,
                 ) -> list[RunReport | LocalMoaError]:
    """Run a graph of one or more requests (``merge_graphs``: request j's agents have
    ``job = j`` and see ``conversations[j]``) and return each request's outcome: its
    report, or the error ``execute_plan`` would raise for it, carrying its report.

    Requests share waves, so agents of several requests on one model decode as one
    batch; each request's references are its own. A request whose layer failed, or
    whose ``cancels[j]`` was set, ends there while the others go on. The events get
    the merged agents (``Agent.job``, ids ``j/L1.1``); the reports their own ids.
    """
    own_host, host = host is None, host or ModelHost(config)
    host.paths.update(paths)
    jobs = graph.jobs
    if len(conversations) != jobs:
        raise ValueError(f"{jobs} requests in the graph, {len(conversations)} conversations")
    _refuse_unfit(config, graph, conversations, host.paths)  # before anything loads
    ex = Execution(host=host, plan=plan, conversations=list(conversations),
                    events=events or RunEvents(), held_before=list(host.held),
                    control=Control(cancels=list(cancels or [None] * jobs)),
                    quiet_aggregator=graph.aggregate == "select",
                    staircase=graph.staircase_chunk if graph.aggregate == "staircase" else 0)
    host.load_errors.clear()  # a chat's earlier turns' failures are not this run's
    start = (host.loads, host.unloads, host.load_s)
    agents = {a.id: a for a in graph.all_agents()}
    runs: dict[str, AgentRun] = {}
    stages = graph.stages()
    outcomes: dict[int, RunReport | LocalMoaError] = {}
    skipping: set[int] = set()  # requests whose proposer layers ended early
    recipes: list[dict[str, Any]] = [{} for _ in range(jobs)]  # what each one decided
    ex.log("run_start", profile=graph.profile, waves=len(plan.waves), requests=jobs)

    with MemorySampler(host.worker_pids) as memory:

        def report(job: int, answer: str = "", error: str | None = None) -> RunReport:
            memory.sample()
            ordered = [dataclasses.replace(runs[a.id], agent=a.local_id)
                       for stage in stages for a in stage if a.job == job and a.id in runs]
            conversation = ex.conversations[job]
            ex.log("run_end", ok=error is None, error=error, request=job)
            return RunReport.build(
                profile=graph.profile,
                prompt=conversation[-1]["content"] if conversation else "",
                answer=answer, runs=ordered, wall_s=ex.now(), cores=plan.cores,
                models=_model_facts(config, graph, host.runtime),
                error=error, plan=_plan_summary(plan),
                actual=_actual(ex, memory, start, jobs),
                runtime=dict(runtime or {}), warnings=list(ex.warnings),
                recipe=dict(recipes[job]))

        try:
            for inst in plan.unloads_first:
                host.unload(inst)
            references: dict[int, list[str]] = {}
            for number, stage in enumerate(stages, start=1):
                ending = {job for job in range(jobs) if job in outcomes
                          or (job in skipping and number < len(stages))}
                judges(graph, stage, agents, references)  # the final stage's, by judge
                _run_layer(ex, number, agents, ending, references, runs, memory)
                for job in (j for j in range(jobs) if j not in ending):
                    job_runs = [runs[a.id] for a in stage if a.job == job]
                    outcome = _stage_end(ex, graph, job, number, job_runs, recipes[job],
                                         report)
                    if isinstance(outcome, str):  # early exit: on to the aggregator
                        skipping.add(job)
                    elif outcome is not None:
                        outcomes[job] = outcome
                        continue
                    references[job] = [r.answer for r in job_runs if r.ok]
            return [outcomes[j] for j in range(jobs)]
        except KeyboardInterrupt as exc:
            _interrupted(ex, exc, jobs, outcomes, report)
            return [outcomes[j] for j in range(jobs)]
        finally:
            ex.log.close()
            if own_host:
                host.close()


def _run_layer(ex: Execution, number: int, agents: dict[str, Agent], ending: set[int],
               references: dict[int, list[str]], runs: dict[str, AgentRun],
               memory: MemorySampler) -> None:
    """The plan's waves of stage ``number``, but the agents of requests in ``ending`` (over,
    or skipping to their aggregator): load, run, sample memory, drop dead workers, unload."""
    for wave in ex.plan.waves_of_layer(number):
        live = dataclasses.replace(wave, tasks=[t for t in wave.tasks
                                                if agents[t.agent].job not in ending])
        if live.tasks:
            run_wave(ex, live, agents, references, runs,
                     functools.partial(_load, ex, wave, live, agents, memory))
            memory.sample()  # the wave's peak: its contexts are filled now
            clear_dead(ex)
        for inst in wave.unloads:
            ex.host.unload(inst)


def _load(ex: Execution, wave: Wave, live: Wave, agents: dict[str, Agent],
          memory: MemorySampler, loaded: Callable[[Instance], None]) -> None:
    """The wave's loads (``live``: its tasks still run), ``loaded`` told of each as it
    ends; then the next wave's workers start early, and memory is sampled."""
    load_wave(ex, live, agents, loaded)
    prestart_next(ex, wave)
    memory.sample()


def _actual(ex: Execution, memory: MemorySampler, start: tuple[int, int, float],
            jobs: int) -> dict[str, Any]:
    """What happened, for the report: loads and unloads since ``start``, memory, workers."""
    host = ex.host
    return {"loads": host.loads - start[0], "unloads": host.unloads - start[1],
            "load_s": round(host.load_s - start[2], 4),
            "peak_rss_growth_bytes": memory.peak_rss,
            "peak_pss_growth_bytes": memory.peak_pss,
            "abandoned_agents": len(ex.abandoned_ids),
            "held_bytes": host.held_bytes(),
            "workers": memory.worker_peaks(),
            "crashed_workers": list(ex.crashes),
            "worker_restarts": ex.restarts,
            **({"requests_batched": jobs} if jobs > 1 else {})}


def _interrupted(ex: Execution, exc: KeyboardInterrupt, jobs: int,
                 outcomes: dict[int, RunReport | LocalMoaError],
                 report: Callable[..., RunReport]) -> None:
    """Ctrl-C (130) or SIGTERM (143): every request not over ends with what it made."""
    ex.control.stop.set(INTERRUPTED)
    code = 143 if isinstance(exc, Terminated) else 130
    what = "terminated (SIGTERM)" if code == 143 else "interrupted"
    ex.log("interrupted", signal="SIGTERM" if code == 143 else "SIGINT")
    for job in range(jobs):
        if job not in outcomes:
            outcomes[job] = RunInterrupted(what, report(job, error=what), exit_code=code)


def _stage_end(ex: Execution, graph: MoaGraph, job: int, number: int,
               job_runs: list[AgentRun], recipe: dict[str, Any],
               report: Callable[..., RunReport]) -> RunReport | LocalMoaError | str | None:
    """What the end of stage ``number`` means for request ``job``: its outcome when it
    is over (answered, failed, cancelled, or the proposers' answer stands), "skip" when
    it goes straight to the aggregator (early exit), None when it goes on. ``recipe``
    gets what was decided."""
    last = len(graph.layers) + 1
    if ex.control.dropped(job):
        return RunInterrupted("interrupted", report(job, error="interrupted"), exit_code=130)
    if number == last:
        final = job_runs[0]
        if graph.aggregate == "select":
            return select_judged(ex, graph, job, final, recipe, report)
        if not final.ok:
            message = f"the aggregator ({final.model}) failed: {final.error}"
            return AggregatorFailedError(message, report(job, error=message))
        return report(job, answer=final.answer)
    ex.log("layer_done", layer=number, request=job)
    ex.emit("on_layer_done", number, job_runs)
    ok = [r for r in job_runs if r.ok]
    if not ok:
        reasons = "; ".join(f"{r.agent.rpartition('/')[2]}: {r.error}" for r in job_runs)
        message = f"every agent of layer {number} failed ({reasons})"
        return LayerFailedError(message, report(job, error=message))
    answers = [r.answer for r in ok]
    final_layer = number == last - 1
    agreed = consensus.agreement(answers)
    if graph.early_exit and agreed.agree and not final_layer:
        recipe["early_exit"] = {"after_layer": number, "layers_skipped": last - 1 - number,
                                "agreement": agreed.summary(),
                                "estimated_time_saved_s": _layer_time(job_runs)
                                * (last - 1 - number)}
    if graph.aggregate == "select" and (final_layer or "early_exit" in recipe):
        selected = select_now(ex, graph, job, ok, recipe, report)
        if selected is not None:
            return selected
    if graph.aggregate == "never" and (final_layer or "early_exit" in recipe):
        chosen = consensus.vote(answers)
        return _short_cut(ex, job, recipe, chosen, ok, "never", report)
    if graph.aggregate == "auto" and agreed.agree and (final_layer or "early_exit" in recipe):
        return _short_cut(ex, job, recipe, agreed, ok, "auto", report)
    if graph.aggregate == "auto" and final_layer:
        recipe["consensus"] = {"aggregation": "ran", "agreement": _disagree(answers)}
    return "skip" if "early_exit" in recipe else None


def _short_cut(ex: Execution, job: int, recipe: dict[str, Any], chosen: consensus.Agreement,
               ok: list[AgentRun], mode: str, report: Callable[..., RunReport]) -> RunReport:
    """The answer without the aggregator: the agreed (or voted) proposer's."""
    source = ok[chosen.index]
    saved = recipe.get("early_exit", {}).get("estimated_time_saved_s", 0.0)
    recipe["consensus"] = {
        "aggregation": "skipped", "aggregate": mode,
        "agreement": chosen.summary(), "rule": chosen.rule,
        "answer_from": source.agent.rpartition("/")[2],
        "summary": f"aggregation skipped: {chosen.summary()}",
        "estimated_time_saved_s": round(saved + _aggregator_time(ok), 3)}
    ex.log("aggregation_skipped", request=job, agreement=chosen.summary())
    return report(job, answer=source.answer)


def _disagree(answers: list[str]) -> str:
    best = consensus.vote(answers)
    return f"{best.count}/{best.of} agree at most"


def _layer_time(runs: list[AgentRun]) -> float:
    """A layer's wall time: from its first agent's start to its last one's end."""
    return round(max(r.end_s for r in runs) - min(r.start_s for r in runs), 3)


def _aggregator_time(ok: list[AgentRun]) -> float:
    """What an aggregator call would have taken, estimated from the proposers that ran:
    reading every answer at their prompt rate (the prompt they read, plus the answers),
    then writing an answer as long as theirs (the median) at their decode rate."""
    def median(values: list[float]) -> float:
        values = sorted(values)
        return values[len(values) // 2] if values else 0.0

    prompt = median([r.prompt_tokens for r in ok]) + sum(r.completion_tokens for r in ok)
    prefill_rate = median([r.prompt_tok_per_s for r in ok if r.prompt_tok_per_s > 0])
    decode_rate = median([r.decode_tok_per_s for r in ok if r.decode_tok_per_s > 0])
    written = median([r.completion_tokens for r in ok])
    if prefill_rate <= 0 or decode_rate <= 0:
        return _layer_time(ok)
    return prompt / prefill_rate + written / decode_rate


def _plan_summary(plan: Plan) -> dict[str, Any]:
    return {"waves": len(plan.waves), "loads": plan.loads, "unloads": plan.unloads,
            "predicted_peak_bytes": plan.peak_bytes, "budget_bytes": plan.budgets,
            "batches": [{"wave": w.index, "layer": w.layer, "model": m, "size": n}
                        for w in plan.waves for m, n in w.batches.items()],
            **({"streaming": dict(plan.streaming)} if plan.streaming else {})}


def _refuse_unfit(config: Config, graph: MoaGraph,
                  conversations: Sequence[Sequence[Message]], paths: dict[str, Path]) -> None:
    """PromptTooLongError when a request's conversation cannot fit the agents that must
    read it (a cheap lower bound: prompt_fit.py). A server checks each request before
    queueing it, so a merged run meets none."""
    def longest(model: str) -> int:
        return longest_token_bytes(paths[model]) if model in paths else 0

    for job, conversation in enumerate(conversations):
        check_fits(graph, conversation, lambda m: config.models[m].n_ctx, longest, job)


def _model_facts(config: Config, graph: MoaGraph,
                 runtime: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    facts: dict[str, dict[str, Any]] = {}
    for name in graph.models:
        spec = config.models[name]
        facts[name] = {"backend": spec.backend, "source": spec.where(), "n_ctx": spec.n_ctx,
                       **spec.report_facts(), **runtime.get(name, {})}
    return facts
