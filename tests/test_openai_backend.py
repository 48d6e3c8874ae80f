"""The openai backend: agents on any OpenAI-compatible server.

First against a real server (llama-cpp-python's, serving the tiny SmolLM2; see
tests/openai_server.py); then, for the failures a real server will not produce on
demand, against pytest-httpserver answering exactly what llama-server, vLLM or
OpenAI answer; then models.yaml validation, one line with file:line and field.
"""

from __future__ import annotations

import json
import textwrap
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from localmoa.backends.base import GenerateOptions, Message
from localmoa.backends.openai import backend as openai
from localmoa.backends.openai.backend import OpenAIBackend, OpenAIModel
from localmoa.backends.openai.http import retry_delay
from localmoa.backends.openai.spec import OpenAISpec
from localmoa.config import load_config
from localmoa.errors import ConfigError, GenerationError, ModelLoadError, ModelNotFoundError

from .openai_server import OpenAIServer, free_port

ALIAS = "smollm2"
KEY = "sk-test-0123456789abcdef"  # what a user exports; it must never show in an error
MESSAGES: list[Message] = [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "Name a colour."}]
OPTIONS = GenerateOptions(temperature=0.0, max_tokens=16, seed=7)
#: A question SmolLM2 answers at length: a stream still running when a test cuts it.
LONG: list[Message] = [{"role": "user", "content": "Write a long story about a lighthouse "
                                                   "keeper and the sea."}]


def spec_for(base_url: str, **keys: Any) -> OpenAISpec:
    return OpenAISpec.model_validate({"backend": "openai", "base_url": base_url,
                                      "model": keys.pop("model", ALIAS), **keys})


