"""What one run of a Plan shares between the engine's parts: the host, the plan, the
event callbacks, the Cancels agents read (cancel.py), and what the run has seen so far."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import constants, signals
from ..agents import internal_error
from ..backends.base import Message
from ..cancel import Control
from ..eventlog import EventLog
from ..host import Loaded, ModelHost
from ..memory.planner import Instance, Plan, Task, Wave
from ..metrics import AgentRun
from ..recipe import Agent
from .streaming import References, Staircase

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
    #: A batch's model worker died mid-batch and a fresh one took over (instance, why).
    on_worker_restarted: Callable[[str, str], None] | None = None


@dataclass
class Execution:
    """The state of one run of a Plan on a host."""

    host: ModelHost
    plan: Plan
    #: Each request's conversation (one, unless requests were merged: ``merge_graphs``).
    conversations: list[Sequence[Message]]
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
    #: Instances whose worker died, as they were loaded: a later wave that needs one
    #: loads it afresh, with room for its batch.
    crashed: dict[Instance, Instance] = field(default_factory=dict)
    #: Model workers that died mid-batch and were replaced (their batch resumed).
    restarts: int = 0
    #: The aggregator's text is not the answer (a judge's number): no on_text for it.
    quiet_aggregator: bool = False
    #: Each request's answers the judge chooses from (``aggregate: select``, by judge).
    candidates: dict[int, list[Any]] = field(default_factory=dict)
    #: The current wave's followers' references (reference streaming: streaming.py).
    followers: list[References | Staircase] = field(default_factory=list)
    #: A following aggregator writes in rounds as the proposers write (aggregate:
    #: staircase): its first chunk in tokens; 0: it reads the whole references.
    staircase: int = 0

    def __post_init__(self) -> None:
        self.log = EventLog(constants.event_log(), self.t0)

    def check(self) -> None:
        """Raise KeyboardInterrupt when a signal (whose exception may have been swallowed)
        or every request's Cancel says the run must stop."""
        signals.check()
        cancels = self.control.cancels  # every request's client gone: stop as Ctrl-C
        if cancels and all(self.control.dropped(j) for j in range(len(cancels))):
            raise KeyboardInterrupt

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
        """Whether ``agent`` must stop: its Cancel (the run's, its request's, its own)."""
        return self.control.agent(agent).is_set()

    def agent_start(self, agent: Agent, instance: str = "") -> None:
        self.started[agent.id] = self.now()
        self.log("prefill", agent=agent.id, model=agent.model, instance=instance)
        self.emit("on_agent_start", agent)

    def text(self, agent: Agent, piece: str) -> None:
        written = self.partial.setdefault(agent.id, [])
        if not written:
            self.log("first_text", agent=agent.id)
        written.append(piece)
        for refs in self.followers:
            refs.text(agent, piece)
        if not (self.quiet_aggregator and agent.is_aggregator):
            self.emit("on_text", agent, piece)

    def proposer_ended(self, agent: Agent, run: AgentRun) -> None:
        """An agent ended (answered, failed, abandoned): followers reading it get it now."""
        for refs in self.followers:
            refs.ended(agent, run)

    def worker_restarted(self, instance: str, pid: int, reason: str, resumed: int) -> None:
        """A batch's worker died on its own (``reason``) and a fresh one (``pid``) took over
        its ``resumed`` sequences: a crash, and a restart, of the run."""
        with self.control.lock:
            self.restarts += 1
            self.crashes.append(reason)
        self.log("worker_restarted", instance=instance, pid=pid, reason=reason,
                 sequences=resumed)
        self.emit("on_worker_restarted", instance, reason)

    def unfinished(self, agent: Agent, task: Task, wave: Wave, error: str) -> AgentRun:
        """The report of an agent whose call did not return: what it wrote so far."""
        now = round(self.now(), 4)
        return AgentRun(agent=agent.id, model=agent.model, layer=agent.layer,
                        role=role(agent), ok=False, threads=task.threads, wave=wave.index,
                        batch=task.batch,
                        answer="".join(self.partial.get(agent.id, [])).strip(),
                        start_s=round(self.started.get(agent.id, now), 4), end_s=now,
                        error=error)



def role(agent: Agent) -> str:
    return "aggregator" if agent.is_aggregator else "proposer"
