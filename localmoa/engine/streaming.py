"""Reference streaming in a run: an aggregator that follows the proposers' wave (the
plan's ``Task.follows``) gets each proposer's answer the moment that proposer ends.

``References`` is one follower's: its PromptFeed (backends/batch.py) gets ``1. ...``,
``\\n2. ...`` in the order the proposers end (prompts.streamed_reference), and closes
with the last one, so the follower evaluates every earlier answer while the others
still write and has only the last one, and the end of its turn, left to read. When
every proposer failed, the follower is stopped (its request ends with the layer's
error, as without streaming).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..backends.batch import PromptFeed
from ..cancel import Cancel
from ..metrics import AgentRun
from ..prompts import TRIM_MARK, streamed_reference
from ..recipe import Agent


class References:
    """The answers one following agent reads, as they come."""

    def __init__(self, follower: Agent, proposers: list[Agent], cancel: Cancel) -> None:
        self.follower = follower
        self.feed = PromptFeed()
        self.cancel = cancel
        self._layer = proposers[0].layer if proposers else 0
        self._waiting = {a.id for a in proposers}
        self._lock = threading.Lock()
        self.order: list[str] = []  # local ids of the agents read, in order
        self._written: dict[str, list[str]] = {}  # what each waiting proposer wrote so far
        self._live: _Live | None = None  # the last proposer left, streaming in
        #: When the last reference came (time.monotonic): the follower's timeout counts
        #: from here, as it would from the start of its own wave.
        self.closed_at: float | None = None
        #: Called once the last reference came (the cores the proposers used are free).
        self.on_closed: Callable[[], None] | None = None

    def text(self, agent: Agent, piece: str) -> None:
        """Proposer ``agent`` wrote ``piece``."""
        with self._lock:
            if agent.id not in self._waiting:
                return
            if self._live is not None and self._live.agent == agent.id:
                self._live.write(piece)
            else:
                self._written.setdefault(agent.id, []).append(piece)

    def ended(self, agent: Agent, run: AgentRun) -> None:
        """Proposer ``agent`` ended with ``run`` (answered, failed or abandoned)."""
        with self._lock:
            if agent.id not in self._waiting:
                return
            self._waiting.discard(agent.id)
            live = self._live if self._live is not None and self._live.agent == agent.id \
                else None
            if live is not None:
                last = live.end(run.ok)
                if live.started:
                    self.order.append(agent.local_id)
            else:
                last = None
                if run.ok:
                    self.order.append(agent.local_id)
                    self.feed.append(streamed_reference(len(self.order), run.answer))
            if len(self._waiting) == 1:  # the last one left streams in as it writes
                left = next(iter(self._waiting))
                self._live = _Live(left, self.feed, len(self.order) + 1)
                self._live.write("".join(self._written.pop(left, [])))
            if self._waiting:
                return
            self.closed_at = time.monotonic()
            if not self.order:  # nothing to read: its request ends with the layer's error
                self.cancel.set(f"every agent of layer {self._layer} failed")
            self.feed.close(last)
        if self.on_closed is not None:
            self.on_closed()


class _Live:
    """The last proposer's answer as it streams into the feed: its number once it has
    written a word, whitespace at its start dropped and at its end held back (the answer
    a run keeps is stripped), `` [...]`` after it if it fails."""

    def __init__(self, agent: str, feed: PromptFeed, number: int) -> None:
        self.agent, self.feed, self.number = agent, feed, number
        self.started = False
        self._held = ""  # whitespace written last, appended once more text follows

    def write(self, piece: str) -> None:
        if not self.started:
            piece = piece.lstrip()
            if not piece:
                return
            self.started = True
            piece = streamed_reference(self.number, piece)
        text = self._held + piece
        body = text.rstrip()
        self._held = text[len(body):]
        if body:
            self.feed.append(body)

    def end(self, ok: bool) -> str | None:
        """Its answer is whole (``ok``) or cut short: the text to close the feed with."""
        return None if ok or not self.started else TRIM_MARK


def follower_references(followers: list[Agent], proposers: list[Agent],
                        cancels: dict[str, Cancel]) -> dict[str, References]:
    """Each follower's References, reading its own request's proposers."""
    return {f.id: References(f, [p for p in proposers if p.job == f.job], cancels[f.id])
            for f in followers}
