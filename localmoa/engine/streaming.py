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

from ..backends.batch import PromptFeed, Turn, Write
from ..cancel import Cancel
from ..metrics import AgentRun
from ..profile_spec import STAIRCASE_CHUNK_TOKENS
from ..prompts import STAIRCASE_MORE, TRIM_MARK, streamed_reference
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
                        cancels: dict[str, Cancel], staircase: int = 0
                        ) -> dict[str, References | Staircase]:
    """Each follower's References, or with ``staircase`` (its first chunk, in tokens) its
    Staircase, reading its own request's proposers."""
    def mine(f: Agent) -> list[Agent]:
        return [p for p in proposers if p.job == f.job]

    if staircase:
        return {f.id: Staircase(f, mine(f), cancels[f.id], staircase) for f in followers}
    return {f.id: References(f, mine(f), cancels[f.id]) for f in followers}


#: Staircase aggregation's chunk schedule: the aggregator reads this many tokens of
#: every live proposer (about 4 characters a token), writes as many of its answer, and
#: each later round doubles both: a small first step for an early first token, longer
#: ones after for fewer rounds (the paper's chunk size scheduling). A profile's
#: ``staircase_chunk`` (``--staircase-chunk``) sets the first.
FIRST_CHUNK_TOKENS = STAIRCASE_CHUNK_TOKENS
CHARS_PER_TOKEN = 4


class Staircase:
    """Staircase aggregation (Wang et al. 2025): the aggregator starts writing after the
    first chunk of every live proposer and writes one chunk of its answer per round, each
    round reading the next chunk of every proposer (a new turn of the user's), until they
    have all ended; then it writes to its end. The proposers' text is numbered by agent
    and stays in place: later rounds say which answer each part continues."""

    def __init__(self, follower: Agent, proposers: list[Agent], cancel: Cancel,
                 first_chunk: int = FIRST_CHUNK_TOKENS) -> None:
        self.follower = follower
        self.first_chunk = first_chunk
        self.feed = PromptFeed()
        self.cancel = cancel
        self._layer = proposers[0].layer if proposers else 0
        self._agents = [a.id for a in proposers]
        self._local = {a.id: a.local_id for a in proposers}
        self._text = {a.id: "" for a in proposers}
        self._sent = {a.id: 0 for a in proposers}
        self._ended: set[str] = set()
        self._lock = threading.Lock()
        self.round = 0  # rounds written so far
        self._first_sent = False  # the first user turn has parts already
        self.order: list[str] = []  # local ids of the answers read, as they first came
        self.closed_at: float | None = None

    def text(self, agent: Agent, piece: str) -> None:
        with self._lock:
            if agent.id in self._text and agent.id not in self._ended:
                self._text[agent.id] += piece
                self._step()

    def ended(self, agent: Agent, run: AgentRun) -> None:
        with self._lock:
            if agent.id not in self._text or agent.id in self._ended:
                return
            self._ended.add(agent.id)
            if not run.ok and not self._sent[agent.id]:
                self._text[agent.id] = ""  # a failed answer not read yet is not read
            if len(self._ended) < len(self._agents):
                if self.round == 0:  # ended before the first round: read it whole now
                    self._emit_ended(agent.id)
                self._step()
                return
            self._emit(final=True)
            self.closed_at = time.monotonic()
            if not self.order:
                self.cancel.set(f"every agent of layer {self._layer} failed")
            self.feed.close()

    def chunk_tokens(self) -> int:
        return self.first_chunk << self.round

    def _step(self) -> None:
        """A round, once every live proposer has a whole chunk more to read."""
        need = self.chunk_tokens() * CHARS_PER_TOKEN
        live = [a for a in self._agents if a not in self._ended]
        if any(len(self._text[a]) - self._sent[a] < need for a in live):
            return
        self._emit(final=False)

    def _emit_ended(self, agent: str) -> None:
        """A proposer that ended before the first round: its whole answer, numbered, in
        the first user turn at once (the others' first parts follow it)."""
        new = self._text[agent][self._sent[agent]:].strip()
        self._sent[agent] = len(self._text[agent])
        if new:
            self.order.append(self._local[agent])
            number = self._agents.index(agent) + 1
            self.feed.append(("\n" if self._first_sent else "") + f"{number}. {new}")
            self._first_sent = True

    def _emit(self, final: bool) -> None:
        parts = []
        for number, agent in enumerate(self._agents, start=1):
            new = self._text[agent][self._sent[agent]:]
            first = self._sent[agent] == 0
            self._sent[agent] = len(self._text[agent])
            new = new.lstrip() if first else new
            if final or agent in self._ended:
                new = new.rstrip()
            if not new:
                continue
            if first:
                self.order.append(self._local[agent])
            ended = ", its end" if agent in self._ended else ""
            parts.append(f"{number}. {new}" if self.round == 0 else
                         f"{number} (continued{ended}): {new}")
        if parts:
            text = "\n".join(parts)
            if self.round == 0:
                self.feed.append(("\n" if self._first_sent else "") + text)
                self._first_sent = True
            else:
                self.feed.append(Turn(STAIRCASE_MORE + "\n" + text))
        if not final:
            self.feed.append(Write(self.chunk_tokens()))
            self.round += 1
