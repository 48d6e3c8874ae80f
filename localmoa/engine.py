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

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from . import constants, signals
from .agents import Control, internal_error, run_agent
from .backends.base import BatchedModel, Message
from .backends.batch import Batch
from .config import Config
from .errors import (
    AggregatorFailedError,
    LayerFailedError,
    LocalMoaError,
    RunInterrupted,
    Terminated,
)
from .eventlog import EventLog
from .host import Loaded, ModelHost
from .memory.estimate import WORKER_PROCESS_BYTES
from .memory.planner import Instance, Plan, Task, Wave
from .memory.probe import MemorySampler, format_bytes
from .metrics import AgentRun, RunReport
from .preflight import Preflight, preflight
from .recipe import Agent, MoaGraph

__all__ = ["GRACE_S", "ModelHost", "RunEvents", "execute_plan", "run_moa"]

#: After its timeout, how long an agent may take to notice and stop before it is
#: abandoned; and, on Ctrl-C, how long all agents together get to stop.
GRACE_S = 5.0


@dataclass
class RunEvents:
    """Callbacks the engine calls while it runs; all optional, called from worker threads.

    A callback that raises does not stop the run: the error becomes a warning of
    the report (with its traceback on stderr under LOCALMOA_DEBUG=1)."""

    on_agent_loading: Callable[[Agent], None] | None = None
    on_agent_start: Callable[[Agent], None] | None = None
    on_text: Callable[[Agent, str], None] | None = None
    on_agent_done: Callable[[Agent, AgentRun], None] | None = None
    on_layer_done: Callable[[int, list[AgentRun]], None] | None = None


@dataclass
class _Execution:
    """The state of one run of a Plan on a host."""

    host: ModelHost
    plan: Plan
    conversation: Sequence[Message]
    events: RunEvents
    t0: float = field(default_factory=time.perf_counter)
    control: Control = field(default_factory=Control)
    warnings: list[str] = field(default_factory=list)
    #: Held instances from before this run: the plan's budgets already leave them out.
    held_before: list[Loaded] = field(default_factory=list)
    abandoned_ids: set[str] = field(default_factory=set)
    log: EventLog = field(init=False)
    #: The text each agent has written so far (kept when it never returns).
    partial: dict[str, list[str]] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)  # agent id -> start (run clock)
    #: Why each model worker that died during the run died (one line each).
    crashes: list[str] = field(default_factory=list)
    #: Instances whose worker died: a later wave that needs one loads it afresh.
    crashed: set[Instance] = field(default_factory=set)
    crashed_pids: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.log = EventLog(constants.event_log(), self.t0)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def emit(self, name: str, *args: Any) -> None:
        """Call an event callback; one that raises becomes a warning, never a dead thread."""
        callback = getattr(self.events, name)
        if callback is None:
            return
        try:
            callback(*args)
        except Exception as exc:  # noqa: BLE001 - a display bug must not cost the run
            message = f"the {name} callback failed: " + internal_error(exc, f"{name} callback")
            with self.control.lock:
                if message not in self.warnings:
                    self.warnings.append(message)

    def stopping(self, agent: Agent) -> bool:
        """Whether ``agent`` must stop: the run is stopping or its time is up."""
        return self.control.stop.is_set() or agent.id in self.control.cancelled

    def note_crash(self, model: Any) -> None:
        """A model worker died: the run report says why, once per process."""
        process = getattr(model, "process", None)
        if process is None or process.pid in self.crashed_pids:
            return
        process.dead.wait(5)  # its reader is writing why
        self.crashed_pids.add(process.pid)
        why = process.death or f"model {model.name}'s worker died"
        self.crashes.append(why)
        self.log("worker_died", pid=process.pid, reason=why)

    def agent_start(self, agent: Agent, instance: str = "") -> None:
        self.started[agent.id] = self.now()
        self.log("prefill", agent=agent.id, model=agent.model, instance=instance)
        self.emit("on_agent_start", agent)

    def text(self, agent: Agent, piece: str) -> None:
        written = self.partial.setdefault(agent.id, [])
        if not written:
            self.log("first_text", agent=agent.id)
        written.append(piece)
        self.emit("on_text", agent, piece)

    def unfinished(self, agent: Agent, task: Task, wave: Wave, error: str) -> AgentRun:
        """The report of an agent whose call did not return: what it wrote so far."""
        now = round(self.now(), 4)
        return AgentRun(agent=agent.id, model=agent.model, layer=agent.layer,
                        role=_role(agent), ok=False, threads=task.threads, wave=wave.index,
                        batch=task.batch,
                        answer="".join(self.partial.get(agent.id, [])).strip(),
                        start_s=round(self.started.get(agent.id, now), 4), end_s=now,
                        error=error)


