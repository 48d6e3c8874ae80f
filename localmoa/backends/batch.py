"""Many chats decoded together, as sequences of one model context.

The engine gives one Batch to the agents of a wave that share a model instance
and to one driver thread. Each agent joins with ``chat()`` (or ``withdraw()``s
when it will not chat: it failed or was stopped before); the driver calls the
backend's ``run_batch(batch, n_threads)``, which takes the joined sequences
with ``sequences()``, decodes them together and reports each one's progress
on its Sequence. Every agent reads its own ChatStream, as for a lone chat, and
closing that stream takes its sequence out of the batch at the next step,
without stopping the others.

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
from typing import Any

from ..errors import GenerationError
from ..types import ChatStream, GenerateOptions, GenerationStats, Message

_END = object()


class Sequence:
    """One agent's chat inside a batch, as the decoding loop sees it."""

    def __init__(self, index: int, messages: Seq[Message], options: GenerateOptions,
                 cancelled: Callable[[], bool] | None) -> None:
        self.index = index
        self.messages = list(messages)
        self.options = options
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
        self.end(GenerationStats(
            prompt_tokens=self.prompt_tokens, completion_tokens=completion_tokens,
            ttft_s=(self.first_text_at or ended) - self.joined_at,
            prompt_s=first - self.joined_at, decode_s=(self.last_token_at or first) - first,
            decode_tokens=max(0, self.sampled - 1), finish_reason=reason,
            shared_tokens=self.shared_tokens, batch_size=self.batch_size))

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
                 on_restart: Callable[[int, str, int], None] | None = None) -> None:
        self.size = size
        self.name = name
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
             cancelled: Callable[[], bool] | None = None) -> ChatStream:
        """Join: the answer streams once every member has joined or withdrawn."""
        with self._cond:
            if self._error is not None:
                raise GenerationError(self._error)
            if self._started or len(self._seqs) + self._withdrawn >= self.size:
                raise GenerationError(f"{self.name}: the batch already started")
            seq = Sequence(len(self._seqs), messages, options, cancelled)
            self._seqs.append(seq)
            self._cond.notify_all()
        return SequenceStream(seq)

    def withdraw(self) -> None:
        """A member that will not chat (it failed or was stopped before)."""
        with self._cond:
            self._withdrawn += 1
            self._cond.notify_all()

    def member(self, model: Any, cancelled: Callable[[], bool] | None = None) -> Member:
        """What one agent uses as its model: chats join this batch."""
        return Member(self, model, cancelled)

    # --- the driver's side ------------------------------------------------------------
    def sequences(self) -> list[Sequence]:
        """The joined sequences, once every member has joined or withdrawn (or the
        batch was aborted). Later joins are refused."""
        with self._cond:
            self._cond.wait_for(lambda: self._started or self._error is not None
                                or len(self._seqs) + self._withdrawn >= self.size)
            self._started = True
            return [] if self._error is not None else list(self._seqs)

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
            seqs = list(self._seqs)
        for seq in seqs:
            seq.fail(message or f"{self.name}: batched decoding ended without finishing "
                     "this sequence")


class Member:
    """One agent's view of a batch: ``chat`` joins it; the tokenizer is the model's."""

    def __init__(self, batch: Batch, model: Any, cancelled: Callable[[], bool] | None) -> None:
        self.batch = batch
        self.model = model
        self.cancelled = cancelled
        self.joined = False
        self.left = False

    def chat(self, messages: Seq[Message], options: GenerateOptions) -> ChatStream:
        self.joined = True
        return self.batch.chat(messages, options, self.cancelled)

    def __getattr__(self, name: str) -> Any:
        if name in ("count_tokens", "cut_tokens"):  # the model's tokenizer, where it has one
            return getattr(self.model, name)
        raise AttributeError(name)

    def leave(self) -> None:
        """The agent is done: withdraw if it never joined."""
        if not self.joined and not self.left:
            self.left = True
            self.batch.withdraw()
