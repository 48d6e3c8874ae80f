"""Running an eval: every contender's graph over every task, models kept loaded.

Each distinct graph is planned once (one preflight, before anything loads); every run
is planned warm on one runtime from what is loaded, so a model loads once, not per
task. When all the graphs' models fit in memory together, the graphs take turns task
by task (fair to each when the machine slows down for a while); otherwise each graph
runs every task of a round before the next one loads. Round r reseeds every agent
(seed + r x ROUND_SEED_STEP), so repeats draw new samples and each round is
reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..errors import RunFailedError, RunInterrupted, UsageError
from ..memory.estimate import Footprint
from ..metrics import RunReport
from ..preflight import Preflight
from ..recipe import SELF_MAX_SAMPLES, SELF_MIN_SAMPLES, MoaGraph
from ..runtime import Request, Runtime
from .contenders import Contender
from .stats import summarise
from .tasks import Task

if TYPE_CHECKING:
    from .codecheck import CodeJudge

#: Added to every agent's seed per repeat round.
ROUND_SEED_STEP = 10_000
#: progress(done, total, message): work is counted in agents' max_tokens, a cost proxy
#: that makes the ETA fair between a single model and a six-sample Self-MoA.
Progress = Callable[[float, float, str], None]


def check_samples(samples: int) -> None:
    if not SELF_MIN_SAMPLES <= samples <= SELF_MAX_SAMPLES:
        raise UsageError(f"--samples {samples}: give {SELF_MIN_SAMPLES} to {SELF_MAX_SAMPLES} "
                         "samples for self-consistency and Self-MoA")


@dataclass(frozen=True)
class Prepared:
    """The graphs to run (by name, widest batch first), the contenders reading each, their
    plans, each model's widest batch, whether the graphs take turns task by task, and the
    runtime that planned them and runs them."""

    contenders: list[Contender]
    graphs: dict[str, MoaGraph]
    readers: dict[str, list[Contender]]
    preflights: dict[str, Preflight]
    widest: dict[str, int]
    interleaved: bool
    runtime: Runtime


def prepare(config: Config, contenders: list[Contender], memory_budget: str | None = None,
            runtime: Runtime | None = None) -> Prepared:
    """One preflight per distinct graph, before any load: a graph that cannot fit is
    refused here. Every plan knows each model's widest batch over all graphs, since an
    instance one graph leaves loaded serves the next. ``runtime``: one that keeps models
    loaded (default: made from ``memory_budget``)."""
    graphs: dict[str, MoaGraph] = {}
    readers: dict[str, list[Contender]] = {}
    for c in contenders:
        graphs.setdefault(c.run, c.graph)
        readers.setdefault(c.run, []).append(c)
    # the widest batches first: their instance then serves the narrower graphs unreloaded
    graphs = dict(sorted(graphs.items(), key=lambda kv: -max(kv[1].widest().values())))
    widest: dict[str, int] = {}
    for graph in graphs.values():
        for model, n in graph.batch_room().items():
            widest[model] = max(widest.get(model, 1), n)
    runtime = runtime or Runtime(config, memory_budget, keep_loaded=True)
    runtime.widest.update(widest)
    preflights = {name: runtime.preflight(graph) for name, graph in graphs.items()}
    return Prepared(list(contenders), graphs, readers, preflights, widest,
                    fit_together(preflights, widest), runtime)


def fit_together(preflights: dict[str, Preflight], widest: dict[str, int]) -> bool:
    """Whether one instance of every model of every graph, with room for its widest batch,
    fits the memory budget at once: then nothing need be unloaded between graphs."""
    need: dict[str, int] = {}
    budgets: dict[str, int] = {}
    footprints: dict[str, Footprint] = {}
    for pre in preflights.values():
        budgets.update(pre.budgets)
        footprints.update(pre.footprints)
    for model, fp in footprints.items():
        n = widest.get(model, 1)
        cost = fp.cost(1, n) if n == 1 or n in fp.batched_pools else fp.cost(n)
        for pool, amount in cost.items():
            need[pool] = need.get(pool, 0) + amount
    return all(amount <= budgets.get(pool, amount) for pool, amount in need.items())


def schedule(prepared: Prepared, tasks: int, repeat: int) -> list[tuple[int, str, int]]:
    """(round, graph, task index) in the order they run. When the models fit together the
    graphs take turns on each task, in reverse order every other task (as bench does), so
    a machine that slows down for a while slows every contender alike; otherwise each
    graph runs all its tasks before the next loads."""
    names = list(prepared.graphs)
    if not prepared.interleaved:
        return [(r, name, i) for r in range(repeat) for name in names for i in range(tasks)]
    order: list[tuple[int, str, int]] = []
    for r in range(repeat):
        for i in range(tasks):
            turn = r * tasks + i
            order += [(r, name, i) for name in (names if turn % 2 == 0 else names[::-1])]
    return order


def reseed(graph: MoaGraph, offset: int) -> MoaGraph:
    """``graph`` with every seeded agent's seed moved by ``offset`` (same ids, same plan)."""
    if offset == 0:
        return graph

    def moved(agent: Any) -> Any:
        return agent if agent.seed is None else replace(agent, seed=agent.seed + offset)

    return replace(graph, layers=[[moved(a) for a in layer] for layer in graph.layers],
                   aggregator=moved(graph.aggregator))


