"""The Backend / LoadedModel protocol every backend implements, built in or a plugin.

A backend owns a kind of model entry in models.yaml: its schema (``spec_class``,
a pydantic model of its own keys), its footprint and memory pool (``estimate``),
pull, token counting and its declared ``capabilities``. It turns an entry into a
LoadedModel; a LoadedModel answers a chat with a ChatStream: iterate it to receive
text pieces as they are generated; once it is exhausted, ``stats`` holds what the
call cost. The engine, preflight, pull and the CLI use only this protocol.

Third-party backends subclass ``BackendBase`` (and ``LoadedModel``) and register
through the ``localmoa.backends`` entry point (see backends/__init__.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypedDict

if TYPE_CHECKING:
    from ..config import Config, ModelSpec
    from ..memory.estimate import Footprint, ModelFacts
    from ..memory.probe import Resources
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
    """A model held by a backend. Not thread-safe: one chat at a time.

    A backend's model class subclasses this protocol, so it inherits the defaults
    of the optional members below; it overrides what it can do better.
    """

    name: str
    load_s: float
    #: Facts of this load for the run report (e.g. where the layers went).
    runtime_facts: dict[str, Any]

    def chat(self, messages: Sequence[Message], options: GenerateOptions) -> ChatStream: ...

    def unload(self) -> None: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]] | None:
        """One vector per text (mean-pooled, L2-normalised); None: this model cannot."""
        return None

    def count_tokens(self, text: str) -> int | None:
        """Tokens of ``text`` in the model's own tokenizer; None: this model cannot say
        (the engine then counts about three characters a token)."""
        return None

    def cut_tokens(self, text: str, n: int) -> str | None:
        """The first ``n`` tokens of ``text``; None when the model cannot tokenize."""
        return None

    @property
    def alive(self) -> bool:
        """False once the model is gone without an unload (its process died)."""
        return True

    @property
    def death(self) -> str | None:
        """Why the model is gone, one line; None while alive."""
        return None

    @property
    def pid(self) -> int | None:
        """The process holding the model, when it is not localmoa's own."""
        return None

    def kill(self, reason: str) -> None:
        """Stop the model now, even mid-call (an abandoned agent), where it runs apart
        (a worker process). Default: nothing; the engine frees it when the call returns."""
        return None


class BatchedModel(LoadedModel, Protocol):
    """A model whose context decodes several chats at once (backends/batch.py): the
    engine's driver thread calls ``run_batch`` while each agent reads its own stream."""

    def run_batch(self, batch: Batch, n_threads: int) -> None: ...


