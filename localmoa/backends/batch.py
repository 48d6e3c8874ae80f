"""Many chats decoded together, as sequences of one model context.

The engine gives one Batch to the agents of a wave that share a model instance
and to one driver thread. Each agent joins with ``chat()`` (or ``withdraw()``s
when it will not chat: it failed or was stopped before); the driver calls the
backend's ``run_batch(batch, n_threads)``, which takes the joined sequences
with ``sequences()``, decodes them together and reports each one's progress
on its Sequence. Every agent reads its own ChatStream, as for a lone chat, and
closing that stream takes its sequence out of the batch at the next step,
without stopping the others.

A sequence may come with a ``PromptFeed``: its prompt is not whole yet (reference
streaming: the answers it reads are still being written). Its messages hold
``FEED_MARK`` once, where the feed's pieces go, in the order they come; the
decoding loop evaluates the prompt up to the mark at once and each piece as it
arrives, and the sequence starts writing once the feed is closed and the rest of
its prompt (the text after the mark) is evaluated. A batch may also take members
after it started (``Batch(joinable=True)``): the loop lets them in at its next step.

A sequence keeps the text it has written and how many tokens that took: a
backend whose decoder dies mid-batch (a model worker's crash) can resume it on a
fresh one from its prompt plus that text (``resume_text``), and an agent that
stopped early reports the tokens it produced.

Nothing here knows llama.cpp: a backend supplies the decoding loop.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

from ..errors import GenerationError
from ..types import ChatStream, GenerateOptions, GenerationStats, Message

_END = object()

#: Where a fed sequence's streamed pieces go in its messages (a private-use character
#: pair around a name no chat template or answer will hold).
FEED_MARK = "\ue000localmoa:references\ue001"


@dataclass(frozen=True)
class Write:
    """A feed item (staircase aggregation): write up to ``tokens`` tokens of the answer
    now, then stop and read what the feed brings next."""

    tokens: int


@dataclass(frozen=True)
class Turn:
    """A feed item (staircase aggregation): the answer written so far ends its turn and
    ``text`` comes as a new turn of the user's; the next ``Write`` goes on answering."""

    text: str


FeedItem = str | Write | Turn


def fed_messages(messages: Seq[Message], text: str) -> list[Message]:
    """``messages`` with ``text`` in place of a feed's mark (the prompt made whole)."""
    return [Message(role=m["role"], content=m["content"].replace(FEED_MARK, text))
            for m in messages]


