"""Runs a MoA graph: layers of concurrent proposers, then the streamed aggregator.

A llama.cpp model instance serves one agent at a time, so a layer with three
agents on the same model uses three instances (with mmap they share the weight
pages). Instances stay loaded across layers and are freed at the end.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import get_backend
from .backends.base import GenerateOptions, LoadedModel, Message
from .config import Config
from .errors import AggregatorFailedError, LayerFailedError, LocalMoaError
from .memory.planner import split_threads
from .memory.probe import cpu_cores
from .metrics import AgentRun, RunReport
from .prompts import agent_messages
from .recipe import Agent, MoaGraph
from .sources import resolve_model_path


@dataclass
class RunEvents:
    """Callbacks the engine calls while it runs; all optional, called from worker threads."""

    on_agent_start: Callable[[Agent], None] | None = None
    on_text: Callable[[Agent, str], None] | None = None
    on_agent_done: Callable[[Agent, AgentRun], None] | None = None
    on_layer_done: Callable[[int, list[AgentRun]], None] | None = None


@dataclass
class _RunContext:
    """What every layer and agent of one run shares."""

    conversation: Sequence[Message]
    cores: int
    parallel: int | None
    t0: float
    events: RunEvents
    stop: threading.Event = field(default_factory=threading.Event)

    def now(self) -> float:
        return time.perf_counter() - self.t0


class Interrupted(Exception):
    """Raised inside an agent when the run is being stopped (Ctrl-C)."""


@dataclass
class _Instance:
    model: LoadedModel
    fresh: bool = True  # its load time not yet charged to an agent


@dataclass
class ModelPool:
    """Loaded instances by model name. Loads on demand; ``close()`` frees all."""

    config: Config
    paths: dict[str, Path]
    instances: dict[str, list[_Instance]] = field(default_factory=dict)
    load_errors: dict[str, str] = field(default_factory=dict)

    def ensure(self, model: str, count: int, n_threads: int) -> list[_Instance]:
        """At least ``count`` instances of ``model``; fewer if loading fails."""
        have = self.instances.setdefault(model, [])
        while len(have) < count and model not in self.load_errors:
            spec = self.config.models[model]
            try:
                loaded = get_backend(spec.backend).load(model, spec, self.paths[model], n_threads)
            except LocalMoaError as exc:
                if not have:
                    self.load_errors[model] = str(exc)
                    raise
                break  # use the instances we have; agents will take turns
            have.append(_Instance(loaded))
        return have

    def close(self) -> None:
        for group in self.instances.values():
            for inst in group:
                inst.model.unload()
        self.instances.clear()


def run_moa(config: Config, graph: MoaGraph, conversation: Sequence[Message], *,
            events: RunEvents | None = None, cores: int | None = None,
            parallel: int | None = None) -> RunReport:
    """Run ``graph`` on ``conversation`` and return the report.

    ``parallel`` caps how many agents of a layer run at once (None: all of
    them); the cores are split among those that run together.

    Raises LayerFailedError when a whole layer produced nothing and
    AggregatorFailedError when the aggregator failed; both carry ``report``
    with everything produced so far.
    """
    cores = cores or cpu_cores()
    prompt = conversation[-1]["content"] if conversation else ""
    # Every model's file is checked before anything is loaded: a missing GGUF is
    # a configuration error, not a fault to discover halfway through a run.
    paths = {name: resolve_model_path(config, name) for name in graph.models}
    pool = ModelPool(config, paths)
    runs: list[AgentRun] = []
    ctx = _RunContext(conversation=conversation, cores=cores, parallel=parallel,
                      t0=time.perf_counter(), events=events or RunEvents())

    def report(answer: str = "", error: str | None = None) -> RunReport:
        return RunReport.build(profile=graph.profile, prompt=prompt, answer=answer, runs=runs,
                               wall_s=ctx.now(), cores=cores,
                               models=_model_facts(config, graph), error=error)

    try:
        references: list[str] | None = None
        for number, layer in enumerate(graph.layers, start=1):
            layer_runs = _run_layer(pool, layer, references, ctx)
            runs.extend(layer_runs)
            if ctx.events.on_layer_done:
                ctx.events.on_layer_done(number, layer_runs)
            answers = [r.answer for r in layer_runs if r.ok]
            if not answers:
                reasons = "; ".join(f"{r.agent}: {r.error}" for r in layer_runs)
                message = f"every agent of layer {number} failed ({reasons})"
                raise LayerFailedError(message, report(error=message))
            references = answers
        agg_runs = _run_layer(pool, [graph.aggregator], references, ctx)
        runs.extend(agg_runs)
        final = agg_runs[0]
        if not final.ok:
            message = f"the aggregator ({final.model}) failed: {final.error}"
            raise AggregatorFailedError(message, report(error=message))
        return report(answer=final.answer)
    finally:
        pool.close()


def _run_layer(pool: ModelPool, agents: list[Agent], references: list[str] | None,
               ctx: _RunContext) -> list[AgentRun]:
    width = max(1, min(len(agents), ctx.parallel or len(agents)))
    threads = split_threads(ctx.cores, width)
    # Each agent running at the same time needs its own instance of its model.
    per_model = Counter(a.model for a in agents)
    assigned: dict[str, list[_Instance]] = {}
    failed_load: dict[str, str] = {}
    for model, count in per_model.items():
        try:
            assigned[model] = pool.ensure(model, min(count, width), threads[0])
        except LocalMoaError as exc:
            failed_load[model] = str(exc)
    seen: Counter[str] = Counter()
    jobs: list[tuple[Agent, _Instance | None, int, threading.Lock | None]] = []
    locks = {id(i): threading.Lock() for group in assigned.values() for i in group}
    for i, agent in enumerate(agents):
        n_threads = threads[i % width]
        group = assigned.get(agent.model)
        inst = group[seen[agent.model] % len(group)] if group else None
        seen[agent.model] += 1
        jobs.append((agent, inst, n_threads, locks[id(inst)] if inst else None))

    def work(job: tuple[Agent, _Instance | None, int, threading.Lock | None]) -> AgentRun:
        agent, inst, n_threads, lock = job
        role = "aggregator" if agent.is_aggregator else "proposer"
        if inst is None or lock is None:
            now = round(ctx.now(), 4)
            run = AgentRun(agent=agent.id, model=agent.model, layer=agent.layer, role=role,
                           ok=False, error=failed_load.get(agent.model, "model not loaded"),
                           threads=n_threads, start_s=now, end_s=now)
            if ctx.events.on_agent_done:
                ctx.events.on_agent_done(agent, run)
            return run
        with lock:  # an instance is not thread-safe: one agent at a time
            load_s = 0.0
            if inst.fresh:
                load_s, inst.fresh = inst.model.load_s, False
            return _run_agent(agent, inst.model, references, n_threads, load_s, ctx)

    if width == 1:
        return [work(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="localmoa-agent") as ex:
        try:
            return list(ex.map(work, jobs))
        except KeyboardInterrupt:
            # Inside the `with`: its exit waits for the workers, so tell them first.
            # Each stops at its next token; then the pool frees the models.
            ctx.stop.set()
            raise


def _run_agent(agent: Agent, model: LoadedModel, references: list[str] | None,
               n_threads: int, load_s: float, ctx: _RunContext) -> AgentRun:
    events = ctx.events
    role = "aggregator" if agent.is_aggregator else "proposer"
    run = AgentRun(agent=agent.id, model=agent.model, layer=agent.layer, role=role, ok=False,
                   threads=n_threads, load_s=round(load_s, 4))
    if events.on_agent_start:
        events.on_agent_start(agent)
    messages = agent_messages(ctx.conversation, agent.system, references)
    options = GenerateOptions(temperature=agent.temperature, top_p=agent.top_p,
                              max_tokens=agent.max_tokens, seed=agent.seed, n_threads=n_threads)
    run.start_s = ctx.now()
    try:
        stream = model.chat(messages, options)
        for piece in stream:
            if ctx.stop.is_set():
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
    run.end_s = round(ctx.now(), 4)
    run.start_s = round(run.start_s, 4)
    if events.on_agent_done:
        events.on_agent_done(agent, run)
    return run


def _model_facts(config: Config, graph: MoaGraph) -> dict[str, dict[str, Any]]:
    facts: dict[str, dict[str, Any]] = {}
    for name in graph.models:
        spec = config.models[name]
        facts[name] = {"backend": spec.backend, "source": spec.source.describe(),
                       "n_ctx": spec.n_ctx, "kv_type": spec.kv_type,
                       "n_gpu_layers": spec.n_gpu_layers}
    return facts