#: The budget of a pool a backend does not limit (a daemon or a server manages itself).
UNLIMITED = 1 << 62


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared (the engine and the CLI read these, never the
    backend's name)."""

    #: Agents of one wave on one model decode as sequences of one context (a batch).
    batched_sequences: bool = False
    #: A loaded model's runtime_facts say where its layers went (GPU or CPU).
    gpu_placement_report: bool = False
    #: ``pull`` fetches the model (otherwise it is there or it is not).
    pull: bool = False
    #: Models count and cut tokens with their own tokenizer.
    token_counting: bool = False
    #: Each model runs in a process localmoa starts (prestart hides its start-up).
    worker_processes: bool = False
    #: Chat honours GenerateOptions.json_schema: the answer always parses.
    constrained_output: bool = False
    #: Loaded models ``embed`` texts (as vectors), for the embedding router.
    embeddings: bool = False

    def to_dict(self) -> dict[str, bool]:
        return {k: bool(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Estimate:
    """What preflight learns of a model without loading it: its GGUF file (when it has
    a local one), the facts of its header or server (None: the backend cannot know),
    and its Footprint (``external`` when its memory is not budgeted here)."""

    path: Path | None
    facts: ModelFacts | None
    footprint: Footprint


class Backend(Protocol):
    """Serves the model entries that write ``backend: NAME`` in models.yaml.

    ``load``'s ``n_seq``: the sequences the model's context must hold at once (a
    batch); a backend without ``batched_sequences`` is never asked for more than one.
    """

    name: ClassVar[str]
    #: The distribution that provides the backend: named when something is missing.
    package: ClassVar[str]
    #: The pydantic model of an entry's keys (a subclass of config.ModelSpec).
    spec_class: ClassVar[type[ModelSpec]]
    capabilities: ClassVar[Capabilities]

    def estimate(self, name: str, spec: ModelSpec, config: Config, resources: Resources,
                 batch_up_to: int = 1) -> Estimate:
        """Path, facts and footprint of model ``name``, without loading it. With batched
        sequences, the footprint knows batches of 2 to ``batch_up_to``."""
        ...

    def load(self, name: str, spec: ModelSpec, path: Path | None, n_threads: int,
             n_seq: int = 1) -> LoadedModel: ...

    def pool_budget(self, pool: str, config: Config) -> int | None:
        """The budget of a pool this backend's footprints name that the machine does not
        have (a remote daemon or server); None: not this backend's pool."""
        ...

    def remote_hosts(self, spec: ModelSpec) -> list[str]:
        """The hosts other than this machine that ``spec`` talks to (the user allowed
        them with allow_remote): the socket guard lets exactly these through."""
        ...

    def pull(self, config: Config, name: str, report: Callable[[Any], None]) -> str:
        """Fetch model ``name``; returns one line saying what happened."""
        ...

    def runtime(self, config: Config, names: list[str]) -> tuple[dict[str, Any], list[str]]:
        """How this backend will run ``names`` here, for the run report, and the
        notices that calls for (each once)."""
        ...

    def check_machine(self, config: Config, names: list[str]) -> str | None:
        """A one-time check before the first run on this machine, or None when none is
        due; returns what to show while it runs (``run_machine_check`` runs it)."""
        ...

    def run_machine_check(self) -> None: ...

    def prestart(self, specs: list[ModelSpec]) -> None:
        """Start what loading ``specs`` will need (worker processes), ahead of time."""
        ...

    def close(self) -> None:
        """Release what the backend holds between runs (spare workers, clients)."""
        ...

    def locate(self, config: Config, name: str) -> dict[str, Any]:
        """Where model ``name`` is, for `localmoa doctor`, without the network: any of
        ``path``, ``host``, ``present`` (None: unknown) and ``problem``."""
        ...

    def doctor(self, config: Config | None) -> Any:
        """This backend's section of `localmoa doctor` (JSON-able); None: none."""
        ...

    def doctor_problems(self, section: Any, models: list[dict[str, Any]]) -> list[str]:
        """Findings of its doctor section a user should act on, one line each; it may
        mark its ``models`` rows (this backend's only) present or not."""
        ...


class BackendBase:
    """The defaults of a Backend's optional members: subclass it, then set ``name``,
    ``package``, ``spec_class``, ``capabilities`` and write ``estimate`` and ``load``."""

    name: ClassVar[str]
    package: ClassVar[str] = "localmoa"
    spec_class: ClassVar[type[ModelSpec]]
    capabilities: ClassVar[Capabilities] = Capabilities()

    def pool_budget(self, pool: str, config: Config) -> int | None:
        return None

    def remote_hosts(self, spec: ModelSpec) -> list[str]:
        return []

    def pull(self, config: Config, name: str, report: Callable[[Any], None]) -> str:
        return f"{name} is served by backend {self.name}: there is nothing to download"

    def runtime(self, config: Config, names: list[str]) -> tuple[dict[str, Any], list[str]]:
        return {}, []

    def check_machine(self, config: Config, names: list[str]) -> str | None:
        return None

    def run_machine_check(self) -> None:
        return None

    def prestart(self, specs: list[ModelSpec]) -> None:
        return None

    def close(self) -> None:
        return None

    def locate(self, config: Config, name: str) -> dict[str, Any]:
        return {}

    def doctor(self, config: Config | None) -> Any:
        return None

    def doctor_problems(self, section: Any, models: list[dict[str, Any]]) -> list[str]:
        return []
