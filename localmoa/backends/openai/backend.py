"""Models served by an OpenAI-compatible server (llama-server, vLLM, LM Studio,
llama-cpp-python's server), over its HTTP API with one shared httpx client.

localmoa neither starts nor stops the server: ``load`` checks that the server serves
the model (``GET /models``), ``unload`` does nothing, a chat is a streamed ``POST
/chat/completions``. Times come from the server when it reports them (llama-server's
``timings`` block), else they are measured on this side of the connection. Busy
answers (HTTP 429 / 503) are tried again after the server's Retry-After or an
exponential backoff. The API key is read from the environment variable the entry
names, and never written into an error or a report.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ...config import Config
from ...errors import GenerationError, ModelLoadError, ModelNotFoundError
from ...spec_types import ModelSpec
from ..base import (
    UNLIMITED,
    BackendBase,
    Capabilities,
    ChatStream,
    Estimate,
    GenerateOptions,
    LoadedModel,
    Message,
)
from ..structured import check_json_answer, stops_for
from .answers import Tally, one_vector
from .http import (
    BUSY_STATUSES,
    CONNECT_TIMEOUT_S,
    Call,
    api_key,
    response_format,
    retry_delay,
    scrub,
    served_models,
    server_message,
)
from .spec import OpenAISpec

if TYPE_CHECKING:
    import httpx

    from ...memory.probe import Resources

def _wait(seconds: float, stop: threading.Event | None = None) -> None:
    """Wait before trying a busy server again, or until ``stop`` is set (tests replace
    it, to record the waits)."""
    (stop or threading.Event()).wait(seconds)


def _own(spec: ModelSpec) -> OpenAISpec:
    assert isinstance(spec, OpenAISpec), f"not an openai entry: {spec.backend}"
    return spec


class OpenAIBackend(BackendBase):
    """Models that an OpenAI-compatible server already holds; nothing is budgeted here."""

    name = "openai"
    spec_class = OpenAISpec
    capabilities: ClassVar[Capabilities] = Capabilities(constrained_output=True,
                                                        embeddings=True)

    def __init__(self) -> None:
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}

    def slots(self, spec: OpenAISpec) -> threading.BoundedSemaphore:
        """The server's request slots: ``concurrency`` of them (the first model of a server
        sets it; the planner already keeps to the smallest). They hold the limit even where
        an abandoned agent's request is still out when a fresh instance starts."""
        with self._lock:
            if spec.origin not in self._slots:
                self._slots[spec.origin] = threading.BoundedSemaphore(spec.concurrency)
            return self._slots[spec.origin]

    def client(self) -> httpx.Client:
        """The backend's one HTTP client (thread-safe), created on first use. It ignores
        proxy variables: the servers localmoa talks to are reached directly."""
        import httpx

        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    trust_env=False,
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def estimate(self, name: str, spec: ModelSpec, config: Config, resources: Resources,
                 batch_up_to: int = 1) -> Estimate:
        """No facts and no bytes: the server holds the model. Its pool says where it is,
        and its concurrency caps the agents of all the models it serves."""
        from ...memory.estimate import Footprint

        spec = _own(spec)
        pool = f"openai@{spec.origin}"  # the models of one server share it
        return Estimate(None, None, Footprint.of_pools(
            name, spec.n_ctx, {pool: 0}, local=False, parallel_limit=spec.concurrency,
            parallel_group=pool, external=True, prompt_cache=spec.prompt_cache,
            shares_cores=not spec.is_remote))

    def pool_budget(self, pool: str, config: Config) -> int | None:
        return UNLIMITED if pool.startswith("openai@") else None

    def remote_hosts(self, spec: ModelSpec) -> list[str]:
        spec = _own(spec)
        return [spec.base_url] if spec.allow_remote and spec.is_remote else []

    def locate(self, config: Config, name: str) -> dict[str, Any]:
        spec = _own(config.models[name])
        return {"host": spec.base_url, "served_model": spec.model}

    def doctor(self, config: Config | None) -> Any:
        """Each server the config names: whether it answers and the models it lists."""
        from .doctor import check_server

        servers: dict[str, list[OpenAISpec]] = {}
        for spec in config.models.values() if config is not None else []:
            if isinstance(spec, OpenAISpec):
                servers.setdefault(spec.base_url, []).append(spec)
        return [check_server(url, specs) for url, specs in servers.items()] or None

    def doctor_problems(self, section: Any, models: list[dict[str, Any]]) -> list[str]:
        from .doctor import server_problems

        return server_problems(section, models)

    def send(self, call: Call, method: str, path: str, body: dict[str, Any] | None = None,
             *, stream: bool = False, stop: threading.Event | None = None
             ) -> tuple[httpx.Response, float]:
        """A request to the model's server, tried again while it answers busy: the answer,
        and when the try that got it began (``perf_counter``: the waits are not the
        server's time). A refusal or a failed connection becomes ``call``'s error; a set
        ``stop`` ends the tries."""
        import httpx

        spec = call.spec
        headers = {"Authorization": f"Bearer {call.key}"} if call.key else {}
        timeout = httpx.Timeout(spec.timeout_s, connect=CONNECT_TIMEOUT_S)
        client = self.client()
        for attempt in range(spec.retries + 1):
            if stop is not None and stop.is_set():
                raise call.fail(f"stopped before the server at {spec.base_url} answered")
            request = client.build_request(method, spec.base_url + path, json=body,
                                           headers=headers, timeout=timeout)
            tried_at = time.perf_counter()
            try:
                response = client.send(request, stream=stream)
                if response.status_code < 300:
                    return response, tried_at
                content = response.read()
            except httpx.HTTPError as exc:
                raise call.transport_error(exc) from None
            response.close()
            status = response.status_code
            if status not in BUSY_STATUSES:
                raise call.http_error(path, status, server_message(content, call.key))
            if attempt < spec.retries:
                _wait(retry_delay(response.headers.get("retry-after"), attempt), stop)
        raise call.fail(f"the server at {spec.base_url} is still busy after "
                        f"{spec.retries + 1} tries (HTTP {status}); lower concurrency or "
                        "raise retries")

    def load(self, name: str, spec: ModelSpec, path: Path | None, n_threads: int,
             n_seq: int = 1) -> OpenAIModel:
        """Checks that the server answers and lists the model; loads nothing."""
        spec = _own(spec)
        call = Call(name, spec, api_key(name, spec), ModelLoadError)
        started = time.perf_counter()
        response, _ = self.send(call, "GET", "/models")
        served = served_models(response)
        if served is None:
            raise call.fail(f"the server at {spec.base_url} answered /models with no model "
                            "list; is base_url an OpenAI-compatible API (usually ending /v1)?")
        if spec.model not in served:
            listed = ", ".join(served) or "none"
            raise ModelNotFoundError(
                f"model {name!r}: the server at {spec.base_url} does not serve {spec.model!r}; "
                f"it serves: {listed} (fix model: of {name} in models.yaml)")
        return OpenAIModel(self, call, time.perf_counter() - started)


