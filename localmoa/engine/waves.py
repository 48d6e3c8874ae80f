"""Running one wave: its agents on the host's threads, a driver per batch, each starting
as soon as its own instance is loaded (the wave's other loads go on meanwhile), per-agent
deadlines (each agent's Cancel), abandonment after the grace period, and Ctrl-C."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from ..agents import internal_error, run_agent
from ..backends.base import BatchedModel
from ..backends.batch import Batch
from ..cancel import INTERRUPTED
from ..errors import LocalMoaError
from ..host import Loaded
from ..memory.planner import Instance, Task, Wave
from ..metrics import AgentRun
from ..prompts import AGGREGATE_PROMPT, STAIRCASE_PROMPT
from ..recipe import Agent
from . import state
from .state import Execution, role
from .streaming import Staircase, follower_references
from .warmed import ServerStaircase, WarmedFollower

#: Loads a wave's instances, calling its argument with each one as its load ends
#: (loaded or failed), in the caller's thread.
Loader = Callable[[Callable[[Instance], None]], None]


def run_wave(ex: Execution, wave: Wave, agents: dict[str, Agent],
             references: dict[int, list[str]], results: dict[str, AgentRun],
             load: Loader | None = None) -> None:
    """Run the wave's agents on worker threads, recording each into ``results`` as it ends;
    enforce timeouts; on Ctrl-C stop them all (what they made is kept). Agents that share
    an instance as a batch each read their own stream; one more thread decodes for them.
    ``references``: each request's (``Agent.job``) answers of the previous layer. ``load``
    loads the wave's instances while its agents wait, each for its own: those of the
    first model loaded decode while the next one loads."""
    _WaveRun(ex, wave, agents, references, results).run(load)


class _WaveRun:
    """One wave's run: its agents' jobs, its batches' drivers, and the watch over them."""

    def __init__(self, ex: Execution, wave: Wave, agents: dict[str, Agent],
                 references: dict[int, list[str]], results: dict[str, AgentRun]) -> None:
        self.ex, self.wave, self.agents = ex, wave, agents
        self.references, self.results = references, results
        self.groups: dict[Instance, list[Task]] = {}
        for task in wave.tasks:
            if task.batch > 1 or (task.follows and not task.warm):  # a growing prompt:
                self.groups.setdefault(Instance(task.model, task.slot), []).append(task)
        followers = [agents[t.agent] for t in wave.tasks if t.follows]
        self.refs = follower_references(
            followers, [a for a in agents.values()
                        if any(a.layer == f.layer - 1 for f in followers)],
            {f.id: ex.control.agent(f) for f in followers}, ex.staircase)
        ex.followers = list(self.refs.values())
        self.batches = {inst: Batch(len(tasks), str(inst),
                                    on_restart=functools.partial(self.restarted, inst))
                        for inst, tasks in self.groups.items()}
        for agent_id, run in list(results.items()):  # an earlier wave's proposers
            ex.proposer_ended(agents[agent_id], run)
        self.workers: dict[str, Any] = {}  # agent id -> the thread running its job
        self.rebalanced = False  # the last batch left got every core
        self.drivers: dict[Instance, Any] = {}  # batch -> the thread decoding it
        self.started = time.monotonic()
        #: Each instance's load has ended (loaded or failed), and when.
        self.ready = {Instance(t.model, t.slot): threading.Event() for t in wave.tasks}
        self.ready_at: dict[Instance, float] = {}

    def restarted(self, inst: Instance, pid: int, reason: str, resumed: int) -> None:
        """A batch's worker was restarted (named as its load named it, once loaded)."""
        self.ex.worker_restarted(_loaded_name(self.ex, inst), pid, reason, resumed)

    def loaded(self, inst: Instance) -> None:
        """``inst``'s load has ended: its agents and its batch's driver may start."""
        self.ready_at.setdefault(inst, time.monotonic())
        if inst in self.ready:
            self.ready[inst].set()

    def run(self, load: Loader | None = None) -> None:
        ex, wave = self.ex, self.wave
        self.started = time.monotonic()  # per-agent timeouts count from here
        if load is None:
            self.release()
        try:
            for index, task in enumerate(wave.tasks):
                worker = ex.host.threads.get(index)
                worker.submit(functools.partial(self.work, task))
                self.workers[task.agent] = worker
            for index, (inst, batch) in enumerate(self.batches.items(), start=len(wave.tasks)):
                worker = ex.host.threads.get(index)
                worker.submit(functools.partial(self.drive, inst, batch,
                                                self.groups[inst][0].threads))
                self.drivers[inst] = worker
            if load is not None:
                load(self.loaded)
                self.release()
            self.watch()
        except KeyboardInterrupt:
            self.interrupted()
            raise
        except BaseException:  # a load's bug: the agents already running stop first
            ex.control.stop.set(INTERRUPTED)
            self.release()
            wait_for_all([*self.workers.values(), *self.drivers.values()], state.GRACE_S)
            raise
        finally:
            self.release()  # (none waits for ever, whatever happened)

    def release(self) -> None:
        """Every agent still waiting for its instance goes on (those whose load has not
        ended find it not loaded; after a stop, their Cancel says why)."""
        for inst in self.ready:
            self.loaded(inst)

    def work(self, task: Task) -> None:
        """One agent's job: its call on its instance (or its batch), then its report."""
        ex, agent = self.ex, self.agents[task.agent]
        inst = Instance(task.model, task.slot)
        batch = self.batches.get(inst)
        run = AgentRun(agent=agent.id, model=agent.model, layer=agent.layer, role=role(agent),
                       ok=False, threads=task.threads, wave=self.wave.index, batch=task.batch)
        try:
            self.ready[inst].wait()  # (set by the load, or at once on Ctrl-C)
            entry = (ex.host.acquire(inst, ex.control.agent(agent)) if batch is None
                     else ex.host.loaded.get(inst))
            if entry is None:
                run.start_s = run.end_s = round(ex.now(), 4)
                cancel = ex.control.agent(agent)
                run.error = (cancel.reason if cancel.is_set() else
                             ex.host.load_errors.get(inst) or f"{inst} is not loaded")
                if batch is not None:
                    batch.withdraw()
            else:
                self.call(agent, task, entry, batch, run)
        except Exception as exc:  # noqa: BLE001 - a bug here costs this agent, never the run
            run.ok = False
            run.error = internal_error(exc, f"agent {agent.id} ({agent.model})")
            run.end_s = round(ex.now(), 4)
        with ex.control.lock:
            if task.agent in self.results:  # abandoned meanwhile: its report stands
                return
            self.results[task.agent] = run
        ex.proposer_ended(agent, run)
        self.rebalance()
        ex.log("agent_done", agent=agent.id, ok=run.ok, error=run.error)
        ex.emit("on_agent_done", agent, run)

    def call(self, agent: Agent, task: Task, entry: Loaded, batch: Batch | None,
             run: AgentRun) -> None:
        """The agent's chat on ``entry``'s model (as a member of ``batch``, if any)."""
        ex = self.ex
        model: Any = entry.model
        refs = self.refs.get(agent.id)
        if batch is not None:  # a sequence of the batch: it joins with its chat
            model = batch.member(entry.model, functools.partial(ex.stopping, agent),
                                 refs.feed if refs is not None else None,
                                 self.wave.tasks.index(task))
        elif refs is not None:  # on a server: its head now, the references at the end
            kind = ServerStaircase if isinstance(refs, Staircase) else WarmedFollower
            model = kind(entry.model, refs.feed, ex.control.agent(agent))
        try:
            with ex.control.lock:  # its load is the first agent's on it, in the wave's order
                first = next(t for t in self.wave.tasks if t.model == task.model
                             and t.slot == task.slot)
                charge = first is task and not entry.charged
                entry.charged = entry.charged or charge
            if charge:
                run.load_s = round(entry.model.load_s, 4)
                if entry.started_at >= ex.t0:  # loaded during this run
                    run.load_start_s = round(entry.started_at - ex.t0, 4)
            run_agent(agent, model, ex.host.config.models[agent.model], task.threads,
                      ex.conversations[agent.job], self.references.get(agent.job),
                      ex.control, run, ex.t0,
                      functools.partial(ex.agent_start, instance=str(entry.inst)), ex.text,
                      streamed=None if refs is None else
                      STAIRCASE_PROMPT if isinstance(refs, Staircase) else AGGREGATE_PROMPT)
            if refs is not None:
                run.reference_order = list(refs.order)
        finally:
            if batch is not None:
                model.leave()
            elif ex.host.release(entry):
                ex.log("released", instance=str(Instance(task.model, task.slot)))

    def rebalance(self) -> None:
        """Once one batch is all that is left of the wave, it decodes with every core (the
        plan split them between instances; the others are done with theirs): a following
        aggregator once its last reference came, or the slowest model's proposers with it.
        An abandoned agent may still be decoding: its instance counts as busy."""
        ex = self.ex
        with ex.control.lock:
            busy = {Instance(t.model, t.slot) for t in self.wave.tasks
                    if t.agent not in self.results or t.agent in ex.abandoned_ids}
            inst = next(iter(busy)) if len(busy) == 1 else None
            batch = self.batches.get(inst) if inst is not None else None
            if inst is None or batch is None or self.rebalanced:
                return
            if (batch.threads or self.groups[inst][0].threads) >= ex.plan.cores:
                return
            self.rebalanced = True  # (once: agents end on several threads at once)
        ex.log("threads", instance=str(inst), threads=ex.plan.cores)
        batch.set_threads(ex.plan.cores)

    def drive(self, inst: Instance, batch: Batch, threads: int) -> None:
        """Decode for the agents of one batch, holding its instance meanwhile."""
        ex = self.ex
        self.ready[inst].wait()
        entry = ex.host.acquire(inst)
        if entry is None:
            batch.fail(ex.host.load_errors.get(inst) or f"{inst} is not loaded")
            return
        try:
            ex.log("batch", instance=str(inst), size=batch.size)
            cast(BatchedModel, entry.model).run_batch(batch, threads)
        except LocalMoaError as exc:  # its worker died twice: its agents stop with why
            for task in self.groups[inst]:
                self.ex.control.agent(self.agents[task.agent]).set(str(exc))
            batch.fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug costs this batch, never the run
            batch.fail(internal_error(exc, f"batch on {inst}"))
        finally:
            batch.close()
            if ex.host.release(entry):
                ex.log("released", instance=str(inst))

    def watch(self) -> None:
        """Until every agent's job has ended (its on_agent_done included) but an abandoned
        one's, and each batch's decoding while one of its agents is still waited for: an
        agent past its timeout has its Cancel set (it stops at its next piece of text), and
        one whose Cancel has been set for the grace (its timeout, its request gone) is
        abandoned."""
        ex = self.ex
        seen_at: dict[str, float] = {}  # when each agent's Cancel was first seen set
        while True:
            with ex.control.lock:
                waiting = [a for a, w in self.workers.items()
                           if not w.idle.is_set() and a not in ex.abandoned_ids]
                decoding = [w for inst, w in self.drivers.items() if not w.idle.is_set()
                            and any(t.agent not in ex.abandoned_ids for t in self.groups[inst])]
            if not waiting and not decoding:
                return
            now = time.monotonic()
            for agent_id in waiting:
                if agent_id not in self.results:
                    self.deadline(self.agents[agent_id], now, seen_at)
            (self.workers[waiting[0]] if waiting else decoding[0]).idle.wait(0.05)
            ex.check()

    def deadline(self, agent: Agent, now: float, seen_at: dict[str, float]) -> None:
        """Set ``agent``'s Cancel when its time is up; abandon it once the Cancel has been
        set for the grace period."""
        ex, timeout = self.ex, agent.timeout_s
        cancel = ex.control.agent(agent)
        task = next(t for t in self.wave.tasks if t.agent == agent.id)
        start = max(self.started, self.ready_at.get(Instance(task.model, task.slot), now))
        refs = self.refs.get(agent.id)
        if refs is not None:  # a follower's time counts once its last reference came
            start = max(start, refs.closed_at if refs.closed_at is not None else float("inf"))
        if not cancel.is_set():
            if timeout is None or now < start + timeout:
                return
            cancel.set(f"timed out after {timeout:g} s (per-agent timeout)")
        if agent.id not in seen_at:
            seen_at[agent.id] = now
        elif now >= seen_at[agent.id] + state.GRACE_S:
            why = cancel.reason
            abandon(ex, agent, self.wave, self.results, None if why.startswith("timed out")
                    else f"{why} (did not stop within {state.GRACE_S:g} s)")

    def interrupted(self) -> None:
        """Ctrl-C: every agent stops at its next piece of text; those still deaf after the
        grace are abandoned, and those that never started are reported."""
        ex = self.ex
        ex.control.stop.set(INTERRUPTED)  # every agent's Cancel sees it
        self.release()  # (after the stop: an agent that waited for its load sees it)
        for batch in self.batches.values():
            batch.abort(INTERRUPTED)  # members that never joined are not waited for
        wait_for_all([*self.workers.values(), *self.drivers.values()], state.GRACE_S)
        for task in self.wave.tasks:
            if task.agent not in self.workers:  # interrupted before it started
                with ex.control.lock:
                    self.results.setdefault(task.agent, ex.unfinished(
                        self.agents[task.agent], task, self.wave, "interrupted"))
            elif (not self.workers[task.agent].idle.is_set()
                  and task.agent not in ex.abandoned_ids):
                # deaf to the stop: its instance must not be handed out again (a chat)
                abandon(ex, self.agents[task.agent], self.wave, self.results,
                        f"interrupted (did not stop within {state.GRACE_S:g} s)")


def _loaded_name(ex: Execution, inst: Instance) -> str:
    """An instance as its load named it (a batch's with its room: ``model#0x3``)."""
    entry = ex.host.loaded.get(inst)
    return str(entry.inst if entry is not None else inst)


def wait_for_all(workers: list[Any], grace_s: float,
                  clock: Callable[[], float] = time.monotonic) -> None:
    """Wait until every worker is idle, ``grace_s`` for all of them together."""
    deadline = clock() + grace_s
    for worker in workers:
        worker.idle.wait(max(0.0, deadline - clock()))


def abandon(ex: Execution, agent: Agent, wave: Wave, results: dict[str, AgentRun],
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
    ex.proposer_ended(agent, results[agent.id])
    ex.emit("on_agent_done", agent, results[agent.id])