@pytest.fixture
def backend() -> Iterator[OpenAIBackend]:
    made = OpenAIBackend()
    yield made
    made.close()


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the backend asks for between tries, recorded instead of waited."""
    asked: list[float] = []
    monkeypatch.setattr(openai, "_wait", lambda seconds, stop=None: asked.append(seconds))
    return asked


# --- against a real server ------------------------------------------------------------


def test_a_real_server_serves_a_chat(real_server: OpenAIServer,
                                     backend: OpenAIBackend) -> None:
    model = backend.load("smol", spec_for(real_server.base_url), None, n_threads=1)
    assert model.runtime_facts == {"base_url": real_server.base_url, "server_model": ALIAS,
                                   "external": True}
    assert model.load_s > 0
    stream = model.chat(MESSAGES, OPTIONS)
    pieces = list(stream)
    assert pieces and all(pieces)
    stats = stream.stats
    assert stats is not None and stats.timing == "client"
    assert stats.finish_reason in ("stop", "length")
    # llama-cpp-python's server streams no usage: one content chunk is one token
    assert stats.completion_tokens == len(pieces) > 0
    assert stats.decode_tokens == stats.completion_tokens - 1
    assert stats.ttft_s > 0 and stats.prompt_s == stats.ttft_s and stats.decode_s >= 0
    model.unload()  # the server keeps its model: nothing to do, and harmless twice
    model.unload()


def test_a_model_the_real_server_does_not_serve(real_server: OpenAIServer,
                                                backend: OpenAIBackend) -> None:
    # the server would answer any name; load refuses it, so a typo is not hidden
    with pytest.raises(ModelNotFoundError) as err:
        backend.load("smol", spec_for(real_server.base_url, model="smollm3"), None, 1)
    assert str(err.value) == (
        f"model 'smol': the server at {real_server.base_url} does not serve 'smollm3'; it "
        f"serves: {ALIAS} (fix model: of smol in models.yaml)")


def test_closing_a_stream_after_its_first_piece(real_server: OpenAIServer,
                                                backend: OpenAIBackend) -> None:
    model = backend.load("smol", spec_for(real_server.base_url), None, 1)
    stream = model.chat(LONG, GenerateOptions(temperature=0.0, max_tokens=400))
    assert next(iter(stream))
    stream.close()  # the server stops generating: its next request is served at once
    assert stream.stats is None
    again = model.chat(MESSAGES, OPTIONS)
    assert again.text() and again.stats is not None and again.stats.finish_reason


def test_kill_cuts_a_chat_off_from_another_thread(real_server: OpenAIServer,
                                                  backend: OpenAIBackend) -> None:
    model = backend.load("smol", spec_for(real_server.base_url), None, 1)
    first_piece = threading.Event()
    outcome: list[BaseException | None] = []

    def agent() -> None:
        try:
            for _ in model.chat(LONG, GenerateOptions(temperature=0.0, max_tokens=400)):
                first_piece.set()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            outcome.append(exc)
        first_piece.set()

    thread = threading.Thread(target=agent)
    thread.start()
    assert first_piece.wait(60)
    model.kill("its agent did not stop in time")
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(outcome[0], GenerationError)
    assert str(outcome[0]).startswith(f"model 'smol': the stream from {real_server.base_url} "
                                      "broke after ")
    assert str(outcome[0]).endswith("pieces: stopped: its agent did not stop in time")
    with pytest.raises(GenerationError, match="stopped: its agent"):
        model.chat(MESSAGES, OPTIONS).text()  # a killed instance answers no more
    fresh = backend.load("smol", spec_for(real_server.base_url), None, 1)
    assert fresh.chat(MESSAGES, OPTIONS).text()  # the server serves the next one


def test_a_server_that_dies_mid_answer(smollm2_path: Path, backend: OpenAIBackend,
                                       isolated_home: Path) -> None:
    with OpenAIServer(smollm2_path, ALIAS) as server:
        model = backend.load("smol", spec_for(server.base_url), None, 1)
        stream = model.chat(LONG, GenerateOptions(temperature=0.0, max_tokens=400))
        pieces = iter(stream)
        assert next(pieces)
        server.kill()
        with pytest.raises(GenerationError) as err:
            list(pieces)
    message = str(err.value)
    assert message.startswith(f"model 'smol': the stream from {server.base_url} broke after ")
    assert "RemoteProtocolError" in message or "ReadError" in message
    assert "\n" not in message
    with pytest.raises(ModelLoadError) as gone:
        backend.load("smol", spec_for(server.base_url), None, 1)
    assert str(gone.value) == (f"model 'smol': no server answers at {server.base_url} "
                               "(ConnectError); start it or fix base_url")


ROUTE = {"type": "object", "properties": {"specialist": {"enum": ["math", "writing", "trivia"]}},
         "required": ["specialist"], "additionalProperties": False}
ASK: list[Message] = [{"role": "system", "content": "Pick the specialist for the question."},
                      {"role": "user", "content": "What is the integral of x squared?"}]
TEXTS = ["What is the integral of x squared?", "Write a haiku about autumn leaves."]


def test_a_real_server_follows_a_schema(real_server: OpenAIServer,
                                        backend: OpenAIBackend) -> None:
    import jsonschema

    # llama-cpp-python's server takes the schema as {type: json_object, schema}
    model = backend.load("smol", spec_for(real_server.base_url, response_format="json_object"),
                         None, 1)
    for seed in range(4):
        options = GenerateOptions(temperature=1.5, max_tokens=32, seed=seed, json_schema=ROUTE)
        jsonschema.validate(json.loads(model.chat(ASK, options).text()), ROUTE)


def test_a_real_server_that_refuses_openais_json_schema(real_server: OpenAIServer,
                                                        backend: OpenAIBackend) -> None:
    model = backend.load("smol", spec_for(real_server.base_url), None, 1)
    options = GenerateOptions(temperature=1.5, max_tokens=32, seed=1, json_schema=ROUTE)
    with pytest.raises(GenerationError) as err:
        model.chat(ASK, options).text()
    message = str(err.value)
    assert message.startswith(f"model 'smol': the server at {real_server.base_url} failed")
    assert message.endswith("if this server takes the schema as response_format {type: "
                            "json_object, schema} (llama-cpp-python's server does), add "
                            "response_format: json_object to model smol in models.yaml")
    assert "\n" not in message


def test_a_real_server_without_embeddings_says_so(real_server: OpenAIServer,
                                                  backend: OpenAIBackend) -> None:
    model = backend.load("smol", spec_for(real_server.base_url), None, 1)
    with pytest.raises(GenerationError, match=f"^model 'smol': the server at "
                       f"{real_server.base_url} failed \\(HTTP 500\\): .*embedding=True"):
        model.embed(TEXTS)


@pytest.fixture(scope="module")
def embedding_server(smollm2_path: Path, repack_verdicts: bytes,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    """llama-cpp-python's server with embeddings on (its --embedding true)."""
    import os

    from localmoa.backends.llamacpp import repack

    home = tmp_path_factory.mktemp("embedding-server-home")
    (home / repack.CACHE_FILE).write_bytes(repack_verdicts)
    env = {**os.environ, "LOCALMOA_HOME": str(home)}
    env.pop("LOCALMOA_CPU_REPACK", None)
    with OpenAIServer(smollm2_path, ALIAS, env=env, args=("--embedding", "true")) as server:
        yield server


def test_a_real_server_embeds(embedding_server: OpenAIServer, backend: OpenAIBackend,
                              smollm2_path: Path) -> None:
    from localmoa.backends.llamacpp.model import LoadParams, load_llama

    model = backend.load("smol", spec_for(embedding_server.base_url), None, 1)
    both = model.embed(TEXTS)
    # SmolLM2 has no pooling: the server answers a vector per token, averaged here
    assert both is not None and [len(v) for v in both] == [576, 576]
    assert all(abs(sum(x * x for x in v) - 1) < 1e-6 for v in both)
    # one text a request: llama-cpp-python 0.3's server reads the token vectors of every
    # text after the first from the wrong place (Llama.embed, pooling none)
    vectors = [model.embed([text])[0] for text in TEXTS]  # type: ignore[index]
    assert vectors[0] == both[0]
    local = load_llama(LoadParams(name="smol", path=str(smollm2_path), n_ctx=512, n_threads=1))
    try:  # the llama.cpp backend's own vectors (the server decodes without flash attention
        # and all tokens at once: the last digits differ)
        for ours, theirs in zip(local.embed(TEXTS), vectors, strict=True):
            assert sum(a * b for a, b in zip(ours, theirs, strict=True)) > 0.999
    finally:
        local.unload()


