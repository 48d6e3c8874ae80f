"""Executes a Plan: for each wave, load, run its agents at once, unload.

The engine decides nothing about memory or order: the Plan says which instance
of which model serves each agent, with how many threads, and when instances are
loaded and freed. Between layers it passes the references on; the aggregator's
text is streamed through the events.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import signals
from .agents import Control, run_agent
from .backends import get_backend
from .backends.base import LoadedModel, Message
from .config import Config
from .errors import (
    AggregatorFailedError,
    LayerFailedError,
    LocalMoaError,
    RunInterrupted,
    Terminated,
)
from .memory.planner import Instance, Plan, Task, Wave
from .memory.probe import MemorySampler
from .metrics import AgentRun, RunReport
from .preflight import Preflight, preflight
from .recipe import Agent, MoaGraph


@dataclass
class RunEvents:
    """Callbacks the engine calls while it runs; all optional, called from worker threads."""

    on_agent_loading: Callable[[Agent], None] | None = None
    on_agent_start: Callable[[Agent], None] | None = None
    on_text: Callable[[Agent, str], None] | None = None
    on_agent_done: Callable[[Agent, AgentRun], None] | None = None
    on_layer_done: Callable[[int, list[AgentRun]], None] | None = None


@dataclass
class _Loaded:
    model: LoadedModel
    started_at: float = 0.0  # perf_counter when its load began
    charged: bool = False  # its load time already reported on an agent


class _Worker(threading.Thread):
    """A long-lived thread that runs one agent at a time."""

    def __init__(self, index: int) -> None:
        super().__init__(name=f"localmoa-worker-{index}", daemon=True)
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.idle = threading.Event()
        self.idle.set()
        self.start()

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                job()
            finally:
                self.idle.set()

    def submit(self, job: Callable[[], None]) -> None:
        self.idle.clear()
        self.jobs.put(job)


class Workers:
    """The threads agents run on, reused from wave to wave and turn to turn.

    llama.cpp built with OpenMP keeps a team of threads per calling thread, and
    the team spins for a while after each computation to stay fast. Calling it
    from a new thread for every agent leaves spinning teams behind that compete
    for the cores (1.5x slower on the overhead benchmark); reusing the same few
    threads keeps one warm team each, as a plain loop on one thread does.
    """

    def __init__(self) -> None:
        self._workers: list[_Worker] = []

    def get(self, index: int) -> _Worker:
        while len(self._workers) <= index:
            self._workers.append(_Worker(len(self._workers)))
        if not self._workers[index].idle.is_set():  # still busy with an abandoned agent
            self._workers[index] = _Worker(index)
        return self._workers[index]

    def stop(self) -> None:
        for worker in self._workers:
            if worker.idle.is_set():
                worker.jobs.put(None)
        self._workers = []


@dataclass
class ModelHost:
    """The model instances loaded in this process. A run frees them at its end; a
    chat keeps one host across turns, so models stay loaded between turns."""

    config: Config
    paths: dict[str, Path] = field(default_factory=dict)
    loaded: dict[Instance, _Loaded] = field(default_factory=dict)
    busy: set[Instance] = field(default_factory=set)  # an agent is generating on it
    abandoned: set[Instance] = field(default_factory=set)  # a timed-out agent kept it
    load_errors: dict[Instance, str] = field(default_factory=dict)
    runtime: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. Ollama's /api/ps
    workers: Workers = field(default_factory=Workers)
    loads: int = 0
    unloads: int = 0
    load_s: float = 0.0

    def resident(self) -> dict[str, int]:
        """Instances per model loaded now (the planner's warm start)."""
        counts: dict[str, int] = {}
        for inst in self.loaded:
            counts[inst.model] = counts.get(inst.model, 0) + 1
        return counts

    def load(self, inst: Instance, n_threads: int) -> None:
        if inst in self.loaded:
            return
        spec = self.config.models[inst.model]
        self.load_errors.pop(inst, None)
        started = time.perf_counter()
        try:
            model = get_backend(spec.backend).load(inst.model, spec, self.paths.get(inst.model),
                                                   n_threads)
        except LocalMoaError as exc:
            self.load_errors[inst] = str(exc)
            return
        self.loaded[inst] = _Loaded(model, started_at=started)
        facts = getattr(model, "runtime_facts", None)
        if facts:
            self.runtime[inst.model] = dict(facts)
        self.loads += 1
        self.load_s += model.load_s

    def unload(self, inst: Instance) -> None:
        if inst in self.busy or inst in self.abandoned:
            return  # never free a model a thread may still be using; exit frees it
        entry = self.loaded.pop(inst, None)
        if entry is not None:
            entry.model.unload()
            self.unloads += 1

    def close(self) -> None:
        """Free every model (the end of a run, or of a chat)."""
        for inst in list(self.loaded):
            self.unload(inst)
        self.workers.stop()


@dataclass
class _Execution:
    """The state of one run of a Plan on a host."""

    host: ModelHost
    conversation: Sequence[Message]
    events: RunEvents
    t0: float = field(default_factory=time.perf_counter)
    control: Control = field(default_factory=Control)

    def now(self) -> float:
        return time.perf_counter() - self.t0


def run_moa(config: Config, graph: MoaGraph, conversation: Sequence[Message], *,
            memory_budget: str | None = None, prepared: Preflight | None = None,
            events: RunEvents | None = None) -> RunReport:
    """Plan ``graph`` for this machine (unless ``prepared`` is given) and run it."""
    prepared = prepared or preflight(config, graph, memory_budget)
    return execute_plan(config, graph, conversation, prepared.plan, prepared.paths,
                        events=events)


def execute_plan(config: Config, graph: MoaGraph, conversation: Sequence[Message], plan: Plan,
                 paths: dict[str, Path], *, events: RunEvents | None = None,
                 host: ModelHost | None = None) -> RunReport:
    """Run ``graph`` on ``conversation`` exactly as ``plan`` says and return the report.

    With a ``host`` (a chat), models already loaded are used and whatever the
    plan keeps stays loaded; without one, every model is freed at the end.
    Raises LayerFailedError when a whole layer produced nothing and
    AggregatorFailedError when the aggregator failed; both carry ``report``
    with everything produced so far.
    """
    own_host = host is None
    host = host or ModelHost(config)
    host.paths.update(paths)
    ex = _Execution(host=host, conversation=conversation, events=events or RunEvents())
    start_loads, start_unloads, start_load_s = host.loads, host.unloads, host.load_s
    agents = {a.id: a for a in graph.all_agents()}
    runs: dict[str, AgentRun] = {}
    prompt = conversation[-1]["content"] if conversation else ""
    layers = [*graph.layers, [graph.aggregator]]

    with MemorySampler() as memory:

        def report(answer: str = "", error: str | None = None) -> RunReport:
            memory.sample()
            ordered = [runs[a.id] for layer in layers for a in layer if a.id in runs]
            return RunReport.build(
                profile=graph.profile, prompt=prompt, answer=answer, runs=ordered,
                wall_s=ex.now(), cores=plan.cores,
                models=_model_facts(config, graph, host.runtime),
                error=error, plan=_plan_summary(plan),
                actual={"loads": host.loads - start_loads,
                        "unloads": host.unloads - start_unloads,
                        "load_s": round(host.load_s - start_load_s, 4),
                        "peak_rss_growth_bytes": memory.peak_rss,
                        "peak_pss_growth_bytes": memory.peak_pss})

        try:
            for inst in plan.unloads_first:
                host.unload(inst)
            references: list[str] | None = None
            for number, layer in enumerate(layers, start=1):
                for wave in plan.waves_of_layer(number):
                    for inst, task in _loads_with_tasks(wave):
                        if task and ex.events.on_agent_loading:
                            ex.events.on_agent_loading(agents[task.agent])
                        host.load(inst, task.threads if task else plan.cores)
                        signals.check()  # a Ctrl-C during a load may have been swallowed
                    memory.sample()
                    _run_wave(ex, wave, agents, references, runs)
                    memory.sample()  # the wave's peak: its contexts are filled now
                    for inst in wave.unloads:
                        host.unload(inst)
                layer_runs = [runs[a.id] for a in layer]
                if number == len(layers):
                    final = layer_runs[0]
                    if not final.ok:
                        message = f"the aggregator ({final.model}) failed: {final.error}"
                        raise AggregatorFailedError(message, report(error=message))
                    return report(answer=final.answer)
                if ex.events.on_layer_done:
                    ex.events.on_layer_done(number, layer_runs)
                answers = [r.answer for r in layer_runs if r.ok]
                if not answers:
                    reasons = "; ".join(f"{r.agent}: {r.error}" for r in layer_runs)
                    message = f"every agent of layer {number} failed ({reasons})"
                    raise LayerFailedError(message, report(error=message))
                references = answers
            raise AssertionError("unreachable: the plan has no aggregator layer")
        except KeyboardInterrupt as exc:
            ex.control.stop.set()
            code = 143 if isinstance(exc, Terminated) else 130
            what = "terminated (SIGTERM)" if code == 143 else "interrupted"
            raise RunInterrupted(what, report(error=what), exit_code=code) from None
        finally:
            if own_host:
                host.close()


def _loads_with_tasks(wave: Wave) -> list[tuple[Instance, Task | None]]:
    """Each instance to load, with the task it is loaded for (its thread count)."""
    by_instance = {Instance(t.model, t.slot): t for t in wave.tasks}
    return [(inst, by_instance.get(inst)) for inst in wave.loads]


#: After its timeout, how long an agent may take to notice and stop before it is abandoned.
GRACE_S = 5.0


def _run_wave(ex: _Execution, wave: Wave, agents: dict[str, Agent],
              references: list[str] | None, results: dict[str, AgentRun]) -> None:
    """Run the wave's agents on worker threads, recording each into ``results`` as it ends;
    enforce timeouts; on Ctrl-C stop them all (what they made is kept)."""
    threads: dict[str, _Worker] = {}

    def work(task: Task) -> None:
        agent = agents[task.agent]
        inst = Instance(task.model, task.slot)
        run = AgentRun(agent=agent.id, model=agent.model, layer=agent.layer, role=_role(agent),
                       ok=False, threads=task.threads, wave=wave.index)
        entry = ex.host.loaded.get(inst)
        if entry is None or inst in ex.host.abandoned:
            run.start_s = run.end_s = round(ex.now(), 4)
            run.error = ex.host.load_errors.get(inst) or (
                f"{inst} is still busy with an agent that timed out" if inst in ex.host.abandoned
                else f"{inst} is not loaded")
        else:
            if not entry.charged:
                run.load_s, entry.charged = round(entry.model.load_s, 4), True
                if entry.started_at >= ex.t0:  # loaded during this run
                    run.load_start_s = round(entry.started_at - ex.t0, 4)
            with ex.control.lock:
                ex.host.busy.add(inst)
            try:
                run_agent(agent, entry.model, ex.host.config.models[agent.model], task.threads,
                          ex.conversation, references, ex.control, run, ex.t0,
                          ex.events.on_agent_start, ex.events.on_text)
            finally:
                with ex.control.lock:
                    ex.host.busy.discard(inst)
        with ex.control.lock:
            if task.agent in results:  # abandoned meanwhile: its report stands
                return
            results[task.agent] = run
        if ex.events.on_agent_done:
            ex.events.on_agent_done(agent, run)

    started = time.monotonic()
    for index, task in enumerate(wave.tasks):
        worker = ex.host.workers.get(index)
        worker.submit(functools.partial(work, task))
        threads[task.agent] = worker
    try:
        while True:
            waiting = [a for a, t in threads.items() if not t.idle.is_set()
                       and a not in results]
            if not waiting:
                break
            now = time.monotonic()
            for agent_id in waiting:
                timeout = agents[agent_id].timeout_s
                if timeout is None or now < started + timeout:
                    continue
                ex.control.cancelled.add(agent_id)  # it stops at its next piece of text
                if now >= started + timeout + GRACE_S:
                    _abandon(ex, agents[agent_id], wave, results)
            threads[waiting[0]].idle.wait(0.05)
            signals.check()
    except KeyboardInterrupt:
        ex.control.stop.set()  # every agent stops at its next piece of text
        for t in threads.values():
            t.idle.wait(GRACE_S)
        raise


def _abandon(ex: _Execution, agent: Agent, wave: Wave, results: dict[str, AgentRun]) -> None:
    """An agent's backend did not return after its timeout: report it and move on.
    Its instance is never touched again (not reused, not freed while in use)."""
    task = next(t for t in wave.tasks if t.agent == agent.id)
    with ex.control.lock:
        if agent.id in results:
            return
        ex.host.abandoned.add(Instance(task.model, task.slot))
        now = round(ex.now(), 4)
        results[agent.id] = AgentRun(
            agent=agent.id, model=agent.model, layer=agent.layer, role=_role(agent), ok=False,
            threads=task.threads, wave=wave.index, start_s=now, end_s=now,
            error=f"timed out after {agent.timeout_s:g} s and did not stop; abandoned")
    if ex.events.on_agent_done:
        ex.events.on_agent_done(agent, results[agent.id])


def _role(agent: Agent) -> str:
    return "aggregator" if agent.is_aggregator else "proposer"


def _plan_summary(plan: Plan) -> dict[str, Any]:
    return {"waves": len(plan.waves), "loads": plan.loads, "unloads": plan.unloads,
            "predicted_peak_bytes": plan.peak_bytes, "budget_bytes": plan.budgets}


def _model_facts(config: Config, graph: MoaGraph,
                 runtime: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    facts: dict[str, dict[str, Any]] = {}
    for name in graph.models:
        spec = config.models[name]
        facts[name] = {"backend": spec.backend, "source": spec.source.describe(),
                       "n_ctx": spec.n_ctx, "kv_type": spec.kv_type,
                       "n_gpu_layers": spec.n_gpu_layers, **runtime.get(name, {})}
    return facts
