"""The Backend / LoadedModel protocol every backend implements.

A backend turns a model entry into a LoadedModel; a LoadedModel answers a chat
with a ChatStream: iterate it to receive text pieces as they are generated;
once it is exhausted, ``stats`` holds what the call cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypedDict

if TYPE_CHECKING:
    from ..config import ModelSpec
    from .batch import Batch


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

    @property
    def prompt_tok_per_s(self) -> float:
        evaluated = self.prompt_tokens - self.cached_tokens
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


class LoadedModel(Protocol):
    """A model held in memory by a backend. Not thread-safe: one chat at a time."""

    name: str
    load_s: float

    def chat(self, messages: Sequence[Message], options: GenerateOptions) -> ChatStream: ...

    def unload(self) -> None: ...


class BatchedModel(LoadedModel, Protocol):
    """A model whose context decodes several chats at once (backends/batch.py): the
    engine's driver thread calls ``run_batch`` while each agent reads its own stream."""

    def run_batch(self, batch: Batch, n_threads: int) -> None: ...


class Backend(Protocol):
    """Loads models. ``name`` is what models.yaml writes under ``backend:``. ``n_seq``:
    the sequences the model's context must hold at once (a batch); a backend whose
    models do not batch is never asked for more than one."""

    name: str

    def load(self, name: str, spec: ModelSpec, path: Path | None, n_threads: int,
             n_seq: int = 1) -> LoadedModel: ...