def run_moa(config: Config, graph: MoaGraph, conversation: Sequence[Message], *,
            memory_budget: str | None = None, prepared: Preflight | None = None,
            events: RunEvents | None = None) -> RunReport:
    """Plan ``graph`` for this machine (unless ``prepared`` is given) and run it."""
    prepared = prepared or preflight(config, graph, memory_budget)
    return execute_plan(config, graph, conversation, prepared.plan, prepared.paths,
                        events=events, runtime=prepared.runtime)


def execute_plan(config: Config, graph: MoaGraph, conversation: Sequence[Message], plan: Plan,
                 paths: dict[str, Path], *, events: RunEvents | None = None,
                 host: ModelHost | None = None,
                 runtime: dict[str, Any] | None = None) -> RunReport:
    """Run ``graph`` on ``conversation`` exactly as ``plan`` says and return the report.

    With a ``host`` (a chat), models already loaded are used and whatever the
    plan keeps stays loaded; without one, every model is freed at the end.
    ``runtime`` (e.g. the cpu_repack choice) goes into the report as it is.
    Raises LayerFailedError when a whole layer produced nothing and
    AggregatorFailedError when the aggregator failed; both carry ``report``
    with everything produced so far.
    """
    own_host = host is None
    host = host or ModelHost(config)
    host.paths.update(paths)
    ex = _Execution(host=host, plan=plan, conversation=conversation,
                    events=events or RunEvents(), held_before=list(host.held))
    host.load_errors.clear()  # a chat's earlier turns' failures are not this run's
    start_loads, start_unloads, start_load_s = host.loads, host.unloads, host.load_s
    agents = {a.id: a for a in graph.all_agents()}
    runs: dict[str, AgentRun] = {}
    prompt = conversation[-1]["content"] if conversation else ""
    layers = [*graph.layers, [graph.aggregator]]
    ex.log("run_start", profile=graph.profile, waves=len(plan.waves))

    with MemorySampler(host.worker_pids) as memory:

        def report(answer: str = "", error: str | None = None) -> RunReport:
            memory.sample()
            ordered = [runs[a.id] for layer in layers for a in layer if a.id in runs]
            ex.log("run_end", ok=error is None, error=error)
            return RunReport.build(
                profile=graph.profile, prompt=prompt, answer=answer, runs=ordered,
                wall_s=ex.now(), cores=plan.cores,
                models=_model_facts(config, graph, host.runtime),
                error=error, plan=_plan_summary(plan),
                actual={"loads": host.loads - start_loads,
                        "unloads": host.unloads - start_unloads,
                        "load_s": round(host.load_s - start_load_s, 4),
                        "peak_rss_growth_bytes": memory.peak_rss,
                        "peak_pss_growth_bytes": memory.peak_pss,
                        "abandoned_agents": len(ex.abandoned_ids),
                        "held_bytes": host.held_bytes(),
                        "workers": memory.worker_peaks(),
                        "crashed_workers": list(ex.crashes)},
                runtime=dict(runtime or {}), warnings=list(ex.warnings))

        try:
            for inst in plan.unloads_first:
                host.unload(inst)
            references: list[str] | None = None
            for number, layer in enumerate(layers, start=1):
                for wave in plan.waves_of_layer(number):
                    _load_wave(ex, wave, agents)
                    _prestart_next(ex, wave)
                    memory.sample()
                    _run_wave(ex, wave, agents, references, runs)
                    memory.sample()  # the wave's peak: its contexts are filled now
                    _clear_dead(ex)
                    for inst in wave.unloads:
                        host.unload(inst)
                layer_runs = [runs[a.id] for a in layer]
                if number == len(layers):
                    final = layer_runs[0]
                    if not final.ok:
                        message = f"the aggregator ({final.model}) failed: {final.error}"
                        raise AggregatorFailedError(message, report(error=message))
                    return report(answer=final.answer)
                ex.log("layer_done", layer=number)
                ex.emit("on_layer_done", number, layer_runs)
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
            ex.log("interrupted", signal="SIGTERM" if code == 143 else "SIGINT")
            raise RunInterrupted(what, report(error=what), exit_code=code) from None
        finally:
            ex.log.close()
            if own_host:
                host.close()