# --- the wire, against pytest-httpserver ------------------------------------------------


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> dict:
    delta = {"content": content} if content is not None else {}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": ALIAS,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def sse(*chunks: dict, done: bool = True, raw: str = "") -> Response:
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + raw
    return Response(body + ("data: [DONE]\n\n" if done else ""),
                    content_type="text/event-stream")


def serve_list(server: HTTPServer, *ids: str) -> None:
    server.expect_request("/v1/models", method="GET").respond_with_json(
        {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "me"}
                                    for i in ids]})


def base(server: HTTPServer) -> str:
    return server.url_for("/v1")


def loaded(server: HTTPServer, backend: OpenAIBackend, **keys: Any) -> OpenAIModel:
    serve_list(server, ALIAS, "other")
    return backend.load("m", spec_for(base(server), **keys), None, 1)


def test_the_request_is_openai_chat_streaming(httpserver: HTTPServer, backend: OpenAIBackend,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", KEY)
    httpserver.expect_request("/v1/models", method="GET",
                              headers={"Authorization": f"Bearer {KEY}"}).respond_with_json(
        {"object": "list", "data": [{"id": ALIAS}]})
    httpserver.expect_request("/v1/chat/completions", method="POST",
                              headers={"Authorization": f"Bearer {KEY}"}, json={
        "model": ALIAS, "messages": MESSAGES, "stream": True,
        "stream_options": {"include_usage": True}, "temperature": 0.0, "top_p": 0.95,
        "max_tokens": 16, "seed": 7, "stop": ["\n\n"]}).respond_with_response(sse(
            chunk(""), chunk("Blue"), chunk("."), chunk(finish="stop")))
    model = backend.load("m", spec_for(base(httpserver), api_key_env="MY_KEY"), None, 1)
    stream = model.chat(MESSAGES, GenerateOptions(temperature=0.0, max_tokens=16, seed=7,
                                                  stop=("\n\n",)))
    assert list(stream) == ["Blue", "."]
    assert stream.stats is not None
    assert (stream.stats.timing, stream.stats.finish_reason) == ("client", "stop")
    assert (stream.stats.prompt_tokens, stream.stats.completion_tokens,
            stream.stats.decode_tokens) == (0, 2, 1)


def test_a_schema_is_openais_response_format(httpserver: HTTPServer,
                                             backend: OpenAIBackend) -> None:
    assert OpenAIBackend.capabilities.constrained_output
    model = loaded(httpserver, backend)
    # no stop with a schema (one inside a JSON string would cut it short)
    httpserver.expect_request("/v1/chat/completions", method="POST", json={
        "model": ALIAS, "messages": MESSAGES, "stream": True,
        "stream_options": {"include_usage": True}, "temperature": 1.5, "top_p": 0.95,
        "max_tokens": 32, "seed": 7, "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": ROUTE, "strict": True}}}) \
        .respond_with_response(sse(chunk('{"specialist": '), chunk('"math"}'),
                                   chunk(finish="stop")))
    options = GenerateOptions(temperature=1.5, max_tokens=32, seed=7, json_schema=ROUTE,
                              stop=("}",))
    assert json.loads(model.chat(MESSAGES, options).text()) == {"specialist": "math"}


def test_a_schema_as_json_object(httpserver: HTTPServer, backend: OpenAIBackend) -> None:
    model = loaded(httpserver, backend, response_format="json_object")
    httpserver.expect_request("/v1/chat/completions", method="POST", json={
        "model": ALIAS, "messages": MESSAGES, "stream": True,
        "stream_options": {"include_usage": True}, "temperature": 0.0, "top_p": 0.95,
        "max_tokens": 16, "seed": 7,
        "response_format": {"type": "json_object", "schema": ROUTE}}) \
        .respond_with_response(sse(chunk('{"specialist": "trivia"}'), chunk(finish="stop")))
    options = GenerateOptions(temperature=0.0, max_tokens=16, seed=7, json_schema=ROUTE)
    assert json.loads(model.chat(MESSAGES, options).text()) == {"specialist": "trivia"}


