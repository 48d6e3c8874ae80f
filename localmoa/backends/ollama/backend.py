"""Models served by an Ollama daemon, through the official `ollama` client.

Load is Ollama's documented preload (a chat with no messages and a keep_alive);
unload is the same with keep_alive 0. Every request carries the model's num_ctx,
always the same one, so Ollama never reloads the model behind our back.
Several agents on one Ollama model share the daemon's copy: loads and unloads
are counted, and only the first load and the last unload reach the daemon.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ... import constants
from ...config import Config
from ...errors import (
    GenerationError,
    LocalMoaError,
    ModelLoadError,
    ModelNotFoundError,
    PullError,
)
from ...spec_types import ModelSpec
from ...types import Progress
from ..base import (
    UNLIMITED,
    BackendBase,
    Capabilities,
    ChatStream,
    Estimate,
    GenerateOptions,
    GenerationStats,
    LoadedModel,
    Message,
)
from ..structured import check_json_answer, normalised
from .spec import OllamaSpec, is_loopback

if TYPE_CHECKING:
    from ...memory.estimate import Footprint, Hint
    from ...memory.probe import Resources

#: How long Ollama keeps a model we loaded; every request renews it, unload ends it.
KEEP_ALIVE = "30m"


def refusal_hints(fp: Footprint) -> tuple[Hint, ...]:
    """What would make an Ollama model fit: a q8_0 KV cache in the daemon (when its cache
    is a float type), a smaller quant of the model (another tag)."""
    from ...memory.estimate import q8_0_saving

    hints: list[Hint] = []
    saving = q8_0_saving(fp)
    if saving is not None:
        hints.append(("OLLAMA_KV_CACHE_TYPE=q8_0 on the daemon and kv_type: q8_0 here", saving))
    hints.append(("a smaller quant of the model (a tag such as ...-q4_K_M)", None))
    return tuple(hints)


def _own(spec: ModelSpec) -> OllamaSpec:
    assert isinstance(spec, OllamaSpec), f"not an ollama entry: {spec.backend}"
    return spec


def host_of(spec: ModelSpec) -> str:
    """The daemon's URL: the model's host, else OLLAMA_HOST, as the official client parses it."""
    return constants.ollama_host(_own(spec).host)


def tag_of(spec: ModelSpec) -> str:
    return _own(spec).tag


def ollama_pool(spec: ModelSpec) -> str:
    """A daemon on this machine uses this machine's RAM; another one is its own pool."""
    host = host_of(spec)
    return "ram" if is_loopback(host) else f"ollama@{host}"


def ollama_error(exc: Exception, spec: ModelSpec, name: str, doing: str) -> LocalMoaError:
    """One line saying what went wrong with the daemon and how to fix it."""
    import httpx
    import ollama

    host, tag = host_of(spec), tag_of(spec)
    if isinstance(exc, ConnectionError | httpx.ConnectError):
        return ModelLoadError(f"model {name!r}: Ollama is not running at {host}; start it with "
                              "`ollama serve` (or set host / OLLAMA_HOST)")
    if isinstance(exc, ollama.ResponseError):
        status = exc.status_code
        if status == 404 or "not found" in str(exc.error).lower():
            return ModelNotFoundError(
                f"model {name!r}: {tag} is not pulled in Ollama at {host}; run "
                f"`localmoa models pull {name}` or `ollama pull {tag}`")
        if status >= 500:
            return GenerationError(f"model {name!r}: Ollama at {host} failed while {doing} "
                                   f"(HTTP {status}): {exc.error}")
        if status == -1:  # an error line in the middle of a stream
            return GenerationError(f"model {name!r}: Ollama at {host} reported an error while "
                                   f"{doing}: {exc.error}")
        return GenerationError(f"model {name!r}: Ollama at {host} refused {doing} "
                               f"(HTTP {status}): {exc.error}")
    if isinstance(exc, httpx.HTTPError):
        return GenerationError(f"model {name!r}: lost the connection to Ollama at {host} while "
                               f"{doing}: {exc}")
    return GenerationError(f"model {name!r}: {doing} failed: {exc}")


@dataclass(frozen=True)
class OllamaModelInfo:
    """What the daemon says about a pulled model (without loading it)."""

    model_info: dict[str, Any]
    size_bytes: int
    quant: str
    parameter_size: str