def _load_wave(ex: _Execution, wave: Wave, agents: dict[str, Agent]) -> None:
    """Load what the wave needs: the plan's loads, and a fresh instance for each one an
    abandoned agent still holds, if the budget allows it (else its agents fail)."""
    host = ex.host
    tasks = {Instance(t.model, t.slot): t for t in wave.tasks}
    _clear_dead(ex)  # a worker that died: its memory went with it
    # the keys as they were loaded: a batch's instance comes back with room for its batch
    gone = {inst: inst for inst in [*ex.crashed, *(entry.inst for entry in host.held)]}
    fresh = [gone[inst] for inst in tasks if inst not in host.loaded
             and inst not in wave.loads and inst in gone]
    loads = [inst for inst in [*wave.loads, *fresh] if inst not in host.loaded]
    over = _over_budget(ex, wave, loads) if loads else ""
    if over:
        with host.lock:
            host.released.clear()
        deadline = time.monotonic() + GRACE_S  # an abandoned agent may be about to return
        while over and time.monotonic() < deadline and host.held:
            host.released.wait(0.1)
            signals.check()
            over = _over_budget(ex, wave, loads)
    if over:
        if fresh and not _over_budget(ex, wave, list(wave.loads)):
            skipped, loads = fresh, [i for i in wave.loads if i not in host.loaded]
        else:
            skipped, loads = loads, []
        holders = ", ".join(sorted({str(e.inst) for e in host.held}))
        for inst in skipped:
            host.load_errors[inst] = (
                f"not loaded: agents that timed out still hold {holders}, and loading "
                f"{inst} as well would exceed the memory budget ({over}); it is freed "
                "when they return")
    if len(loads) > 1:
        host.prestart(loads)  # their worker processes start side by side
    for inst in loads:
        task = tasks.get(inst)
        if task and inst not in host.loaded:
            ex.emit("on_agent_loading", agents[task.agent])
        ex.log("loading", model=inst.model, instance=str(inst))
        if host.load(inst, task.threads if task else ex.plan.cores):
            model = host.loaded[inst].model
            facts = getattr(model, "runtime_facts", {})
            ex.log("loaded", model=inst.model, instance=str(inst), load_s=round(model.load_s, 4),
                   pid=getattr(model, "pid", None), prestarted=facts.get("worker_prestarted"),
                   worker_wait_s=facts.get("worker_wait_s"))
        else:
            ex.log("load_failed", model=inst.model, instance=str(inst),
                   error=host.load_errors.get(inst))
        signals.check()  # a Ctrl-C during a load may have been swallowed


def _clear_dead(ex: _Execution) -> None:
    """Drop the instances whose worker died (the report says why); a later wave that
    needs one loads it afresh."""
    for inst in ex.host.dead():
        ex.note_crash(ex.host.loaded[inst].model)
        ex.host.unload(inst)
        ex.crashed.add(inst)