def test_a_schema_answer_cut_by_max_tokens_is_an_error(httpserver: HTTPServer,
                                                       backend: OpenAIBackend) -> None:
    model = loaded(httpserver, backend)
    httpserver.expect_request("/v1/chat/completions").respond_with_response(sse(
        chunk('{"specialist": "ma'), chunk(finish="length")))
    options = GenerateOptions(temperature=1.5, max_tokens=5, json_schema=ROUTE)
    with pytest.raises(GenerationError) as err:
        model.chat(MESSAGES, options).text()
    assert str(err.value) == ("model 'm': the answer reached max_tokens (5) before the JSON "
                              "its schema asks for was complete; raise max_tokens")


def test_embeddings_request_and_answer(httpserver: HTTPServer,
                                       backend: OpenAIBackend) -> None:
    assert OpenAIBackend.capabilities.embeddings
    model = loaded(httpserver, backend)
    httpserver.expect_request("/v1/embeddings", method="POST",
                              json={"model": ALIAS, "input": TEXTS}).respond_with_json({
        "object": "list", "model": ALIAS, "usage": {"prompt_tokens": 12, "total_tokens": 12},
        "data": [{"object": "embedding", "index": 1, "embedding": [0.0, 2.0]},  # any order
                 {"object": "embedding", "index": 0, "embedding": [3.0, 4.0]}]})
    assert model.embed(TEXTS) == [[0.6, 0.8], [0.0, 1.0]]


@pytest.mark.parametrize(("status", "body", "said"), [
    (501, {"error": {"code": 501, "message": "This server does not support embeddings. Start "
                     "it with `--embeddings`", "type": "not_supported_error"}},
     "failed (HTTP 501): This server does not support embeddings. Start it with "
     "`--embeddings`"),
    (200, {"object": "list", "data": [{"index": 0}]},
     "answered /embeddings with no embedding list (data[].embedding)"),
    (200, {"object": "list", "data": [{"index": 0, "embedding": [1.0]}]},
     "returned 1 embeddings for 2 texts"),
])
def test_embeddings_a_server_will_not_give(httpserver: HTTPServer, backend: OpenAIBackend,
                                           status: int, body: dict, said: str) -> None:
    model = loaded(httpserver, backend)
    httpserver.expect_request("/v1/embeddings").respond_with_json(body, status=status)
    with pytest.raises(GenerationError) as err:
        model.embed(TEXTS)
    assert str(err.value).startswith("model 'm': ") and str(err.value).endswith(said)


def test_llama_server_timings_are_the_servers(httpserver: HTTPServer,
                                              backend: OpenAIBackend) -> None:
    timings = {"cache_n": 10, "prompt_n": 30, "prompt_ms": 120.5, "prompt_per_token_ms": 4.0,
               "predicted_n": 3, "predicted_ms": 60.0, "predicted_per_second": 50.0}
    httpserver.expect_request("/v1/chat/completions").respond_with_response(sse(
        chunk("Red"), chunk(" and"), chunk(" blue", finish="stop", timings=timings)))
    stream = loaded(httpserver, backend).chat(MESSAGES, OPTIONS)
    assert stream.text() == "Red and blue"
    stats = stream.stats
    assert stats is not None and stats.timing == "server"
    assert (stats.prompt_tokens, stats.cached_tokens, stats.completion_tokens,
            stats.decode_tokens) == (40, 10, 3, 3)
    assert (stats.prompt_s, stats.decode_s) == (0.1205, 0.06)
    assert stats.finish_reason == "stop"


