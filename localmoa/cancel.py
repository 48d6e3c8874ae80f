"""Cancellation: one object per job, through which everything that must stop it reaches
its agents.

A ``Cancel`` is set once, with why. Who sets one:

- a request's own (``runtime.Request.cancel``): serve when its client goes away or the
  drain runs out;
- the run's (``Control.stop``): the engine, on Ctrl-C or SIGTERM (the signal handler
  only sets a flag and raises in the main thread; the engine turns it into this), or
  when every request of the run is gone;
- an agent's (``Control.agent``): the engine's watch, when the agent's time is up; the
  instance it holds, when its model dies under it (``occupancy.Occupancy.fail``: a
  worker killed by the OOM killer or a native crash, with the crash line); the batch's
  driver, when its batch fails (a worker that died twice).

An agent's Cancel sees its request's and the run's, so each agent reads exactly one
object: between two pieces of text (``Control.check``), and a batch's decoder between
steps (the sequence of a stopped agent leaves). The backends' own mechanisms are
triggered from it: a stopped agent closes its stream (a model worker gets ``cancel``,
and is killed if deaf to it); an agent still running ``GRACE_S`` after its Cancel was
set is abandoned (``host.abandon`` kills its worker); a run stopped by a signal aborts
its batches.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .recipe import Agent

#: Why a job stopped when a person or a client stopped it (Ctrl-C, SIGTERM, a client
#: gone): what its agents' reports say.
INTERRUPTED = "interrupted"


class Stopped(Exception):
    """The agent was told to stop (run interrupted, or its timeout passed)."""


class Flag(Protocol):
    """Anything that says whether it is set (a ``Cancel``, a ``threading.Event``)."""

    def is_set(self) -> bool: ...


class Cancel:
    """Set once, with why; read by everything that runs the job. ``parents``: the Cancels
    (or events) that stop this one too; theirs is the reason then.

    Never set one from a signal handler: it takes a lock the interrupted code may hold.
    """

    __slots__ = ("_event", "_parents", "_reason")

    def __init__(self, *parents: Flag | None) -> None:
        self._event = threading.Event()
        self._parents = tuple(p for p in parents if p is not None)
        self._reason = ""

    def set(self, reason: str = INTERRUPTED) -> None:
        """Stop the job (the first reason given is kept)."""
        if not self._event.is_set():
            self._reason = self._reason or reason
            self._event.set()

    def is_set(self) -> bool:
        """Whether this, or one of its parents, was set (read for every piece of text)."""
        if self._event.is_set():
            return True
        for parent in self._parents:  # noqa: SIM110 - a third of any()'s cost, per piece
            if parent.is_set():
                return True
        return False

    @property
    def reason(self) -> str:
        """Why it stopped ("" while it runs): a parent's reason before its own, since
        what stops the whole job (Ctrl-C, a client gone) explains more than a timeout."""
        for parent in self._parents:
            if parent.is_set():
                return getattr(parent, "reason", INTERRUPTED) or INTERRUPTED
        return self._reason if self._event.is_set() else ""

    def check(self) -> None:
        """Raise Stopped(reason) once it is set."""
        if self.is_set():
            raise Stopped(self.reason)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until this one itself is set (not its parents); whether it is."""
        return self._event.wait(timeout_s)


@dataclass
class Control:
    """The Cancels of one run, shared by the engine and its agents' threads: the run's
    (``stop``), each request's (``cancels``, the runtime's ``Request.cancel``), and each
    agent's (made on first use, stopped by either of those or by its own timeout)."""

    stop: Cancel = field(default_factory=Cancel)  # the whole run
    #: Per request of a merged run (``Agent.job``): set when it must stop (client gone).
    cancels: list[Flag | None] = field(default_factory=list)
    #: Guards what the engine's threads share about the run (its results, warnings).
    lock: threading.Lock = field(default_factory=threading.Lock)
    agents: dict[str, Cancel] = field(default_factory=dict)
    _making: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def agent(self, agent: Agent) -> Cancel:
        """The Cancel ``agent`` reads: its own, under its request's and the run's."""
        cancel = self.agents.get(agent.id)
        if cancel is None:
            with self._making:
                cancel = self.agents.get(agent.id)
                if cancel is None:
                    job = self.cancels[agent.job] if agent.job < len(self.cancels) else None
                    cancel = self.agents[agent.id] = Cancel(self.stop, job)
        return cancel

    def dropped(self, job: int) -> bool:
        """Whether request ``job`` was cancelled."""
        cancel = self.cancels[job] if job < len(self.cancels) else None
        return cancel is not None and cancel.is_set()

    def check(self, agent: Agent) -> None:
        """Raise Stopped(why) when ``agent`` must stop."""
        self.agent(agent).check()