def cost(graph: MoaGraph) -> int:
    return sum(a.max_tokens for a in graph.all_agents())


def run_eval(config: Config, tasks: list[Task], prepared: Prepared, *, repeat: int = 1,
             progress: Progress | None = None, judge: CodeJudge | None = None
             ) -> dict[str, Any]:
    """Run every graph of ``prepared`` on every task, ``repeat`` rounds (see ``schedule``).
    Returns the contenders, their summaries, every answer (raw, extracted, verdict, tokens,
    seconds) and every run's report. ``judge`` runs code tasks' tests (``--execute``)."""
    if repeat < 1:
        raise UsageError(f"--repeat {repeat}: give at least 1")
    order = schedule(prepared, len(tasks), repeat)
    total = float(sum(cost(prepared.graphs[name]) for _, name, _ in order))
    done = 0.0
    answers: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    runtime = prepared.runtime
    try:
        for round_no, name, index in order:
            graph, task = prepared.graphs[name], tasks[index]
            if progress:
                progress(done, total, f"{name}: task {index + 1}/{len(tasks)}"
                         + (f", round {round_no + 1}/{repeat}" if repeat > 1 else ""))
            if not prepared.interleaved:  # a model this graph never uses makes room
                runtime.make_room(prepared.preflights[name].footprints)
            report = run_one(runtime, reseed(graph, round_no * ROUND_SEED_STEP), task.prompt)
            runs.append({"run": name, "task": task.id, "round": round_no,
                         "report": report.to_dict()})
            for contender in prepared.readers[name]:
                answers.append({"contender": contender.name, "task": task.id,
                                "set": task.set, "round": round_no,
                                **contender.read(task, report, judge)})
            done += cost(graph)
        if progress:
            progress(total, total, "done")
    finally:
        runtime.free()
    return results_of(prepared.contenders, answers, runs)


def results_of(
    contenders: list[Contender], answers: list[dict[str, Any]], runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """The contenders, their summaries, their answers (by contender, then round, then
    task) and the runs they read."""
    position = {c.name: i for i, c in enumerate(contenders)}
    answers.sort(key=lambda a: (position[a["contender"]], a["round"]))  # stable: task order
    summaries = {c.name: {**c.describe(),
                          **summarise([a for a in answers if a["contender"] == c.name])}
                 for c in contenders}
    return {"contenders": [c.describe() for c in contenders], "summaries": summaries,
            "answers": answers, "runs": runs}


def reread(
    stored: dict[str, Any], contenders: list[Contender], judge: CodeJudge | None = None
) -> dict[str, Any]:
    """Score ``contenders`` on the runs a results.json stored, running no model: each
    contender reads the stored runs of its graph (a selector over a profile's samples,
    a vote). UsageError when none of them has a stored run."""
    tasks = {
        t["id"]: Task(**{**t, "choices": tuple(t.get("choices") or ())})
        for t in stored.get("tasks", [])
    }
    stored_runs = [r for r in stored.get("runs", []) if r.get("task") in tasks]
    have = {r["run"] for r in stored_runs}
    usable = [c for c in contenders if c.run in have]
    if not usable:
        raise UsageError(
            "--reread: none of these contenders reads a stored run (stored: "
            f"{', '.join(sorted(have)) or 'none'}); pick contenders that read "
            "a profile's run (vote, select:confidence, select:verify)"
        )
    answers: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for run in stored_runs:
        readers = [c for c in usable if c.run == run["run"]]
        if not readers:
            continue
        task, report = tasks[run["task"]], RunReport.from_dict(run["report"])
        runs.append(run)
        for contender in readers:
            answers.append(
                {
                    "contender": contender.name,
                    "task": task.id,
                    "set": task.set,
                    "round": run.get("round", 0),
                    **contender.read(task, report, judge),
                }
            )
    return results_of(usable, answers, runs)


def run_one(runtime: Runtime, graph: MoaGraph, prompt: str) -> RunReport:
    """One run of ``graph`` on the runtime's loaded models (beside other graphs' models
    when they fit); a run that fails part-way gives its partial report (the contenders
    reading it count it wrong)."""
    try:
        return runtime.run(Request([{"role": "user", "content": prompt}], graph))
    except RunInterrupted:
        raise
    except RunFailedError as exc:
        if isinstance(exc.report, RunReport):
            return exc.report
        raise
