"""A chat's prompt tokens and stop strings exactly as llama-cpp-python's own chat completion
makes them: its chat handler is called with a recorder standing in for ``Llama``, which
keeps the prompt (and the text the handler tokenized) and stops there. A fed prompt
(reference streaming) is cut at its ``FEED_MARK`` in that text."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence as MessageList
from typing import Any

from ...errors import GenerationError
from ..base import Message
from ..batch import FEED_MARK


class _Captured(Exception):
    pass


class _PromptRecorder:
    """Stands in for the Llama object when its chat handler is called: records the
    prompt tokens and stop strings the handler would generate from, and stops there."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self.prompt: Any = None
        self.stop: list[str] = []
        #: The text the handler tokenized last, with its add_bos and special flags.
        self.text: tuple[bytes, bool, bool] | None = None

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> Any:
        self.text = (text, add_bos, special)
        return self._llm.tokenize(text, add_bos, special)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def create_completion(self, prompt: Any, stop: Any = None, **_: Any) -> Any:
        self.prompt = prompt
        self.stop = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        raise _Captured


def recorded(llm: Any, messages: MessageList[Message]) -> _PromptRecorder:
    """What the chat handler made of a chat: its prompt (text or tokens), stop strings,
    and the text it tokenized (when it did)."""
    from llama_cpp import llama_chat_format

    handler = (llm.chat_handler or llm._chat_handlers.get(llm.chat_format)
               or llama_chat_format.get_chat_completion_handler(llm.chat_format))
    recorder: Any = _PromptRecorder(llm)
    chat: Any = [dict(m) for m in messages]
    with contextlib.suppress(_Captured):
        handler(llama=recorder, messages=chat, stream=True, stop=[])
    if recorder.prompt is None:
        raise GenerationError("the chat handler produced no prompt")
    return recorder


def chat_prompt(llm: Any, messages: MessageList[Message]) -> tuple[list[int], list[str]]:
    """The prompt tokens and stop strings of a chat, as ``create_chat_completion`` makes them."""
    recorder = recorded(llm, messages)
    prompt = recorder.prompt
    if isinstance(prompt, str):
        prompt = llm.tokenize(prompt.encode("utf-8"), special=True)
    return [int(t) for t in prompt], recorder.stop


def split_prompt(llm: Any, messages: MessageList[Message]
                 ) -> tuple[list[int], list[int], list[str]] | None:
    """A fed chat's prompt tokens before its FEED_MARK and after it (the text the handler
    tokenized, cut at the mark and tokenized as it did), and its stop strings; None when
    the mark is not there once."""
    recorder = recorded(llm, messages)
    if isinstance(recorder.prompt, str):
        text, add_bos, special = recorder.prompt.encode("utf-8"), True, True
    elif recorder.text is not None:
        text, add_bos, special = recorder.text
    else:
        return None
    mark = FEED_MARK.encode("utf-8")
    if text.count(mark) != 1:
        return None
    head, tail = text.split(mark)
    return ([int(t) for t in llm.tokenize(head, add_bos, special)],
            [int(t) for t in llm.tokenize(tail, False, special)], recorder.stop)


def turn_boundary(llm: Any, messages: MessageList[Message]) -> str:
    """The chat template's text between an answer and the user's next turn after
    ``messages`` (a staircase's new turn); a blank line where it cannot be found."""
    answer, user = "\ue002", "\ue003"
    made = recorded(llm, [*messages, Message(role="assistant", content=answer),
                          Message(role="user", content=user)])
    raw = (made.prompt if isinstance(made.prompt, str) else
           made.text[0].decode("utf-8", "replace") if made.text else "")
    after = raw.split(answer, 1)[1] if answer in raw else ""
    return after.split(user, 1)[0] if user in after else "\n\n"