def test_vllm_usage_counts_the_tokens(httpserver: HTTPServer, backend: OpenAIBackend) -> None:
    usage = {"prompt_tokens": 25, "completion_tokens": 4, "total_tokens": 29,
             "prompt_tokens_details": {"cached_tokens": 16}}
    httpserver.expect_request("/v1/chat/completions").respond_with_response(sse(
        chunk("Gr"), chunk("een"), chunk(finish="length"),
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": usage}))
    stream = loaded(httpserver, backend).chat(MESSAGES, OPTIONS)
    assert stream.text() == "Green"
    stats = stream.stats
    assert stats is not None and stats.timing == "client"
    assert (stats.prompt_tokens, stats.cached_tokens, stats.completion_tokens,
            stats.decode_tokens, stats.finish_reason) == (25, 16, 4, 3, "length")


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_names_its_variable(httpserver: HTTPServer, backend: OpenAIBackend,
                                          monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    monkeypatch.setenv("MY_KEY", KEY)
    httpserver.expect_request("/v1/models").respond_with_json(
        {"error": {"message": f"Incorrect API key provided: {KEY}"}}, status=status)
    with pytest.raises(ModelLoadError) as err:
        backend.load("m", spec_for(base(httpserver), api_key_env="MY_KEY"), None, 1)
    assert str(err.value) == (f"model 'm': the server at {base(httpserver)} refused the API "
                              f"key (HTTP {status}); check $MY_KEY")


def test_a_server_that_wants_a_key(httpserver: HTTPServer, backend: OpenAIBackend) -> None:
    serve_list(httpserver, ALIAS)
    model = backend.load("m", spec_for(base(httpserver)), None, 1)
    httpserver.expect_request("/v1/chat/completions").respond_with_json(
        {"error": {"message": "Missing bearer authentication in header"}}, status=401)
    with pytest.raises(GenerationError) as err:
        model.chat(MESSAGES, OPTIONS).text()
    assert str(err.value).startswith(f"model 'm': the server at {base(httpserver)} needs an "
                                     "API key (HTTP 401): add api_key_env: VAR to the model")


def test_an_unset_key_variable_is_said_before_any_request(httpserver: HTTPServer,
                                                          backend: OpenAIBackend) -> None:
    with pytest.raises(ModelLoadError) as err:
        backend.load("m", spec_for(base(httpserver), api_key_env="NOT_EXPORTED_KEY"), None, 1)
    assert str(err.value) == ("model 'm': api_key_env NOT_EXPORTED_KEY is not set; export it "
                              "(the key is never read from models.yaml)")
    assert not httpserver.log


def test_the_key_never_shows_in_an_error(httpserver: HTTPServer, backend: OpenAIBackend,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", KEY)
    model = loaded(httpserver, backend, api_key_env="MY_KEY")
    httpserver.expect_request("/v1/chat/completions").respond_with_data(
        f"upstream rejected Bearer {KEY}\nmore", status=502)
    with pytest.raises(GenerationError) as err:
        model.chat(MESSAGES, OPTIONS).text()
    assert str(err.value) == (f"model 'm': the server at {base(httpserver)} failed (HTTP 502): "
                              "upstream rejected Bearer ***")
    assert KEY not in repr(model.__dict__) and KEY not in str(model.runtime_facts)


def test_a_model_the_server_does_not_list(httpserver: HTTPServer,
                                          backend: OpenAIBackend) -> None:
    serve_list(httpserver, "qwen2.5-7b", "llama-3.2-1b")
    with pytest.raises(ModelNotFoundError) as err:
        backend.load("m", spec_for(base(httpserver), model="qwen2.5-7B"), None, 1)
    assert str(err.value) == (f"model 'm': the server at {base(httpserver)} does not serve "
                              "'qwen2.5-7B'; it serves: qwen2.5-7b, llama-3.2-1b (fix model: "
                              "of m in models.yaml)")


def test_not_found(httpserver: HTTPServer, backend: OpenAIBackend) -> None:
    without_v1 = httpserver.url_for("")
    httpserver.expect_request("/models").respond_with_json({"detail": "Not Found"}, status=404)
    with pytest.raises(ModelLoadError) as err:  # base_url without /v1: no /models there
        backend.load("m", spec_for(without_v1), None, 1)
    assert "has no /models (HTTP 404); fix base_url" in str(err.value)
    model = loaded(httpserver, backend)
    httpserver.expect_request("/v1/chat/completions").respond_with_json(
        {"error": {"code": 404, "message": "model not found", "type": "not_found_error"}},
        status=404)
    with pytest.raises(ModelNotFoundError) as not_served:
        model.chat(MESSAGES, OPTIONS).text()
    assert str(not_served.value).startswith(f"model 'm': the server at {base(httpserver)} does not "
                                     f"serve '{ALIAS}' or has no /chat/completions (HTTP 404: "
                                     "model not found); fix model: or base_url")


def test_a_server_error_says_what_the_server_said(httpserver: HTTPServer,
                                                  backend: OpenAIBackend) -> None:
    model = loaded(httpserver, backend)
    httpserver.expect_request("/v1/chat/completions").respond_with_json(
        {"object": "error", "message": "CUDA out of memory.\nTried to allocate 2 GiB",
         "type": "InternalServerError", "code": 500}, status=500)
    with pytest.raises(GenerationError) as err:
        model.chat(MESSAGES, OPTIONS).text()
    assert str(err.value) == (f"model 'm': the server at {base(httpserver)} failed (HTTP 500): "
                              "CUDA out of memory. Tried to allocate 2 GiB")


def test_busy_then_served_honours_retry_after(httpserver: HTTPServer, backend: OpenAIBackend,
                                              waits: list[float]) -> None:
    model = loaded(httpserver, backend)
    httpserver.expect_ordered_request("/v1/chat/completions").respond_with_json(
        {"error": {"message": "slots busy"}}, status=429, headers={"Retry-After": "2"})
    httpserver.expect_ordered_request("/v1/chat/completions").respond_with_json(
        {"error": {"message": "loading"}}, status=503)
    httpserver.expect_ordered_request("/v1/chat/completions").respond_with_response(
        sse(chunk("ok", finish="stop")))
    assert model.chat(MESSAGES, OPTIONS).text() == "ok"
    assert waits == [2.0, 1.0]  # the server's 2 s, then the backoff's second step


def test_kill_ends_the_wait_for_a_busy_server(httpserver: HTTPServer,
                                              backend: OpenAIBackend) -> None:
    """An agent abandoned while its server is busy: no try follows, the wait ends at once
    (the server asked for 30 s)."""
    model = loaded(httpserver, backend)
    busy = threading.Event()

    def answer_busy(request: Any) -> Response:
        busy.set()
        return Response(json.dumps({"error": {"message": "slots busy"}}), status=429,
                        headers={"Retry-After": "30"}, content_type="application/json")

    httpserver.expect_request("/v1/chat/completions").respond_with_handler(answer_busy)
    outcome: list[BaseException] = []
    thread = threading.Thread(target=lambda: _collect(model, outcome))
    thread.start()
    assert busy.wait(30)
    model.kill("its agent did not stop in time")
    thread.join(10)
    assert not thread.is_alive() and isinstance(outcome[0], GenerationError)
    assert "stopped" in str(outcome[0])
    assert len([r for r, _ in httpserver.log if r.path == "/v1/chat/completions"]) == 1


def _collect(model: OpenAIModel, outcome: list[BaseException]) -> None:
    try:
        model.chat(MESSAGES, OPTIONS).text()
    except BaseException as exc:  # noqa: BLE001 - the test reads it
        outcome.append(exc)


def test_a_servers_concurrency_holds_across_instances(httpserver: HTTPServer,
                                                      backend: OpenAIBackend) -> None:
    """With concurrency 1, a second instance's chat waits for the first one's request to
    end (an abandoned agent's request still counts), then goes."""
    first, second = loaded(httpserver, backend), loaded(httpserver, backend)
    inside = threading.Event()
    release = threading.Event()
    seen: list[int] = []

    def slow(request: Any) -> Response:
        seen.append(len(seen))
        inside.set()
        release.wait(30)
        return sse(chunk("ok", finish="stop"))

    httpserver.expect_request("/v1/chat/completions").respond_with_handler(slow)
    outcome: list[BaseException] = []
    one = threading.Thread(target=lambda: _collect(first, outcome))
    one.start()
    assert inside.wait(30)
    answers: list[str] = []
    two = threading.Thread(target=lambda: answers.append(second.chat(MESSAGES, OPTIONS).text()))
    two.start()
    two.join(0.5)  # it may not reach the server while the first request is out
    assert two.is_alive() and seen == [0]
    release.set()
    one.join(30)
    two.join(30)
    assert answers == ["ok"] and seen == [0, 1] and not outcome


@pytest.mark.parametrize("status", [429, 503])
def test_busy_for_ever(httpserver: HTTPServer, backend: OpenAIBackend, waits: list[float],
                       status: int) -> None:
    model = loaded(httpserver, backend, retries=3)
    httpserver.expect_request("/v1/chat/completions").respond_with_json(
        {"error": {"message": "busy"}}, status=status)
    with pytest.raises(GenerationError) as err:
        model.chat(MESSAGES, OPTIONS).text()
    assert str(err.value) == (f"model 'm': the server at {base(httpserver)} is still busy after "
                              f"4 tries (HTTP {status}); lower concurrency or raise retries")
    assert waits == [0.5, 1.0, 2.0]


def test_busy_while_loading_is_tried_again(httpserver: HTTPServer, backend: OpenAIBackend,
                                           waits: list[float]) -> None:
    httpserver.expect_ordered_request("/v1/models").respond_with_json(
        {"error": {"code": 503, "message": "Loading model"}}, status=503)
    httpserver.expect_ordered_request("/v1/models").respond_with_json({"data": [{"id": ALIAS}]})
    assert backend.load("m", spec_for(base(httpserver)), None, 1).name == "m"
    assert waits == [0.5]


def test_no_server_answers(backend: OpenAIBackend) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ModelLoadError) as err:
        backend.load("m", spec_for(url), None, 1)
    assert str(err.value) == (f"model 'm': no server answers at {url} (ConnectError); start it "
                              "or fix base_url")


@pytest.mark.parametrize(("body", "reason"), [
    (sse(chunk("The "), chunk("answer"), done=False),
     "broke after 2 pieces: the answer ended without [DONE] or a finish_reason"),
    (sse(chunk("The "), raw="data: {\"choices\": [\n\n"),
     "sent a stream line that is not a JSON object after 1 pieces: {\"choices\": ["),
    (sse(chunk("The "), {"error": {"message": "context full", "code": 500}}),
     "failed mid-answer after 1 pieces: context full"),
], ids=["ends without DONE", "malformed JSON", "error chunk"])
def test_a_broken_stream(httpserver: HTTPServer, backend: OpenAIBackend, body: Response,
                         reason: str) -> None:
    model = loaded(httpserver, backend)
    httpserver.expect_request("/v1/chat/completions").respond_with_response(body)
    stream = model.chat(MESSAGES, OPTIONS)
    with pytest.raises(GenerationError) as err:
        stream.text()
    assert str(err.value).startswith("model 'm': ")
    assert str(err.value).endswith(reason)
    assert base(httpserver) in str(err.value) and "\n" not in str(err.value)


def test_a_finish_reason_without_done_is_a_whole_answer(httpserver: HTTPServer,
                                                        backend: OpenAIBackend) -> None:
    model = loaded(httpserver, backend)
    httpserver.expect_request("/v1/chat/completions").respond_with_response(
        sse(chunk("Done"), chunk(finish="stop"), done=False))
    stream = model.chat(MESSAGES, OPTIONS)
    assert stream.text() == "Done" and stream.stats is not None


@pytest.mark.parametrize(("retry_after", "attempt", "low", "high"), [
    ("2", 0, 2.0, 2.0),
    ("0.25", 5, 0.25, 0.25),
    ("600", 0, 60.0, 60.0),  # capped
    ("-3", 0, 0.0, 0.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0, 0.0, 0.0),  # already past
    ("soon", 0, 0.5, 0.5),  # unreadable: the backoff
    (None, 0, 0.5, 0.5),
    (None, 1, 1.0, 1.0),
    (None, 3, 4.0, 4.0),
    (None, 12, 30.0, 30.0),  # capped
])
def test_retry_delay(retry_after: str | None, attempt: int, low: float, high: float) -> None:
    assert low <= retry_delay(retry_after, attempt) <= high


def test_retry_after_as_an_http_date() -> None:
    in_20_s = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=20), usegmt=True)
    assert 15.0 <= retry_delay(in_20_s, 0) <= 20.0


# --- what preflight and doctor read -------------------------------------------------------


def test_estimate_pool_and_hosts(backend: OpenAIBackend) -> None:
    spec = spec_for("http://localhost:8080/v1/", concurrency=4, n_ctx=4096)
    assert spec.base_url == "http://localhost:8080/v1"
    assert spec.where() == f"http://localhost:8080/v1 ({ALIAS})"
    estimate = backend.estimate("m", spec, None, None)  # type: ignore[arg-type]
    fp = estimate.footprint
    assert (estimate.path, estimate.facts) == (None, None)
    # localhost, 127.0.0.1 and ::1 are one machine: one server's pool and limit
    assert fp.pools == {"openai@http://127.0.0.1:8080": 0} and fp.total_bytes == 0
    assert (fp.local, fp.external, fp.parallel_limit, fp.parallel_group) == (
        False, True, 4, "openai@http://127.0.0.1:8080")
    assert fp.n_ctx == 4096
    assert backend.pool_budget("openai@http://localhost:8080", None) == 1 << 62  # type: ignore
    assert backend.pool_budget("ram", None) is None  # type: ignore[arg-type]
    assert spec_for("https://[::1]/v1").origin == "https://127.0.0.1:443"
    assert backend.remote_hosts(spec) == []
    remote = spec_for("https://gpu-box.lan/v1", allow_remote=True)
    assert backend.remote_hosts(remote) == ["https://gpu-box.lan/v1"]
    assert remote.origin == "https://gpu-box.lan:443"
    # a server neither batches for localmoa, places layers, pulls nor counts tokens; it
    # takes a JSON schema and embeds
    capable = {"constrained_output", "embeddings"}
    assert backend.capabilities.to_dict() == {
        k: k in capable for k in backend.capabilities.to_dict()}


def test_doctor_lists_each_servers_models(httpserver: HTTPServer, backend: OpenAIBackend,
                                          tmp_path: Path) -> None:
    serve_list(httpserver, ALIAS)
    gone = f"http://127.0.0.1:{free_port()}/v1"
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(f"""\
        models:
          here: {{backend: openai, base_url: "{base(httpserver)}", model: {ALIAS}}}
          typo: {{backend: openai, base_url: "{base(httpserver)}/", model: smollm3}}
          down: {{backend: openai, base_url: "{gone}", model: {ALIAS}}}
        """), encoding="utf-8")
    config = load_config(path)
    section = backend.doctor(config)
    assert section == [
        {"host": base(httpserver), "reachable": True, "error": None, "models": [ALIAS],
         "summary": f"1 models: {ALIAS}"},
        {"host": gone, "reachable": False, "models": [], "summary": "",
         "error": f"no server answers at {gone} (ConnectError); start it or fix base_url"}]
    rows = [{"name": n, "backend": "openai", "source": config.models[n].where(),
             "present": None, "problem": None, **backend.locate(config, n)}
            for n in ("here", "typo", "down")]
    problems = backend.doctor_problems(section, rows)
    assert problems == [f"OpenAI-compatible server at {gone} (for down): no server answers "
                        f"at {gone} (ConnectError); start it or fix base_url"]
    assert [r["present"] for r in rows] == [True, False, None]
    assert rows[1]["problem"] == (f"the server at {base(httpserver)} does not serve "
                                  f"'smollm3'; it serves: {ALIAS}")
    assert backend.doctor(None) is None


