"""A following aggregator on a server that reads only whole prompts (the plan's
``Task.warm``): its prompt's head goes out at once, as a warm-up request of one token,
so that the server's prompt cache (llama-server's ``cache_prompt``, an Ollama slot)
holds it; once every proposer has ended, its whole prompt goes out, the references in
finishing order after that head, and the server evaluates only what is new.

The layout is reference streaming's (prompts.streamed_messages): everything known at
the start first, the references last, so the head is a prefix of the whole prompt.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..backends.base import ChatStream, GenerateOptions, GenerationStats, LoadedModel, Message
from ..backends.batch import PromptFeed, Turn, Write, fed_messages
from ..cancel import Cancel
from ..errors import LocalMoaError

#: How often a follower waiting for its references looks at its Cancel (the feed's
#: close wakes it at once).
CANCEL_POLL_S = 0.05


class WarmedFollower:
    """``model`` as a follower sees it: ``chat`` sends the head, waits for ``feed`` to
    close, then chats with the whole prompt. Everything else is ``model``'s."""

    def __init__(self, model: LoadedModel, feed: PromptFeed, cancel: Cancel) -> None:
        self._model, self._feed, self._cancel = model, feed, cancel
        self.warm_error: str | None = None  # why the warm-up failed (it is only a hint)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def chat(self, messages: Sequence[Message], options: GenerateOptions) -> ChatStream:
        self._warm_up(fed_messages(messages, ""), options)
        self._wait_for_references()
        return self._model.chat(fed_messages(messages, self._feed.text()), options)

    def _warm_up(self, head: list[Message], options: GenerateOptions) -> None:
        """One request of one token on the head: the server keeps its prompt; the
        token is dropped. A failure here costs the cache, never the answer."""
        warm = dataclasses.replace(options, max_tokens=1, temperature=0.0,
                                   json_schema=None, stop=())
        try:
            stream = self._model.chat(head, warm)
            try:
                for _ in stream:
                    self._cancel.check()
            finally:
                stream.close()
        except LocalMoaError as exc:
            self.warm_error = str(exc)

    def _wait_for_references(self) -> None:
        """Until every proposer has ended (the feed closes), or the agent must stop."""
        changed = threading.Event()  # set on every piece: cleared before each look
        self._feed.listen(changed.set)
        while True:
            changed.clear()
            if self._feed.closed_at is not None:
                break
            self._cancel.check()
            changed.wait(CANCEL_POLL_S)
        self._cancel.check()


class ServerStaircase(WarmedFollower):
    """A staircase aggregator (streaming.Staircase) on a server that reads only whole
    prompts: after the warm-up, each round sends the grown prompt again (every turn so
    far, its own words as assistant turns) and writes that round's tokens; the server's
    prompt cache holds what it read before (against llama-server, 4 rounds re-evaluated
    3 of 555 tokens: benchmarks/README.md). The answer is the rounds' text, in order."""

    def chat(self, messages: Sequence[Message], options: GenerateOptions) -> ChatStream:
        return ChatStream(lambda stream: self._rounds(stream, list(messages), options))

    def _rounds(self, stream: ChatStream, messages: list[Message],
                options: GenerateOptions) -> Iterator[str]:
        self._warm_up(fed_messages(messages, ""), options)
        talk = _Talk(messages)
        rounds = _Tally(options.max_tokens)
        changed = threading.Event()
        self._feed.listen(changed.set)
        taken = 0
        while rounds.left > 0:
            changed.clear()
            items, closed = self._feed.since(taken)
            taken += len(items)
            for item in items:
                if not isinstance(item, Write):
                    talk.read(item)
                    continue
                yield from rounds.write(self._model, talk, options, item.tokens)
                if rounds.ended:
                    break
            if rounds.ended or (closed and not self._feed.since(taken)[0]):
                break
            self._cancel.check()
            if not items:
                changed.wait(CANCEL_POLL_S)
        if not rounds.ended and rounds.left > 0:  # every proposer ended: to its end
            self._cancel.check()
            yield from rounds.write(self._model, talk, options, rounds.left)
        stream.stats = rounds.stats()


class _Talk:
    """The staircase's chat so far: the head with the first parts at the feed's mark,
    then its own words and the later parts as turns."""

    def __init__(self, messages: list[Message]) -> None:
        self.head, self.first = messages, ""
        self.turns: list[Message] = []
        self.written = ""  # its words since the last user turn

    def read(self, item: str | Turn) -> None:
        text = item.text if isinstance(item, Turn) else item
        if self.written:  # its answer so far ends its turn; the parts are a new one
            self.turns += [Message(role="assistant", content=self.written),
                           Message(role="user", content=text)]
            self.written = ""
        elif self.turns:
            last = self.turns[-1]
            self.turns[-1] = Message(role="user", content=last["content"] + "\n\n" + text)
        else:
            self.first += text if not self.first or not isinstance(item, Turn) \
                else "\n\n" + text

    def messages(self) -> list[Message]:
        """The request now: its words since the last turn as the answer to continue."""
        tail = [Message(role="assistant", content=self.written)] if self.written else []
        return fed_messages(self.head, self.first) + self.turns + tail


class _Tally:
    """The rounds' requests: what they wrote and cost."""

    def __init__(self, max_tokens: int) -> None:
        self.left, self.ended = max_tokens, False
        self.started = time.perf_counter()
        self.first_at: float | None = None
        self.completion = 0
        self.last: GenerationStats | None = None

    def write(self, model: LoadedModel, talk: _Talk, options: GenerateOptions,
              tokens: int) -> Iterator[str]:
        """One round: up to ``tokens`` more of the answer."""
        n = min(tokens, self.left)
        inner = model.chat(talk.messages(), dataclasses.replace(options, max_tokens=n))
        try:
            for piece in inner:
                if self.first_at is None and piece:
                    self.first_at = time.perf_counter()
                talk.written += piece
                yield piece
        finally:
            inner.close()
        stats = inner.stats
        self.last = stats or self.last
        done = stats.completion_tokens if stats is not None else n
        self.completion += done
        self.left -= done
        # it stopped before the round's end ("stop", not "length"): its answer is whole
        reason = stats.finish_reason if stats is not None else None
        self.ended = reason != "length" if reason is not None else done < n

    def stats(self) -> GenerationStats:
        end = time.perf_counter()
        first = self.first_at or end
        last = self.last
        return GenerationStats(
            prompt_tokens=last.prompt_tokens if last else 0,
            completion_tokens=self.completion, ttft_s=first - self.started,
            prompt_s=first - self.started, decode_s=end - first,
            decode_tokens=max(0, self.completion - 1),
            cached_tokens=last.cached_tokens if last else 0,
            finish_reason=last.finish_reason if last else None, timing="client")