class OpenAIModel(LoadedModel):
    """A model a server holds. One chat at a time; ``kill`` cuts the current one off."""

    def __init__(self, backend: OpenAIBackend, call: Call, load_s: float) -> None:
        self.backend = backend
        self.name = call.name
        self.spec = call.spec
        self.load_s = load_s
        self.runtime_facts: dict[str, Any] = {"base_url": call.spec.base_url,
                                              "server_model": call.spec.model,
                                              "external": True}
        self._call = Call(call.name, call.spec, call.key, GenerationError)
        self._response: httpx.Response | None = None
        self._stopped: str | None = None
        #: Set by ``kill``: this instance answers no more (the engine abandoned it).
        self._killed = threading.Event()
        self._lock = threading.Lock()  # _response between the reading thread and kill

    def chat(self, messages: Sequence[Message], options: GenerateOptions) -> ChatStream:
        return ChatStream(lambda stream: self._generate(stream, messages, options))

    def _body(self, messages: Sequence[Message], options: GenerateOptions) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.spec.model, "messages": [dict(m) for m in messages],
                                "stream": True, "stream_options": {"include_usage": True},
                                "temperature": options.temperature, "top_p": options.top_p,
                                "max_tokens": options.max_tokens}
        if options.seed is not None:
            body["seed"] = options.seed
        if stops_for(options):
            body["stop"] = list(stops_for(options))
        if options.json_schema is not None:
            body["response_format"] = response_format(options.json_schema,
                                                      self.spec.response_format)
        return body

    def _generate(self, stream: ChatStream, messages: Sequence[Message],
                  options: GenerateOptions) -> Iterator[str]:
        with self._slot():
            yield from self._stream(stream, messages, options)

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """One of the server's request slots (its concurrency, however it is held), for
        the length of a request; a kill ends the wait."""
        slots = self.backend.slots(self.spec)
        while not slots.acquire(timeout=0.2):
            if self._killed.is_set():
                raise self._broken(Tally(0.0), str(self._stopped))
        try:
            yield
        finally:
            slots.release()

    def _stream(self, stream: ChatStream, messages: Sequence[Message],
                options: GenerateOptions) -> Iterator[str]:
        import httpx

        if self._killed.is_set():
            raise self._broken(Tally(0.0), str(self._stopped))
        try:
            response, tried_at = self.backend.send(self._call, "POST", "/chat/completions",
                                                   self._body(messages, options), stream=True,
                                                   stop=self._killed)
        except GenerationError as exc:
            raise self._format_hint(exc, options) from None
        tally = Tally(tried_at)
        with self._lock:
            if self._killed.is_set():  # killed while the server had not answered yet
                response.close()
                raise self._broken(tally, str(self._stopped))
            self._response = response
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, ": keep-alive" comments, event: / id:
                data = line[5:].strip()
                if data == "[DONE]":
                    tally.done = True
                    break
                text = tally.add(self._chunk(data, tally), time.perf_counter())
                if text:
                    yield text
        except httpx.HTTPError as exc:
            raise self._broken(tally, self._stopped or self._call.reason(exc)) from None
        finally:
            with self._lock:
                self._response = None
            response.close()
        if self._stopped:
            raise self._broken(tally, self._stopped)
        if not tally.done and tally.finish_reason is None:
            raise self._broken(tally, "the answer ended without [DONE] or a finish_reason")
        if options.json_schema is not None:
            check_json_answer(self.name, "".join(tally.answer), tally.finish_reason,
                              options.max_tokens)
        stream.stats = tally.stats(time.perf_counter())

    def _format_hint(self, exc: GenerationError, options: GenerateOptions) -> GenerationError:
        """A refused OpenAI-style ``json_schema`` response_format, with what to set for a
        server that takes the schema as ``json_object`` (llama-cpp-python's refuses it)."""
        said = str(exc)
        if (options.json_schema is None or self.spec.response_format != "json_schema"
                or "json_schema" not in said):
            return exc
        return GenerationError(f"{said}; if this server takes the schema as response_format "
                               "{type: json_object, schema} (llama-cpp-python's server does), "
                               f"add response_format: json_object to model {self.name} in "
                               "models.yaml")

    def _chunk(self, data: str, tally: Tally) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            raise GenerationError(
                f"model {self.name!r}: the server at {self.spec.base_url} sent a stream line "
                f"that is not a JSON object after {tally.pieces} pieces: "
                f"{scrub(data, self._call.key)[:80]}")
        if chunk.get("error"):  # llama-server and vLLM report a failure mid-stream like this
            message = server_message(json.dumps(chunk).encode(), self._call.key)
            raise GenerationError(f"model {self.name!r}: the server at {self.spec.base_url} "
                                  f"failed mid-answer after {tally.pieces} pieces: {message}")
        return chunk

    def _broken(self, tally: Tally, reason: str) -> GenerationError:
        return GenerationError(f"model {self.name!r}: the stream from {self.spec.base_url} "
                               f"broke after {tally.pieces} pieces: {reason}")

    def embed(self, texts: Sequence[str]) -> list[list[float]] | None:
        """One vector per text from the server's ``POST /embeddings``, L2-normalised; a
        server that answers one vector per token (llama-cpp-python's, for a model without
        pooling) has them mean-pooled here. A server that does not embed answers with an
        error (llama-server wants --embeddings, llama-cpp-python's server --embedding
        true), which becomes a GenerationError saying what it said."""
        if self._killed.is_set():
            raise GenerationError(f"model {self.name!r}: {self._stopped}")
        body = {"model": self.spec.model, "input": list(texts)}
        with self._slot():
            response, _ = self.backend.send(self._call, "POST", "/embeddings", body,
                                            stop=self._killed)
        try:
            data = response.json()["data"]
            rows = sorted(data, key=lambda item: int(item.get("index", 0)))
            vectors = [one_vector(item["embedding"]) for item in rows]
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            raise GenerationError(
                f"model {self.name!r}: the server at {self.spec.base_url} answered "
                "/embeddings with no embedding list (data[].embedding)") from None
        if len(vectors) != len(texts):
            raise GenerationError(f"model {self.name!r}: the server at {self.spec.base_url} "
                                  f"returned {len(vectors)} embeddings for {len(texts)} texts")
        return vectors

    def unload(self) -> None:
        """Nothing to free: the server keeps the model."""

    def kill(self, reason: str) -> None:
        """Cut the current answer off now (from any thread), and every later one: a stream
        has its socket shut, so the reading thread wakes at once; a request the server
        has not answered yet is closed as soon as it answers, and no try follows a busy
        answer. The call ends with a one-line error."""
        with self._lock:
            self._stopped = f"stopped: {reason}"
            self._killed.set()
            response = self._response
            if response is None:
                return
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
