"""The live view of a run: one panel per agent, grouped by layer, text streaming in.

Each panel shows the agent's model, its state (waiting, loading, prefill,
generating, done, failed), its running tokens/s and the end of its text. Only
for a terminal; elsewhere runs print plain text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from ..engine import RunEvents
from ..metrics import AgentRun
from ..recipe import Agent, MoaGraph

STATE_STYLE = {"waiting": "dim", "loading": "yellow", "prefill": "cyan",
               "generating": "green", "done": "bold green", "failed": "bold red"}
#: Lines of each agent's text kept visible (the end of it).
TAIL_LINES = 6


@dataclass
class AgentState:
    agent: Agent
    state: str = "waiting"
    text: str = ""
    pieces: int = 0
    first_at: float | None = None
    last_at: float | None = None
    error: str | None = None
    tok_per_s: float = 0.0

    def rate(self) -> float:
        if self.tok_per_s:
            return self.tok_per_s
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return 0.0
        return (self.pieces - 1) / (self.last_at - self.first_at)


@dataclass
class LiveView:
    """Renders the agents of ``graph`` live on ``console`` (stderr)."""

    graph: MoaGraph
    console: Console
    agents: dict[str, AgentState] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _live: Live | None = None

    def __post_init__(self) -> None:
        for layer in self.graph.layers:
            for agent in layer:
                self.agents[agent.id] = AgentState(agent)

    # --- events (called from agent threads) ------------------------------------------
    def loading(self, agent: Agent) -> None:
        self._set(agent, "loading")

    def started(self, agent: Agent) -> None:
        self._set(agent, "prefill")

    def text(self, agent: Agent, piece: str) -> None:
        with self._lock:
            st = self.agents.get(agent.id)
            if st is None:
                return
            now = time.perf_counter()
            st.state, st.text, st.pieces = "generating", st.text + piece, st.pieces + 1
            st.first_at = st.first_at or now
            st.last_at = now

    def done(self, agent: Agent, run: AgentRun) -> None:
        with self._lock:
            st = self.agents.get(agent.id)
            if st is None:
                return
            st.state = "done" if run.ok else "failed"
            st.error = run.error
            st.tok_per_s = run.decode_tok_per_s
            if run.answer:
                st.text = run.answer

    def _set(self, agent: Agent, state: str) -> None:
        with self._lock:
            if agent.id in self.agents:
                self.agents[agent.id].state = state

    def events(self, base: RunEvents) -> RunEvents:
        """``base``'s callbacks, with this view's added."""

        def chain(mine: Callable[..., None],
                  theirs: Callable[..., None] | None) -> Callable[..., None]:
            if theirs is None:
                return mine

            def both(*args: Any) -> None:
                mine(*args)
                theirs(*args)
            return both

        return RunEvents(on_agent_loading=chain(self.loading, base.on_agent_loading),
                         on_agent_start=chain(self.started, base.on_agent_start),
                         on_text=chain(self.text, base.on_text),
                         on_agent_done=chain(self.done, base.on_agent_done),
                         on_layer_done=base.on_layer_done)

    # --- rendering --------------------------------------------------------------------
    def render(self) -> RenderableType:
        with self._lock:
            rows: list[RenderableType] = []
            width = max(30, self.console.width // max(len(layer) for layer in self.graph.layers)
                        - 2)
            for number, layer in enumerate(self.graph.layers, start=1):
                rows.append(Text(f"layer {number}", style="bold cyan"))
                rows.append(Columns([self._panel(self.agents[a.id], width) for a in layer]))
            return Group(*rows)

    def _panel(self, st: AgentState, width: int) -> Panel:
        style = STATE_STYLE.get(st.state, "")
        rate = f" {st.rate():.1f} tok/s" if st.pieces or st.tok_per_s else ""
        body = st.error if st.state == "failed" and st.error else st.text
        tail = "\n".join(body.strip().splitlines()[-TAIL_LINES:]) if body else ""
        return Panel(Text(tail, overflow="fold"), width=width, height=TAIL_LINES + 2,
                     title=f"[bold]{st.agent.id}[/] {escape(st.agent.model)}",
                     subtitle=f"[{style}]{st.state}[/]{rate}", title_align="left",
                     subtitle_align="right")

    # --- lifetime ---------------------------------------------------------------------
    def start(self) -> None:
        self._live = Live(get_renderable=self.render, console=self.console,
                          refresh_per_second=8, transient=False)
        self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None