class PromptFeed:
    """Text that goes on growing a waiting sequence's prompt, at ``FEED_MARK``: pieces
    appended from any thread, then ``close()`` (no more will come). Listeners are called
    on every change (a decoding loop waiting for text wakes up; a worker's relay sends it).
    A staircase's feed also holds ``Write`` and ``Turn`` items: the sequence writes part
    of its answer, then reads on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pieces: list[FeedItem] = []
        self._closed = False
        self.closed_at: float | None = None
        self._listeners: list[Callable[[], None]] = []

    def append(self, text: FeedItem) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the prompt feed is closed")
            self._pieces.append(text)
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def close(self, last: str | None = None) -> None:
        """No more pieces will come (``last``, if given, is appended first, at once)."""
        with self._lock:
            if self._closed:
                return
            if last is not None:
                self._pieces.append(last)
            self._closed = True
            self.closed_at = time.perf_counter()
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def since(self, start: int) -> tuple[list[FeedItem], bool]:
        """The pieces from number ``start`` on, and whether the feed is closed."""
        with self._lock:
            return self._pieces[start:], self._closed

    def listen(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def text(self) -> str:
        """Every piece of text so far, joined (a staircase's turns after a blank line)."""
        with self._lock:
            return "".join(p if isinstance(p, str) else "\n\n" + p.text
                           for p in self._pieces if not isinstance(p, Write))


class Sequence:
    """One agent's chat inside a batch, as the decoding loop sees it."""

    def __init__(self, index: int, messages: Seq[Message], options: GenerateOptions,
                 cancelled: Callable[[], bool] | None, feed: PromptFeed | None = None) -> None:
        self.index = index
        #: Its place among the batch's sequences as the loop starts them (its agent's
        #: place in the wave, not when its thread joined: a row's place in a step can
        #: change a near tie, so a greedy batch is reproducible only in a fixed order).
        self.place = index
        self.messages = list(messages)
        self.options = options
        self.feed = feed  # the rest of its prompt, still coming (FEED_MARK in messages)
        self.early_tokens = 0  # prompt tokens evaluated before its feed closed
        self._cancelled = cancelled
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.closed = False  # its reader stopped reading
        self.joined_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.first_text_at: float | None = None
        self.last_token_at: float | None = None
        self.sampled = 0
        self.prompt_tokens = 0
        self.shared_tokens = 0
        self.batch_size = 1
        self.done = False
        self.stats: GenerationStats | None = None
        self.written: list[str] = []  # its answer so far, as written to its reader
        self.written_tokens = 0  # tokens sampled when its last text was written
        #: Text it had written before its decoder died, and that text's tokens: the
        #: decoding goes on after it (the assistant turn starts with it).
        self.resume_text = ""
        self.resume_tokens = 0
        self.restarts = 0  # times it was resumed on a fresh decoder

    def wants_stop(self) -> bool:
        """Its agent stopped reading, timed out or the run was interrupted."""
        return self.closed or (self._cancelled is not None and self._cancelled())

    def prompt(self, tokens: int, shared: int, batch_size: int) -> None:
        """Its prompt has ``tokens`` tokens, ``shared`` of which were evaluated once for
        the ``batch_size`` sequences that share them."""
        self.prompt_tokens, self.shared_tokens, self.batch_size = tokens, shared, batch_size

    def token(self) -> None:
        """A token was sampled for it now (the first ends its prefill)."""
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        self.sampled += 1

    def write(self, text: str) -> None:
        """A piece of its answer."""
        if text and not self.done:
            if self.first_text_at is None:
                self.first_text_at = time.perf_counter()
            self.written.append(text)
            self.written_tokens = self.sampled
            self._queue.put(text)

    def finish(self, reason: str | None, completion_tokens: int) -> None:
        """It ended (``stop``, ``length`` or ``cancelled``); its reader's stream ends."""
        if self.done:
            return
        ended = time.perf_counter()
        first = self.first_token_at or ended
        whole = self.joined_at  # when its prompt was whole: a fed one's, at its close
        closed = self.feed.closed_at if self.feed is not None else None
        if closed is not None and (self.first_token_at is None or self.first_token_at >= closed):
            whole = max(whole, closed)  # (a staircase writes before: from its start)
        self.end(GenerationStats(
            prompt_tokens=self.prompt_tokens, completion_tokens=completion_tokens,
            ttft_s=max(0.0, (self.first_text_at or ended) - whole),
            prompt_s=max(0.0, first - whole), decode_s=(self.last_token_at or first) - first,
            decode_tokens=max(0, self.sampled - 1), finish_reason=reason,
            shared_tokens=self.shared_tokens, batch_size=self.batch_size,
            early_prompt_tokens=self.early_tokens))

    def end(self, stats: GenerationStats) -> None:
        """It ended with ``stats`` (a model worker measured them); its reader's stream ends."""
        if self.done:
            return
        self.done = True
        self.stats = stats
        self._queue.put(_END)

    def fail(self, message: str) -> None:
        """It failed; its reader gets GenerationError(message)."""
        if self.done:
            return
        self.done = True
        self._queue.put(GenerationError(message))


class SequenceStream(ChatStream):
    """The ChatStream of a batched sequence: what it produced is known while it runs."""

    def __init__(self, seq: Sequence) -> None:
        self.seq = seq
        super().__init__(lambda stream: _Reader(seq, stream))

    @property
    def tokens_written(self) -> int:
        """Tokens sampled for the text written so far (an agent that stopped reports them)."""
        return self.seq.written_tokens

    @property
    def restarts(self) -> int:
        """Times its decoder died and it was resumed on a fresh one."""
        return self.seq.restarts


class _Reader:
    """The pieces of one sequence, for its agent's ChatStream. An iterator with
    ``close()`` (not a generator: closing one that never started must still count)."""

    def __init__(self, seq: Sequence, stream: ChatStream) -> None:
        self.seq = seq
        self.stream = stream

    def __iter__(self) -> _Reader:
        return self

    def __next__(self) -> str:
        item = self.seq._queue.get()
        if item is _END:
            self.stream.stats = self.seq.stats
            self.seq._queue.put(_END)  # a second read ends again
            raise StopIteration
        if isinstance(item, BaseException):
            self.seq._queue.put(item)
            raise item
        return str(item)

    def close(self) -> None:
        self.seq.closed = True  # the loop drops it at its next step


class Batch:
    """The meeting point of ``size`` agents and the thread that decodes for them."""

    def __init__(self, size: int, name: str = "",
                 on_restart: Callable[[int, str, int], None] | None = None,
                 joinable: bool = False) -> None:
        self.size = size
        self.name = name
        #: Members may join after the decoding started (they wait in ``_late``).
        self.joinable = joinable
        self._late: list[Sequence] = []
        self._wake: list[Callable[[], None]] = []
        #: Threads its decoding should use from its next step on (0: what the driver was
        #: given); the engine raises it when the cores of the agents beside it free up.
        self.threads = 0
        self._on_threads: list[Callable[[int], None]] = []
        #: Called when the backend restarted its dead decoder and resumes the sequences
        #: (new pid, why the old one died, sequences resumed): the engine counts it.
        self.on_restart = on_restart
        self._cond = threading.Condition()
        self._seqs: list[Sequence] = []
        self._withdrawn = 0
        self._started = False
        self._error: str | None = None

    # --- the agents' side -------------------------------------------------------------
    def chat(self, messages: Seq[Message], options: GenerateOptions,
             cancelled: Callable[[], bool] | None = None,
             feed: PromptFeed | None = None, place: int | None = None) -> ChatStream:
        """Join: the answer streams once every member has joined or withdrawn (a
        joinable batch that already started takes it at its next step). ``place``
        orders the sequences as the loop starts them (default: as they joined)."""
        with self._cond:
            if self._error is not None:
                raise GenerationError(self._error)
            late = self._started or len(self._seqs) + self._withdrawn >= self.size
            if late and not (self.joinable and self._started):
                raise GenerationError(f"{self.name}: the batch already started")
            seq = Sequence(len(self._seqs), messages, options, cancelled, feed)
            if place is not None:
                seq.place = place
            self._seqs.append(seq)
            if late:
                self._late.append(seq)
            wake = list(self._wake)
            self._cond.notify_all()
        for listener in wake:
            listener()
        return SequenceStream(seq)

    def withdraw(self) -> None:
        """A member that will not chat (it failed or was stopped before)."""
        with self._cond:
            self._withdrawn += 1
            self._cond.notify_all()

    def member(self, model: Any, cancelled: Callable[[], bool] | None = None,
               feed: PromptFeed | None = None, place: int | None = None) -> Member:
        """What one agent uses as its model: chats join this batch (with ``feed``, its
        prompt's streamed rest; ``place``: its sequence's place, see ``chat``)."""
        return Member(self, model, cancelled, feed, place)

    # --- the driver's side ------------------------------------------------------------
    def sequences(self) -> list[Sequence]:
        """The joined sequences, once every member has joined or withdrawn (or the
        batch was aborted). Later joins are refused."""
        with self._cond:
            self._cond.wait_for(lambda: self._started or self._error is not None
                                or len(self._seqs) + self._withdrawn >= self.size)
            self._started = True
            return [] if self._error is not None else sorted(self._seqs, key=lambda s: s.place)

    def late(self) -> list[Sequence]:
        """Members that joined since the decoding started (each is handed out once)."""
        with self._cond:
            late, self._late = self._late, []
            return late

    def seal(self) -> None:
        """A joinable batch takes no more members: its loop ends once its last one has."""
        with self._cond:
            self.joinable = False
            wake = list(self._wake)
        for listener in wake:
            listener()

    def set_threads(self, n: int) -> None:
        """Decode with ``n`` threads from the next step on."""
        with self._cond:
            self.threads = n
            listeners = list(self._on_threads)
        for listener in listeners:
            listener(n)

    def on_threads(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(n)`` when the threads change (a worker's relay sends it on)."""
        with self._cond:
            self._on_threads.append(listener)

    def on_join(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` when a member joins (a waiting loop wakes up)."""
        with self._cond:
            self._wake.append(listener)

    def restarted(self, pid: int, reason: str, resumed: int) -> None:
        """The decoder died (``reason``) and a fresh one (``pid``) resumes ``resumed``
        sequences."""
        if self.on_restart is not None:
            self.on_restart(pid, reason, resumed)

    def abort(self, message: str) -> None:
        """Stop waiting for members (an interrupt); members still to join get ``message``."""
        with self._cond:
            if self._error is None:
                self._error = message
            self._cond.notify_all()

    def fail(self, message: str) -> None:
        """Every member, joined or still to join, fails with ``message``."""
        self.abort(message)
        self.close(message)

    def close(self, message: str | None = None) -> None:
        """The driver is done: any sequence not finished fails (the loop died)."""
        with self._cond:
            self._started = True
            self.joinable = False  # nothing decodes for a member that joins now
            seqs = list(self._seqs)
        for seq in seqs:
            seq.fail(message or f"{self.name}: batched decoding ended without finishing "
                     "this sequence")


class Member:
    """One agent's view of a batch: ``chat`` joins it; the tokenizer is the model's."""

    def __init__(self, batch: Batch, model: Any, cancelled: Callable[[], bool] | None,
                 feed: PromptFeed | None = None, place: int | None = None) -> None:
        self.batch = batch
        self.model = model
        self.cancelled = cancelled
        self.feed = feed
        self.place = place
        self.joined = False
        self.left = False

    def chat(self, messages: Seq[Message], options: GenerateOptions) -> ChatStream:
        self.joined = True
        return self.batch.chat(messages, options, self.cancelled, self.feed, self.place)

    def __getattr__(self, name: str) -> Any:
        if name in ("count_tokens", "cut_tokens"):  # the model's tokenizer, where it has one
            return getattr(self.model, name)
        raise AttributeError(name)

    def leave(self) -> None:
        """The agent is done: withdraw if it never joined."""
        if not self.joined and not self.left:
            self.left = True
            self.batch.withdraw()
