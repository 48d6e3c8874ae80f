"""The Backend / LoadedModel protocol every backend implements, built in or a plugin.

A backend owns a kind of model entry in models.yaml: its schema (``spec_class``,
a pydantic model of its own keys), its footprint and memory pool (``estimate``),
pull, token counting and its declared ``capabilities``. It turns an entry into a
LoadedModel; a LoadedModel answers a chat with a ChatStream: iterate it to receive
text pieces as they are generated; once it is exhausted, ``stats`` holds what the
call cost. The engine, preflight, pull and the CLI use only this protocol.

Third-party backends subclass ``BackendBase`` (and ``LoadedModel``) and register
through the ``localmoa.backends`` entry point (see registry.py); they import all of it
from one module, ``localmoa.plugin``. The plain types of a chat call (``Message``,
``GenerateOptions``, ``GenerationStats``, ``ChatStream``) live in localmoa/types.py and
are importable from here too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..occupancy import Occupancy
from ..types import ChatStream, GenerateOptions, GenerationStats, Message

if TYPE_CHECKING:
    from ..config import Config
    from ..memory.estimate import Footprint, ModelFacts
    from ..memory.probe import Resources
    from ..spec_types import ModelSpec
    from .batch import Batch

__all__ = ["UNLIMITED", "Backend", "BackendBase", "BatchedModel", "Capabilities", "ChatStream",
           "Estimate", "GenerateOptions", "GenerationStats", "LoadedModel", "Message"]


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

    @property
    def occupancy(self) -> Occupancy:
        """Whether this instance is busy or idle (occupancy.py), the one place that is
        kept: the host claims it for an agent, the model marks its generations."""
        found: Occupancy | None = vars(self).get("_occupancy")
        if found is None:  # setdefault: two threads asking first get one object
            found = vars(self).setdefault("_occupancy", Occupancy(self.name))
        return found


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
    #: The pydantic model of an entry's keys (a subclass of spec_types.ModelSpec).
    spec_class: ClassVar[type[ModelSpec]]
    capabilities: ClassVar[Capabilities]
    #: RAM one model costs before its load, once ``prestart`` has started what loading it
    #: needs (a worker process); the engine prestarts the next wave only where this fits.
    startup_bytes: ClassVar[int]

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
    startup_bytes: ClassVar[int] = 0

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