class OllamaBackend(BackendBase):
    """Loads and unloads models in Ollama daemons, by reference count."""

    name = "ollama"
    spec_class = OllamaSpec
    capabilities: ClassVar[Capabilities] = Capabilities(
        gpu_placement_report=True, pull=True, constrained_output=True, embeddings=True)

    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}
        self._refs: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def client(self, host: str) -> Any:
        import ollama

        with self._lock:
            if host not in self._clients:
                self._clients[host] = ollama.Client(host=host)
            return self._clients[host]

    def estimate(self, name: str, spec: ModelSpec, config: Config, resources: Resources,
                 batch_up_to: int = 1) -> Estimate:
        """The daemon's facts of the model (``/api/show``), as a footprint in its pool: this
        machine's RAM for a daemon on loopback, else a pool of the daemon's own."""
        from ...memory.estimate import LoadSettings, facts_from_model_info, footprint

        spec = _own(spec)
        info = self.describe(name, spec)
        facts = facts_from_model_info(info.model_info, info.size_bytes, info.quant)
        parallel = spec.parallel or 1  # the daemon keeps n_ctx x OLLAMA_NUM_PARALLEL cells
        fp = footprint(name, facts, LoadSettings(n_ctx=spec.n_ctx, kv_type=spec.kv_type,
                                                 parallel=parallel))
        # The daemon holds one copy, whatever number of agents use it at once.
        pool = ollama_pool(spec)
        fp = dataclasses.replace(fp, pools={pool: fp.total_bytes},
                                 shared_weights_bytes=fp.total_bytes, shared_code_bytes=0,
                                 local=False, prompt_cache=True,  # per slot
                                 shares_cores=pool == "ram",
                                 parallel_limit=parallel, parallel_group=f"{pool}/{name}")
        return Estimate(None, facts, dataclasses.replace(fp, hints=refusal_hints(fp)))

    def pool_budget(self, pool: str, config: Config) -> int | None:
        """A remote daemon's budget: its ollama_hosts memory_budget, else unlimited."""
        if not pool.startswith("ollama@"):
            return None
        from ...memory.probe import parse_size

        # keys as written (gpu-box, http://gpu-box:11434/) name the host the pools are named by
        hosts = {constants.ollama_host(url): h for url, h in config.ollama_hosts.items()}
        host = hosts.get(pool.removeprefix("ollama@"))
        return (parse_size(host.memory_budget, "ollama_hosts memory_budget")
                if host and host.memory_budget else UNLIMITED)

    def remote_hosts(self, spec: ModelSpec) -> list[str]:
        """The daemon's host when allow_remote (host: or OLLAMA_HOST) lets localmoa use it."""
        spec = _own(spec)
        host = host_of(spec)
        return [host] if spec.allow_remote and not is_loopback(host) else []

    def pull(self, config: Config, name: str, report: Callable[[Any], None]) -> str:
        """The daemon pulls the tag; its progress comes back."""

        spec = config.models[name]
        client = self.client(host_of(spec))
        try:
            for part in client.pull(tag_of(spec), stream=True):
                report(Progress(str(part.status or ""), int(part.completed or 0),
                                int(part.total or 0)))
        except Exception as exc:  # noqa: BLE001 - mapped to a one-line error
            err = ollama_error(exc, spec, name, "pulling")
            raise PullError(str(err)) from None
        return f"{name}: Ollama at {host_of(spec)} has {tag_of(spec)}"

    def locate(self, config: Config, name: str) -> dict[str, Any]:
        return {"host": host_of(config.models[name])}

    def doctor(self, config: Config | None) -> Any:
        from .doctor import daemons

        return daemons(config)

    def doctor_problems(self, section: Any, models: list[dict[str, Any]]) -> list[str]:
        from .doctor import problems

        return problems(section, models)

    def describe(self, name: str, spec: ModelSpec) -> OllamaModelInfo:
        """``/api/show`` and ``/api/tags`` facts of a model: nothing is loaded."""
        client = self.client(host_of(spec))
        tag = tag_of(spec)
        try:
            shown = client.show(tag)
            listed = client.list()
        except Exception as exc:  # noqa: BLE001 - mapped to a one-line error
            raise ollama_error(exc, spec, name, "describing the model") from None
        size = 0
        for entry in listed.models or []:
            if entry.model in (tag, f"{tag}:latest"):
                size = int(entry.size or 0)
        details = shown.details
        return OllamaModelInfo(
            model_info=dict(shown.modelinfo or {}), size_bytes=size,
            quant=str(getattr(details, "quantization_level", "") or ""),
            parameter_size=str(getattr(details, "parameter_size", "") or ""))

    def load(self, name: str, spec: ModelSpec, path: Path | None, n_threads: int,
             n_seq: int = 1) -> OllamaModel:
        host, tag = host_of(spec), tag_of(spec)
        key = (host, tag)
        client = self.client(host)
        started = time.perf_counter()
        with self._lock:
            first = self._refs.get(key, 0) == 0
        if first:
            try:
                client.chat(model=tag, messages=[], keep_alive=KEEP_ALIVE,
                            options={"num_ctx": spec.n_ctx})
            except Exception as exc:  # noqa: BLE001 - mapped to a one-line error
                raise ollama_error(exc, spec, name, "loading") from None
        with self._lock:
            self._refs[key] = self._refs.get(key, 0) + 1
        model = OllamaModel(self, name, spec, time.perf_counter() - started if first else 0.0)
        if first:
            model.runtime_facts = self._placement(client, tag)
        return model

    def release(self, model: OllamaModel) -> None:
        key = (host_of(model.spec), tag_of(model.spec))
        with self._lock:
            self._refs[key] = self._refs.get(key, 1) - 1
            last = self._refs[key] <= 0
            if last:
                self._refs.pop(key, None)
        if last:
            # If this fails the daemon still frees the model when keep_alive runs out.
            with contextlib.suppress(Exception):
                self.client(key[0]).chat(model=key[1], messages=[], keep_alive=0)

    @staticmethod
    def _placement(client: Any, tag: str) -> dict[str, Any]:
        """Where the daemon put the model (``/api/ps``): size, VRAM, spilled to CPU."""
        try:
            running = client.ps()
        except Exception:  # noqa: BLE001 - facts for the report only
            return {}
        for entry in running.models or []:
            if entry.model in (tag, f"{tag}:latest"):
                size, vram = int(entry.size or 0), int(entry.size_vram or 0)
                return {"size_bytes": size, "size_vram_bytes": vram,
                        "partly_on_cpu": 0 < vram < size}
        return {}


