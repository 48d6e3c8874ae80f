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
from collections.abc import Sequence
from typing import Any

from ..backends.base import ChatStream, GenerateOptions, LoadedModel, Message
from ..backends.batch import PromptFeed, fed_messages
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