# --- models.yaml ---------------------------------------------------------------------------

ENTRY = """\
models:
  srv:
    backend: openai
    model: smollm2
"""

# (case, the entry's further lines, expected line, expected fragments of the one-line error)
BAD_ENTRIES = [
    ("base_url without a scheme", "    base_url: 127.0.0.1:8080/v1\n", 5,
     ["models.srv.base_url", "needs http:// or https:// and a host",
      "http://127.0.0.1:8080/v1"]),
    ("base_url with a bad port", "    base_url: http://localhost:80800/v1\n", 5,
     ["models.srv.base_url", "is not a URL"]),
    ("a remote host without allow_remote", "    base_url: http://gpu-box:8000/v1\n", 5,
     ["models.srv.base_url", "gpu-box is not this machine", "allow_remote: true"]),
    ("a key in api_key_env", "    base_url: http://localhost:8080/v1\n"
     f"    api_key_env: {KEY}\n", 6,
     ["models.srv.api_key_env", "names an environment variable (e.g. OPENAI_API_KEY), not "
      "the key itself"]),
    ("parallel on an openai model", "    base_url: http://localhost:8080/v1\n"
     "    parallel: 4\n", 6,
     ["models.srv.parallel", "parallel applies to backend: ollama only; a server's requests "
      "at once is concurrency"]),
    ("source on an openai model", "    base_url: http://localhost:8080/v1\n"
     "    source: {path: /x.gguf}\n", 6, ["models.srv.source", "base_url: and model:"]),
    ("no base_url", "", 2, ["models.srv.base_url", "required field is missing"]),
    ("concurrency zero", "    base_url: http://localhost:8080/v1\n    concurrency: 0\n", 6,
     ["models.srv.concurrency", "greater than or equal to 1"]),
    ("an unknown response_format", "    base_url: http://localhost:8080/v1\n"
     "    response_format: grammar\n", 6,
     ["models.srv.response_format", "'json_schema' or 'json_object'"]),
]


