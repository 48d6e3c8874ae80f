"""Executes a Plan: for each wave, load, run its agents at once, unload.

The engine decides nothing about memory or order: the Plan says which instance
of which model serves each agent, with how many threads, and when instances are
loaded and freed. Between layers it passes the references on; the aggregator's
text is streamed through the events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import get_backend
from .backends.base import GenerateOptions, LoadedModel, Message
from .config import Config
from .errors import AggregatorFailedError, LayerFailedError, LocalMoaError
from .memory.planner import Instance, Plan, Task, Wave
from .memory.probe import MemorySampler
from .metrics import AgentRun, RunReport
from .preflight import Preflight, preflight
from .prompts import agent_messages
from .recipe import Agent, MoaGraph


@dataclass
class RunEvents:
    """Callbacks the engine calls while it runs; all optional, called from worker threads."""

    on_agent_start: Callable[[Agent], None] | None = None
    on_text: Callable[[Agent, str], None] | None = None
    on_agent_done: Callable[[Agent, AgentRun], None] | None = None
    on_layer_done: Callable[[int, list[AgentRun]], None] | None = None


class Interrupted(Exception):
    """Raised inside an agent when the run is being stopped (Ctrl-C)."""


@dataclass
class _Loaded:
    model: LoadedModel
    charged: bool = False  # its load time already reported on an agent


@dataclass
class _Execution:
    """The state of one run of a Plan."""

    config: Config
    paths: dict[str, Path]
    conversation: Sequence[Message]
    events: RunEvents
    t0: float = field(default_factory=time.perf_counter)
    stop: threading.Event = field(default_factory=threading.Event)
    loaded: dict[Instance, _Loaded] = field(default_factory=dict)
    load_errors: dict[Instance, str] = field(default_factory=dict)
    runtime: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. Ollama's /api/ps
    loads: int = 0
    unloads: int = 0
    load_s: float = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def load(self, inst: Instance, n_threads: int) -> None:
        spec = self.config.models[inst.model]
        try:
            model = get_backend(spec.backend).load(inst.model, spec, self.paths.get(inst.model),
                                                   n_threads)
        except LocalMoaError as exc:
            self.load_errors[inst] = str(exc)
            return
        self.loaded[inst] = _Loaded(model)
        facts = getattr(model, "runtime_facts", None)
        if facts:
            self.runtime[inst.model] = dict(facts)
        self.loads += 1
        self.load_s += model.load_s

    def unload(self, inst: Instance) -> None:
        entry = self.loaded.pop(inst, None)
        if entry is not None:
            entry.model.unload()
            self.unloads += 1

    def close(self) -> None:
        for inst in list(self.loaded):
            self.unload(inst)


def run_moa(config: Config, graph: MoaGraph, conversation: Sequence[Message], *,
            memory_budget: str | None = None, prepared: Preflight | None = None,
            events: RunEvents | None = None) -> RunReport:
    """Plan ``graph`` for this machine (unless ``prepared`` is given) and run it."""
    prepared = prepared or preflight(config, graph, memory_budget)
    return execute_plan(config, graph, conversation, prepared.plan, prepared.paths,
                        events=events)


def execute_plan(config: Config, graph: MoaGraph, conversation: Sequence[Message], plan: Plan,
                 paths: dict[str, Path], *, events: RunEvents | None = None) -> RunReport:
    """Run ``graph`` on ``conversation`` exactly as ``plan`` says and return the report.

    Raises LayerFailedError when a whole layer produced nothing and
    AggregatorFailedError when the aggregator failed; both carry ``report``
    with everything produced so far.
    """
    ex = _Execution(config=config, paths=paths, conversation=conversation,
                    events=events or RunEvents())
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
                wall_s=ex.now(), cores=plan.cores, models=_model_facts(config, graph, ex.runtime),
                error=error, plan=_plan_summary(plan),
                actual={"loads": ex.loads, "unloads": ex.unloads, "load_s": round(ex.load_s, 4),
                        "peak_rss_growth_bytes": memory.peak_rss,
                        "peak_pss_growth_bytes": memory.peak_pss})

        try:
            references: list[str] | None = None
            for number, layer in enumerate(layers, start=1):
                for wave in plan.waves_of_layer(number):
                    for inst, task in _loads_with_tasks(wave):
                        ex.load(inst, task.threads if task else plan.cores)
                    for run in _run_wave(ex, wave, agents, references):
                        runs[run.agent] = run
                    for inst in wave.unloads:
                        ex.unload(inst)
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
        finally:
            ex.close()


def _loads_with_tasks(wave: Wave) -> list[tuple[Instance, Task | None]]:
    """Each instance to load, with the task it is loaded for (its thread count)."""
    by_instance = {Instance(t.model, t.slot): t for t in wave.tasks}
    return [(inst, by_instance.get(inst)) for inst in wave.loads]


def _run_wave(ex: _Execution, wave: Wave, agents: dict[str, Agent],
              references: list[str] | None) -> list[AgentRun]:
    def work(task: Task) -> AgentRun:
        agent = agents[task.agent]
        inst = Instance(task.model, task.slot)
        entry = ex.loaded.get(inst)
        if entry is None:
            now = round(ex.now(), 4)
            run = AgentRun(agent=agent.id, model=agent.model, layer=agent.layer,
                           role=_role(agent), ok=False, threads=task.threads, wave=wave.index,
                           error=ex.load_errors.get(inst, f"{inst} is not loaded"),
                           start_s=now, end_s=now)
            if ex.events.on_agent_done:
                ex.events.on_agent_done(agent, run)
            return run
        load_s = 0.0
        if not entry.charged:
            load_s, entry.charged = entry.model.load_s, True
        return _run_agent(ex, agent, entry.model, task, wave.index, references, load_s)

    if len(wave.tasks) == 1:
        return [work(wave.tasks[0])]
    with ThreadPoolExecutor(max_workers=len(wave.tasks), thread_name_prefix="localmoa") as pool:
        try:
            return list(pool.map(work, wave.tasks))
        except KeyboardInterrupt:
            # Inside the `with`: its exit waits for the workers, so tell them first.
            # Each stops at its next token; then the models are freed.
            ex.stop.set()
            raise


def _role(agent: Agent) -> str:
    return "aggregator" if agent.is_aggregator else "proposer"


def _run_agent(ex: _Execution, agent: Agent, model: LoadedModel, task: Task, wave: int,
               references: list[str] | None, load_s: float) -> AgentRun:
    events = ex.events
    run = AgentRun(agent=agent.id, model=agent.model, layer=agent.layer, role=_role(agent),
                   ok=False, threads=task.threads, wave=wave, load_s=round(load_s, 4))
    if events.on_agent_start:
        events.on_agent_start(agent)
    messages = agent_messages(ex.conversation, agent.system, references)
    options = GenerateOptions(temperature=agent.temperature, top_p=agent.top_p,
                              max_tokens=agent.max_tokens, seed=agent.seed,
                              n_threads=task.threads)
    run.start_s = ex.now()
    try:
        stream = model.chat(messages, options)
        for piece in stream:
            if ex.stop.is_set():
                raise Interrupted("interrupted")
            if events.on_text:
                events.on_text(agent, piece)
        text = stream.text().strip()
        stats = stream.stats
        if stats is not None:
            run.prompt_tokens = stats.prompt_tokens
            run.completion_tokens = stats.completion_tokens
            run.ttft_s = round(stats.ttft_s, 4)
            run.prompt_tok_per_s = round(stats.prompt_tok_per_s, 2)
            run.decode_tok_per_s = round(stats.decode_tok_per_s, 2)
            run.finish_reason = stats.finish_reason
        run.answer = text
        run.ok = bool(text)
        if not text:
            run.error = "empty answer"
    except Exception as exc:  # noqa: BLE001 - any agent failure is reported, not fatal
        run.error = str(exc) or type(exc).__name__
    run.end_s = round(ex.now(), 4)
    run.start_s = round(run.start_s, 4)
    if events.on_agent_done:
        events.on_agent_done(agent, run)
    return run


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