class OllamaModel(LoadedModel):
    """A model held by an Ollama daemon. The daemon queues concurrent requests itself."""

    def __init__(self, backend: OllamaBackend, name: str, spec: ModelSpec, load_s: float) -> None:
        self.backend = backend
        self.name = name
        self.spec = spec
        self.load_s = load_s
        self.runtime_facts: dict[str, Any] = {}
        self._released = False

    def chat(self, messages: Sequence[Message], options: GenerateOptions) -> ChatStream:
        return ChatStream(lambda stream: self._generate(stream, messages, options))

    def _generate(self, stream: ChatStream, messages: Sequence[Message],
                  options: GenerateOptions) -> Iterator[str]:
        client = self.backend.client(host_of(self.spec))
        wire_options: dict[str, Any] = {"temperature": options.temperature,
                                        "top_p": options.top_p,
                                        "num_predict": options.max_tokens,
                                        "num_ctx": self.spec.n_ctx}
        if options.seed is not None:
            wire_options["seed"] = options.seed
        started = time.perf_counter()
        first_text_at: float | None = None
        final: Any = None
        answer: list[str] = []
        try:
            # a JSON schema goes in ``format``: the daemon constrains the answer to it
            for part in client.chat(model=tag_of(self.spec), messages=[dict(m) for m in messages],
                                    stream=True, options=wire_options, keep_alive=KEEP_ALIVE,
                                    format=options.json_schema):
                text = part.message.content if part.message else None
                if text:
                    if first_text_at is None:
                        first_text_at = time.perf_counter()
                    answer.append(text)
                    yield text
                if part.done:
                    final = part
        except Exception as exc:  # noqa: BLE001 - mapped to a one-line error
            raise ollama_error(exc, self.spec, self.name, "generating") from None
        ended = time.perf_counter()
        if final is None:
            raise GenerationError(f"model {self.name!r}: the Ollama stream ended without its "
                                  "final message")
        if options.json_schema is not None:
            check_json_answer(self.name, "".join(answer), final.done_reason, options.max_tokens)
        prompt_ns = int(final.prompt_eval_duration or 0)
        eval_ns = int(final.eval_duration or 0)
        stream.stats = GenerationStats(
            prompt_tokens=int(final.prompt_eval_count or 0),
            completion_tokens=int(final.eval_count or 0),
            ttft_s=(first_text_at or ended) - started,
            prompt_s=prompt_ns / 1e9, decode_s=eval_ns / 1e9,
            decode_tokens=int(final.eval_count or 0),
            finish_reason=final.done_reason, timing="server")

    def embed(self, texts: Sequence[str]) -> list[list[float]] | None:
        """One vector per text from the daemon's ``/api/embed`` (pooled as the model
        pools), L2-normalised; None when the daemon says the model does not embed."""
        import ollama

        client = self.backend.client(host_of(self.spec))
        try:
            answer = client.embed(model=tag_of(self.spec), input=list(texts),
                                  options={"num_ctx": self.spec.n_ctx}, keep_alive=KEEP_ALIVE)
        except ollama.ResponseError as exc:
            if "does not support embeddings" in str(exc.error).lower():
                return None
            raise ollama_error(exc, self.spec, self.name, "embedding") from None
        except Exception as exc:  # noqa: BLE001 - mapped to a one-line error
            raise ollama_error(exc, self.spec, self.name, "embedding") from None
        vectors = [normalised(v) for v in answer.embeddings or []]
        if len(vectors) != len(texts):
            raise GenerationError(f"model {self.name!r}: Ollama at {host_of(self.spec)} "
                                  f"returned {len(vectors)} embeddings for {len(texts)} texts")
        return vectors

    def unload(self) -> None:
        if not self._released:
            self._released = True
            self.backend.release(self)