@pytest.mark.parametrize(("case", "more", "line", "fragments"), BAD_ENTRIES,
                         ids=[c[0] for c in BAD_ENTRIES])
def test_a_bad_entry_is_one_line_with_file_line_field(case: str, more: str, line: int,
                                                      fragments: list[str],
                                                      tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(ENTRY + more, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert "\n" not in message and KEY not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_a_good_entry(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(ENTRY + "    base_url: https://gpu-box.lan:8443/v1/\n"
                    "    allow_remote: true\n    api_key_env: GPU_BOX_KEY\n"
                    "    concurrency: 8\n    timeout_s: 120\n    retries: 0\n",
                    encoding="utf-8")
    spec = load_config(path).models["srv"]
    assert isinstance(spec, OpenAISpec)
    assert (spec.base_url, spec.model, spec.api_key_env, spec.concurrency, spec.timeout_s,
            spec.retries) == ("https://gpu-box.lan:8443/v1", "smollm2", "GPU_BOX_KEY", 8,
                              120.0, 0)
    assert spec.origin == "https://gpu-box.lan:8443"
    assert spec.response_format == "json_schema"  # OpenAI's, unless the entry says otherwise


@pytest.mark.parametrize("entry", [
    'base_url: "http://127.0.0.1:8080/v1?api-key=sk-live-0123456789abcdef"',
    "base_url: http://127.0.0.1:8080/v1\n    api_key_env: 12345678901234567890123456789",
    'base_url: "http://user:sk-live-0123456789abcdef@127.0.0.1:8080/v1"',
])
def test_a_config_error_never_repeats_a_secret(tmp_path: Path, entry: str) -> None:
    path = tmp_path / "user.yaml"
    path.write_text(f"models:\n  m:\n    backend: openai\n    model: x\n    {entry}\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "0123456789abcdef" not in str(err.value) and "1234567890123" not in str(err.value)
    assert str(err.value).startswith(f"{path}:")


def test_the_socket_guard_lets_exactly_the_allowed_server_through(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from localmoa import netguard
    from localmoa.memory.probe import probe
    from localmoa.preflight import estimate_model

    monkeypatch.setattr(netguard, "_allowed_hosts", set())
    monkeypatch.setattr(netguard, "_allowed_ips", set())
    path = tmp_path / "user.yaml"
    path.write_text("models:\n  far: {backend: openai, base_url: 'http://10.1.2.3:8000/v1', "
                    "model: m, allow_remote: true}\n", encoding="utf-8")
    config = load_config(path)
    with pytest.raises(netguard.NetworkRefused):
        netguard._check("10.1.2.3", "connect 10.1.2.3:8000")  # nothing allowed it yet
    found = estimate_model(config, "far", probe())
    assert found.footprint.external and found.facts is None and found.path is None
    netguard._check("10.1.2.3", "connect 10.1.2.3:8000")  # the configured host: allowed
    with pytest.raises(netguard.NetworkRefused, match="base_url with allow_remote"):
        netguard._check("10.9.9.9", "connect 10.9.9.9:8000")  # any other: refused
