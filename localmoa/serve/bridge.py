"""From the service's worker thread to an HTTP response: a run's events as an async
stream, and the run's end as an awaitable. A client that goes away cancels its run.
When the drain runs out, ``end_streams`` ends every response at once, as a run the
server stopped, without waiting for its run to see the stop (at its next token)."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from ..engine import RunEvents
from ..metrics import AgentRun
from ..recipe import Agent
from .service import Job, MoaService, Sampling, ShuttingDown

#: The end of a job's event stream.
END = "end"
#: The aggregator's agent id: its text is the reply.
AGGREGATOR = "AGG"


@dataclass
class Event:
    """One thing that happened in a run, for a client: ``kind`` and its data."""

    kind: str  # agent_loading, agent_start, text, agent_done, layer_done, end
    data: dict[str, Any] = field(default_factory=dict)
    agent: Agent | None = None


class JobStream:
    """A submitted job whose events arrive on the event loop, in order."""

    def __init__(self, service: MoaService, model: str, messages: list[Any],
                 sampling: Sampling) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.job = Job(model=model, messages=messages, sampling=sampling,
                       events=RunEvents(on_agent_loading=self._loading,
                                        on_agent_start=self._start, on_text=self._text,
                                        on_agent_done=self._done,
                                        on_layer_done=self._layer),
                       on_done=lambda job: self._put(Event(END)))
        service.submit(self.job)  # QueueFull / UnknownModel / draining: raised here
        self.service = service
        with _LIVE_LOCK:
            _LIVE.add(self)

    def _put(self, event: Event) -> None:
        if self.loop.is_closed():  # the server stopped: nobody reads this job any more
            return
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # closed in between
            return

    def end_now(self, reason: str) -> None:
        """End the response now as a run the server stopped (``ShuttingDown(reason)``),
        whatever the run does: it is cancelled, ends on its own, and what it says after
        this is read by nobody. From any thread."""
        if self.job.done.is_set():
            return  # it ended: its response has its end already
        self.job.cancel.set()
        if self.job.error is None:
            self.job.error = ShuttingDown(reason)
        self._put(Event(END))

    def _loading(self, agent: Agent) -> None:
        self._put(Event("agent_loading", {"agent": agent.id, "model": agent.model,
                                          "layer": agent.layer}, agent))

    def _start(self, agent: Agent) -> None:
        self._put(Event("agent_start", {"agent": agent.id, "model": agent.model,
                                        "layer": agent.layer}, agent))

    def _text(self, agent: Agent, text: str) -> None:
        if not text:  # nothing to show (a backend that yields while it waits)
            return
        self._put(Event("text", {"agent": agent.id, "layer": agent.layer, "text": text}, agent))

    def _done(self, agent: Agent, run: AgentRun) -> None:
        self._put(Event("agent_done", agent_dict(run), agent))

    def _layer(self, layer: int, runs: list[AgentRun]) -> None:
        self._put(Event("layer_done", {"layer": layer, "agents": len(runs),
                                       "failed": sum(not r.ok for r in runs)}))

    async def events(self) -> AsyncGenerator[Event, None]:
        """Every event until the run ends; the run is cancelled if the reader stops
        early (the client went away)."""
        try:
            while True:
                event = await self.queue.get()
                yield event
                if event.kind == END:
                    return
        finally:
            if not self.job.done.is_set():
                self.job.cancel.set()

    async def finished(self, request: Any = None) -> Job | None:
        """Wait for the run's end; None (and the run cancelled) if the client of
        ``request`` goes away first."""
        waiter = asyncio.ensure_future(self._drained())
        if request is None:
            return await waiter

        async def gone() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(gone())
        done, _ = await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            watcher.cancel()
            return waiter.result()
        self.job.cancel.set()
        waiter.cancel()
        return None

    async def _drained(self) -> Job:
        async for _ in self.events():
            pass
        return self.job


#: The streams being answered, for ``end_streams`` (weak: one answered drops out).
_LIVE: weakref.WeakSet[JobStream] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def end_streams(service: MoaService, reason: str) -> int:
    """``JobStream.end_now`` for every response of ``service`` still being written; how
    many there were."""
    with _LIVE_LOCK:
        streams = [stream for stream in _LIVE if stream.service is service]
    for stream in streams:
        stream.end_now(reason)
    return len(streams)


def agent_dict(run: AgentRun) -> dict[str, Any]:
    """An agent's metrics for a client (no answer text: that streamed already)."""
    return {"agent": run.agent, "model": run.model, "layer": run.layer, "role": run.role,
            "ok": run.ok, "error": run.error, "prompt_tokens": run.prompt_tokens,
            "completion_tokens": run.completion_tokens, "ttft_s": run.ttft_s,
            "decode_tok_per_s": run.decode_tok_per_s, "start_s": run.start_s,
            "end_s": run.end_s, "batch": run.batch, "timing": run.timing}