def _prestart_next(ex: _Execution, wave: Wave) -> None:
    """Start the next wave's worker processes while this wave runs, where the budget
    has room for them beside this wave (each costs WORKER_PROCESS_BYTES before its load)."""
    waves = ex.plan.waves
    position = waves.index(wave)
    if position + 1 >= len(waves):
        return
    loads = waves[position + 1].loads
    budget = ex.plan.budgets.get("ram")
    if budget is not None:
        room = budget - wave.resident_bytes.get("ram", 0)
        loads = loads[:max(0, room) // WORKER_PROCESS_BYTES]
    if loads:
        ex.log("prestart", instances=[str(inst) for inst in loads])
        ex.host.prestart(loads)


def _over_budget(ex: _Execution, wave: Wave, loading: list[Instance]) -> str:
    """How the wave would exceed a pool's budget, loading ``loading``, with what
    abandoned agents hold beyond the plan ("" when it fits). A held instance counts
    unless the plan still counts its key now and no other copy takes that key."""
    host, plan = ex.host, ex.plan
    extra: dict[str, int] = {}
    with host.lock:
        held = [e for e in host.held if e not in ex.held_before]
    for entry in held:
        if (entry.inst in wave.resident and entry.inst not in loading
                and entry.inst not in host.loaded):
            continue  # the plan's own count for that key is this memory
        cost = plan.costs.get(entry.inst.model)
        if cost is None:
            continue
        shared = any(i.model == entry.inst.model for i in wave.resident)
        for pool, amount in (cost.extra if shared else cost.first).items():
            extra[pool] = extra.get(pool, 0) + amount
    over = []
    for pool, amount in extra.items():
        total = wave.resident_bytes.get(pool, 0) + amount
        if total > plan.budgets.get(pool, 0):
            over.append(f"{pool}: {format_bytes(total)} of {format_bytes(plan.budgets[pool])}"
                        if pool in plan.budgets else f"{pool}: no budget")
    return "; ".join(over)


def _run_wave(ex: _Execution, wave: Wave, agents: dict[str, Agent],
              references: list[str] | None, results: dict[str, AgentRun]) -> None:
    """Run the wave's agents on worker threads, recording each into ``results`` as it ends;
    enforce timeouts; on Ctrl-C stop them all (what they made is kept). Agents that share
    an instance as a batch each read their own stream; one more thread decodes for them."""
    workers: dict[str, Any] = {}
    groups: dict[Instance, list[Task]] = {}
    for task in wave.tasks:
        if task.batch > 1:
            groups.setdefault(Instance(task.model, task.slot), []).append(task)
    batches = {inst: Batch(len(tasks), str(inst)) for inst, tasks in groups.items()}
    drivers: dict[Instance, Any] = {}

    def work(task: Task) -> None:
        agent = agents[task.agent]
        inst = Instance(task.model, task.slot)
        batch = batches.get(inst)
        run = AgentRun(agent=agent.id, model=agent.model, layer=agent.layer, role=_role(agent),
                       ok=False, threads=task.threads, wave=wave.index, batch=task.batch)
        try:
            entry = ex.host.acquire(inst) if batch is None else ex.host.loaded.get(inst)
            if entry is None:
                run.start_s = run.end_s = round(ex.now(), 4)
                run.error = ex.host.load_errors.get(inst) or f"{inst} is not loaded"
                if batch is not None:
                    batch.withdraw()
            else:
                model: Any = entry.model
                if batch is not None:  # a sequence of the batch: it joins with its chat
                    model = batch.member(entry.model, functools.partial(ex.stopping, agent))
                try:
                    with ex.control.lock:
                        charge, entry.charged = not entry.charged, True
                    if charge:
                        run.load_s = round(entry.model.load_s, 4)
                        if entry.started_at >= ex.t0:  # loaded during this run
                            run.load_start_s = round(entry.started_at - ex.t0, 4)
                    run_agent(agent, model, ex.host.config.models[agent.model],
                              task.threads, ex.conversation, references, ex.control, run,
                              ex.t0, functools.partial(ex.agent_start, instance=str(entry.inst)),
                              ex.text)
                finally:
                    if batch is not None:
                        model.leave()
                    elif ex.host.release(entry):
                        ex.log("released", instance=str(inst))
        except Exception as exc:  # noqa: BLE001 - a bug here costs this agent, never the run
            run.ok = False
            run.error = internal_error(exc, f"agent {agent.id} ({agent.model})")
            run.end_s = round(ex.now(), 4)
        with ex.control.lock:
            if task.agent in results:  # abandoned meanwhile: its report stands
                return
            results[task.agent] = run
        ex.log("agent_done", agent=agent.id, ok=run.ok, error=run.error)
        ex.emit("on_agent_done", agent, run)

    def drive(inst: Instance, batch: Batch, threads: int) -> None:
        """Decode for the agents of one batch, holding its instance meanwhile."""
        entry = ex.host.acquire(inst)
        if entry is None:
            batch.fail(ex.host.load_errors.get(inst) or f"{inst} is not loaded")
            return
        ex.log("batch", instance=str(inst), size=batch.size)
        try:
            cast(BatchedModel, entry.model).run_batch(batch, threads)
        except LocalMoaError as exc:
            batch.fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug costs this batch, never the run
            batch.fail(internal_error(exc, f"batch on {inst}"))
        finally:
            batch.close()
            if ex.host.release(entry):
                ex.log("released", instance=str(inst))

    started = time.monotonic()
    cancelled_at: dict[str, float] = {}  # when each late agent was told to stop
    try:
        for index, task in enumerate(wave.tasks):
            worker = ex.host.threads.get(index)
            worker.submit(functools.partial(work, task))
            workers[task.agent] = worker
        for index, (inst, batch) in enumerate(batches.items(), start=len(wave.tasks)):
            worker = ex.host.threads.get(index)
            worker.submit(functools.partial(drive, inst, batch, groups[inst][0].threads))
            drivers[inst] = worker
        while True:
            # every agent's job to its end (its on_agent_done included), but an abandoned
            # one; and each batch's decoding while one of its agents is still waited for
            with ex.control.lock:
                waiting = [a for a, w in workers.items()
                           if not w.idle.is_set() and a not in ex.abandoned_ids]
                decoding = [w for inst, w in drivers.items() if not w.idle.is_set()
                            and any(t.agent not in ex.abandoned_ids for t in groups[inst])]
            if not waiting and not decoding:
                break
            now = time.monotonic()
            for agent_id in waiting:
                timeout = agents[agent_id].timeout_s
                if timeout is None or now < started + timeout or agent_id in results:
                    continue
                if agent_id not in cancelled_at:
                    cancelled_at[agent_id] = now
                    ex.control.cancelled.add(agent_id)  # it stops at its next piece of text
                elif now >= cancelled_at[agent_id] + GRACE_S:
                    _abandon(ex, agents[agent_id], wave, results)
            (workers[waiting[0]] if waiting else decoding[0]).idle.wait(0.05)
            signals.check()
    except KeyboardInterrupt:
        ex.control.stop.set()  # every agent stops at its next piece of text
        for batch in batches.values():
            batch.abort("interrupted")  # members that never joined are not waited for
        _wait_for_all([*workers.values(), *drivers.values()], GRACE_S)
        for task in wave.tasks:
            if task.agent not in workers:  # interrupted before it started
                with ex.control.lock:
                    results.setdefault(task.agent, ex.unfinished(
                        agents[task.agent], task, wave, "interrupted"))
            elif (not workers[task.agent].idle.is_set()
                  and task.agent not in ex.abandoned_ids):
                # deaf to the stop: its instance must not be handed out again (a chat)
                _abandon(ex, agents[task.agent], wave, results,
                         f"interrupted (did not stop within {GRACE_S:g} s)")
        raise


def _wait_for_all(workers: list[Any], grace_s: float,
                  clock: Callable[[], float] = time.monotonic) -> None:
    """Wait until every worker is idle, ``grace_s`` for all of them together."""
    deadline = clock() + grace_s
    for worker in workers:
        worker.idle.wait(max(0.0, deadline - clock()))


def _abandon(ex: _Execution, agent: Agent, wave: Wave, results: dict[str, AgentRun],
             error: str | None = None) -> None:
    """An agent's backend did not return after its timeout (or a Ctrl-C): report it and
    move on. Its instance is held, out of the plan, and freed when the call returns."""
    task = next(t for t in wave.tasks if t.agent == agent.id)
    inst = Instance(task.model, task.slot)
    with ex.control.lock:
        if agent.id in results or agent.id in ex.abandoned_ids:
            return
        ex.abandoned_ids.add(agent.id)
        results[agent.id] = ex.unfinished(agent, task, wave, error or (
            f"timed out after {agent.timeout_s:g} s and did not stop; abandoned (its model "
            "instance is freed when the call returns)"))
    cost = ex.plan.costs.get(task.model)
    entry = ex.host.loaded.get(inst)
    seqs = entry.inst.seqs if entry is not None else 1
    ex.host.abandon(inst, cost.instance(seqs) if cost else {})
    ex.log("abandoned", agent=agent.id, instance=str(inst))
    ex.emit("on_agent_done", agent, results[agent.id])


def _role(agent: Agent) -> str:
    return "aggregator" if agent.is_aggregator else "proposer"


def _plan_summary(plan: Plan) -> dict[str, Any]:
    return {"waves": len(plan.waves), "loads": plan.loads, "unloads": plan.unloads,
            "predicted_peak_bytes": plan.peak_bytes, "budget_bytes": plan.budgets,
            "batches": [{"wave": w.index, "layer": w.layer, "model": m, "size": n}
                        for w in plan.waves for m, n in w.batches.items()]}


def _model_facts(config: Config, graph: MoaGraph,
                 runtime: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    facts: dict[str, dict[str, Any]] = {}
    for name in graph.models:
        spec = config.models[name]
        facts[name] = {"backend": spec.backend, "source": spec.source.describe(),
                       "n_ctx": spec.n_ctx, "kv_type": spec.kv_type,
                       "n_gpu_layers": spec.n_gpu_layers, **runtime.get(name, {})}
    return facts
