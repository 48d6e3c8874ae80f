"""What a run shows while it runs: a spinner, or the live view, or plain layer
answers; then the final answer streaming to stdout. Shared by run and chat."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from types import TracebackType
from typing import Any

from ..engine import RunEvents
from ..metrics import AgentRun
from ..recipe import Agent, MoaGraph
from ._live import LiveView
from ._output import Output


class RunDisplay:
    """Context manager giving the RunEvents for one run of ``graph``.

    ``show_layers``: each layer's answers, as the live view on a terminal (both
    stdout and stderr), else printed plainly to stderr when the layer ends.
    """

    def __init__(self, out: Output, graph: MoaGraph, *, show_layers: bool) -> None:
        self.out = out
        self.graph = graph
        self.show_layers = show_layers and not out.json_mode
        self.live: LiveView | None = None
        if self.show_layers and sys.stdout.isatty() and out.err.is_terminal:
            self.live = LiveView(graph, out.err)
        self.streamed = False
        self._done: set[str] = set()
        self._spinner = ExitStack()
        self._status: Any = None

    def __enter__(self) -> RunDisplay:
        if self.live is not None:
            self.live.start()
        else:
            self._status = self._spinner.enter_context(self.out.status(self._label("layer 1")))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop_progress()

    def _stop_progress(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        self._spinner.close()
        self._status = None

    def _label(self, message: str) -> str:
        return f"[bold]{self.graph.profile}[/]: {message}"

    def _show(self, message: str) -> None:
        if self._status is not None and not self.streamed:
            self._status.update(self._label(message))

    # --- events -----------------------------------------------------------------------
    def events(self) -> RunEvents:
        base = RunEvents(on_agent_start=self._on_agent_start, on_text=self._on_text,
                         on_agent_done=self._on_agent_done, on_layer_done=self._on_layer_done)
        return self.live.events(base) if self.live is not None else base

    def _on_agent_done(self, agent: Agent, run: AgentRun) -> None:
        if agent.is_aggregator:
            return
        self._done.add(agent.id)
        layer = self.graph.layers[agent.layer - 1]
        finished = sum(1 for a in layer if a.id in self._done)
        self._show(f"layer {agent.layer} of {len(self.graph.layers)}: "
                   f"{finished}/{len(layer)} agents done")

    def _on_layer_done(self, layer: int, runs: list[AgentRun]) -> None:
        if self.show_layers and self.live is None:
            self.out.layer_answers(layer, runs)
        total = len(self.graph.layers)
        final = (
            "the judge reads the answers"
            if self.graph.select is not None and self.graph.select.by == "judge"
            else "aggregating (reading the references)"
        )
        self._show(f"layer {layer + 1} of {total}" if layer < total else final)

    def _on_agent_start(self, agent: Agent) -> None:
        if agent.is_aggregator and self.live is not None:
            self._stop_progress()  # the answer streams below the finished panels
        if agent.is_aggregator and self.show_layers:
            self.out.rule(f"answer ({agent.model})")

    def _on_text(self, agent: Agent, piece: str) -> None:
        if not agent.is_aggregator or self.graph.aggregate == "select":
            return  # a judge's number is not the answer (the engine sends none)
        if not self.streamed:
            self.streamed = True
            self._stop_progress()  # the answer takes the terminal from here
        self.out.stream(piece)
