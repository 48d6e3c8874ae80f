"""A multi-turn MoA conversation: history, models kept loaded between turns.

Every agent of every turn sees the conversation so far (user turns and the
final answers); long histories lose their oldest turns first to fit the
smallest context of the profile. Plans start warm (what the last turn left
loaded) and keep models loaded at the end, within the memory budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends.base import Message
from .config import Config
from .engine import RunEvents
from .fileio import atomic_write
from .host import ModelHost
from .metrics import RunReport
from .preflight import Preflight
from .recipe import MoaGraph, Overrides, build_graph
from .runtime import Request, Runtime

#: Share of the smallest free context the history may fill; the rest is for references.
HISTORY_SHARE = 0.5


def estimate_tokens(text: str) -> int:
    """A conservative token count without a tokenizer (about 3 characters a token)."""
    return len(text) // 3 + 4


@dataclass
class Turn:
    user: str
    report: RunReport
    dropped_turns: int = 0


@dataclass
class ChatSession:
    """The conversation and the models it keeps loaded (on its runtime: one that keeps
    models between runs, made from ``memory_budget`` unless given). ``close()`` frees
    them."""

    config: Config
    overrides: Overrides = field(default_factory=Overrides)
    memory_budget: str | None = None
    profile: str | None = None
    history: list[Message] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    runtime: Runtime | None = None
    graph: MoaGraph = field(init=False)
    prepared: Preflight = field(init=False)

    def __post_init__(self) -> None:
        if self.runtime is None:
            self.runtime = Runtime(self.config, self.memory_budget, keep_loaded=True)
        self.use_profile(self.profile)

    @property
    def host(self) -> ModelHost:
        """Where the session's models are loaded."""
        return self._runtime.host

    @property
    def _runtime(self) -> Runtime:
        assert self.runtime is not None
        return self.runtime

    def use_profile(self, name: str | None) -> None:
        """Switch recipes; the conversation goes on, the old profile's models are freed."""
        graph = build_graph(self.config, name, self.overrides)
        prepared = self._runtime.preflight(graph)  # refuses before loading
        self._runtime.free()
        self.graph, self.prepared, self.profile = graph, prepared, graph.profile

    def history_budget_tokens(self) -> int:
        free = min(self.config.models[a.model].n_ctx - a.max_tokens
                   for a in self.graph.all_agents())
        return max(0, int(free * HISTORY_SHARE))

    def conversation_for(self, text: str) -> tuple[list[Message], int]:
        """History plus the new user turn, oldest turns dropped to fit; and how many."""
        history = list(self.history)
        budget = self.history_budget_tokens() - estimate_tokens(text)
        dropped = 0
        while history and sum(estimate_tokens(m["content"]) for m in history) > budget:
            history = history[2:]  # one user turn and its answer
            dropped += 1
        return [*history, Message(role="user", content=text)], dropped

    def ask(self, text: str, events: RunEvents | None = None) -> Turn:
        """One turn. On Ctrl-C the history is unchanged and the models stay loaded."""
        conversation, dropped = self.conversation_for(text)
        # planned warm from what the last turn left loaded; an agent of an earlier turn
        # that timed out may still hold an instance: its memory is not this turn's
        report = self._runtime.run(Request(conversation, self.graph, events=events))
        turn = Turn(user=text, report=report, dropped_turns=dropped)
        self.history = [*conversation, Message(role="assistant", content=report.answer)]
        self.turns.append(turn)
        return turn

    def reset(self) -> None:
        """A new conversation (the models stay loaded)."""
        self.history, self.turns = [], []

    def save(self, path: Path) -> None:
        """The conversation and every intermediate answer of every turn, as JSON, written
        atomically. Raises OSError, or FileRefused for a path that is not a regular file."""
        doc: dict[str, Any] = {
            "profile": self.profile,
            "conversation": [dict(m) for m in self.history],
            "turns": [{"user": t.user, "answer": t.report.answer,
                       "dropped_turns": t.dropped_turns, "report": t.report.to_dict()}
                      for t in self.turns],
        }
        # atomically: a failed save (a full disk) leaves the previous one whole
        atomic_write(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._runtime.close()
