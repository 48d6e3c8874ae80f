"""The plain types every layer shares, at the bottom of localmoa: nothing here imports
another localmoa module.

``Message`` is one chat message; ``GenerateOptions`` and ``GenerationStats`` are what a
chat call is asked and what it cost; ``ChatStream`` is a lazy answer; ``Progress`` is
one report of a download. The backend protocol (backends/base.py) and the plugin
surface (plugin.py) re-export them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypedDict


class Message(TypedDict):
    """One chat message, as OpenAI-style APIs and llama.cpp chat templates expect."""

    role: str
    content: str


@dataclass(frozen=True)
class GenerateOptions:
    """Sampling and execution settings of one chat call."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int | None = None
    n_threads: int | None = None
    stop: tuple[str, ...] = ()
    #: A JSON schema the answer must follow (constrained decoding: a grammar on
    #: llama.cpp, ``format`` on Ollama, ``response_format`` on OpenAI-compatible
    #: servers); only for backends whose Capabilities.constrained_output is set. With
    #: a schema, ``stop`` is not used (the schema says where the answer ends), and an
    #: answer cut short by ``max_tokens`` is a GenerationError, never malformed JSON
    #: (backends/structured.py).
    json_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class GenerationStats:
    """What one chat call cost. Times in seconds, counts in tokens.

    ``prompt_s`` runs from the call to the first sampled token (prefill);
    ``decode_s`` from the first to the last sampled token, over which
    ``decode_tokens`` (= completion tokens after the first) were generated.
    ``cached_tokens`` of the prompt were reused from the model's KV cache and
    not evaluated again. In a batch of ``batch_size`` sequences, ``shared_tokens``
    of the prompt (its common prefix with the others) were evaluated once for all.
    """

    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    prompt_s: float
    decode_s: float
    decode_tokens: int
    cached_tokens: int = 0
    finish_reason: str | None = None
    shared_tokens: int = 0
    batch_size: int = 1
    #: Who measured the times: "local" (localmoa or its worker, per token), "server"
    #: (the server's own timings block or durations), or "client" (localmoa timing an
    #: HTTP stream: TTFT includes the network, decode rate counts streamed chunks).
    timing: str = "local"
    #: A prompt streamed in while other agents still wrote it (reference streaming):
    #: the tokens of it evaluated before its last piece came. Its ``ttft_s`` and
    #: ``prompt_s`` then count from when the prompt was whole.
    early_prompt_tokens: int = 0

    @property
    def prompt_tok_per_s(self) -> float:
        evaluated = self.prompt_tokens - self.cached_tokens - self.early_prompt_tokens
        return evaluated / self.prompt_s if self.prompt_s > 0 else 0.0

    @property
    def decode_tok_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0


class ChatStream:
    """A lazy answer: iterating streams text pieces; ``text()`` forces it once.

    ``stats`` is set when the stream is exhausted. ``close()`` (or ``with``) ends a
    stream that was not read to the end at once: the backend's generator runs its
    cleanup (a llama.cpp instance is free again) now, not whenever the garbage
    collector breaks the stream's reference cycle.
    """

    def __init__(self, pieces: Callable[[ChatStream], Iterator[str]]) -> None:
        self._pieces = pieces(self)
        self._chunks: list[str] = []
        self._done = False
        self.stats: GenerationStats | None = None

    def __iter__(self) -> Iterator[str]:
        if self._done:
            yield from self._chunks
            return
        for piece in self._pieces:
            self._chunks.append(piece)
            yield piece
        self._done = True

    def text(self) -> str:
        """The whole answer (generates it if not done yet)."""
        for _ in self:
            pass
        return "".join(self._chunks)

    def close(self) -> None:
        """Stop generating and release what the backend holds; harmless when done."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Progress:
    """One progress report of a pull: what is happening, and bytes done of total when
    known."""

    status: str
    completed: int = 0
    total: int = 0
