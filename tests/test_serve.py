"""`localmoa serve` through the clients people use: the real `openai` and `ollama`
Python clients, raw HTTP with bad bodies, keys, a full queue, a client that goes away,
SIGTERM during a request. The server is a real `localmoa serve` process running the
shipped tiny profile (SmolLM2-135M) on loopback."""

from __future__ import annotations

import concurrent.futures
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
import requests

from localmoa.config import load_config
from localmoa.preflight import preflight
from localmoa.recipe import build_graph, merge_graphs

from .conftest import SAFETY_S, cli
from .serve_process import Served

QUESTION = [{"role": "user", "content": "Which is larger, 9.11 or 9.9?"}]
LONG = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def _serve_env(tmp_path_factory: pytest.TempPathFactory,
               repack_verdicts: bytes) -> dict[str, str]:
    from localmoa.backends.llamacpp import repack

    home = tmp_path_factory.mktemp("serve-home")
    (home / repack.CACHE_FILE).write_bytes(repack_verdicts)
    env = {**os.environ, "LOCALMOA_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    for name in ("LOCALMOA_CONFIG", "LOCALMOA_DEBUG", "LOCALMOA_API_KEY", "OLLAMA_HOST"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, repack_verdicts: bytes) -> Iterator[Served]:
    with Served("--queue", "4", env=_serve_env(tmp_path_factory, repack_verdicts)) as served:
        yield served


def test_the_openai_client_non_streaming(server: Served) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    ids = [m.id for m in client.models.list().data]
    assert "moa:tiny" in ids and "smollm2-135m" in ids
    reply = client.chat.completions.create(model="moa:tiny", messages=QUESTION,  # type: ignore[arg-type]
                                           max_tokens=24, temperature=0, seed=1)
    assert reply.choices[0].message.content and reply.choices[0].finish_reason in ("stop",
                                                                                    "length")
    assert reply.usage is not None and reply.usage.completion_tokens > 24  # every agent's
    extra = reply.model_extra or {}
    agents = extra["localmoa"]["agents"]
    assert [a["agent"] for a in agents] == ["L1.1", "L1.2", "L1.3", "AGG"]
    assert agents[-1]["completion_tokens"] <= 24  # max_tokens reached the aggregator


def test_the_openai_client_streaming_with_usage(server: Served) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    pieces, usage, finish = [], None, None
    for chunk in client.chat.completions.create(
            model="moa:tiny", messages=QUESTION, max_tokens=24, temperature=0,  # type: ignore[arg-type]
            stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces).strip() and finish in ("stop", "length")
    assert usage is not None and usage.total_tokens > 0


def test_the_openai_client_errors(server: Served) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="moa:nope", messages=QUESTION)  # type: ignore[arg-type]
    assert "model 'moa:nope' not found" in str(missing.value)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="moa:tiny", messages=QUESTION,  # type: ignore[arg-type]
                                       temperature=5)
    assert "temperature" in str(bad.value)


def test_the_ollama_client(server: Served) -> None:
    client = ollama.Client(host=server.url)
    names = [m.model for m in client.list().models]
    assert "moa:tiny" in names
    reply = client.chat(model="moa:tiny", messages=QUESTION,
                        options={"num_predict": 16, "temperature": 0})
    assert reply.message.content and reply.done and reply.eval_count and reply.total_duration
    streamed = list(client.chat(model="smollm2-135m", messages=QUESTION, stream=True,
                                options={"num_predict": 16, "temperature": 0}))
    assert streamed[-1].done and streamed[-1].eval_count
    assert "".join(p.message.content or "" for p in streamed).strip()
    generated = client.generate(model="smollm2-135m", prompt="Say hi",
                                options={"num_predict": 8})
    assert generated.response and generated.done
    running = [m.model for m in client.ps().models]
    assert "smollm2-135m" in running  # kept loaded between requests
    assert client.show("moa:tiny").details is not None
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="nope", messages=QUESTION)
    assert missing.value.status_code == 404


def test_a_skipped_aggregation_still_streams_its_answer(server: Served) -> None:
    """tiny-auto's temperature-0 proposers agree: no aggregator writes, and the stream
    (OpenAI and Ollama) still carries the answer, the same as the whole response."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    whole = client.chat.completions.create(model="moa:tiny-auto", messages=QUESTION,  # type: ignore[arg-type]
                                           temperature=0, seed=1)
    decided = (whole.model_extra or {})["localmoa"]["recipe"]["consensus"]
    assert decided["aggregation"] == "skipped"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="moa:tiny-auto", messages=QUESTION, temperature=0, seed=1, stream=True)  # type: ignore[arg-type]
        if c.choices)
    assert streamed and streamed == whole.choices[0].message.content
    lines = list(ollama.Client(host=server.url).chat(
        model="moa:tiny-auto", messages=QUESTION, stream=True,
        options={"temperature": 0, "seed": 1}))
    assert "".join(line.message.content or "" for line in lines) == streamed


def test_a_routing_profile_routes_each_request(server: Served) -> None:
    body = httpx.post(server.url + "/v1/chat/completions", timeout=300, json={
        "model": "moa:tiny-router", "max_tokens": 8,
        "messages": [{"role": "user", "content": "What is 17 + 25?"}]}).json()
    routing = body["localmoa"]["recipe"]["routing"]
    assert routing["kind"] == "choose" and len(routing["chosen"]) == 1
    assert body["choices"][0]["message"]["content"]


@pytest.mark.parametrize(("path", "body", "status", "shape"), [
    ("/v1/chat/completions", "{not json", 400, "openai"),
    ("/v1/chat/completions", '{"model": "moa:tiny"}', 400, "openai"),
    ("/v1/chat/completions", '{"model": "moa:tiny", "messages": [], "max_tokens": 8}', 400,
     "openai"),
    ("/v1/chat/completions", '{"model": "moa:tiny", "messages": [{"role": "user", '
     '"content": "x"}], "max_tokens": -1}', 400, "openai"),
    ("/api/chat", '{"messages": []}', 400, "ollama"),
    ("/api/generate", '[1, 2]', 400, "ollama"),
])
def test_bad_bodies_are_400_in_the_apis_shape(server: Served, path: str, body: str,
                                              status: int, shape: str) -> None:
    response = httpx.post(server.url + path, content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if shape == "openai":
        assert error["type"] == "invalid_request_error" and error["message"]
    else:
        assert isinstance(error, str) and error


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/metrics"),
    ("GET", "/api/ps"), ("POST", "/api/chat"), ("POST", "/v1/localmoa/runs")])
def test_dns_rebinding_is_refused(server: Served, method: str, path: str) -> None:
    """A page whose name was rebound to 127.0.0.1: its Host and Origin are its own."""
    body = {"model": "moa:tiny", "messages": QUESTION, "max_tokens": 8}
    for headers in ({"host": f"evil.example:{server.port}"}, {"origin": "http://evil.example"},
                    {"host": f"evil.example:{server.port}",
                     "origin": f"http://evil.example:{server.port}"}):
        response = httpx.request(method, server.url + path, json=body, headers=headers)
        assert response.status_code == 403, response.text
        assert "evil.example" in str(response.json()["error"])


def test_a_body_without_a_json_content_type_is_refused(server: Served) -> None:
    """What a page's fetch with a Blob body sends: no preflight, no Content-Type."""
    before = _metric(server, "localmoa_requests_total")
    body = json.dumps({"model": "moa:tiny", "messages": QUESTION}).encode()
    for path in ("/v1/chat/completions", "/api/chat", "/v1/localmoa/runs"):
        for headers in ({}, {"content-type": "text/plain"}):
            response = httpx.post(server.url + path, content=body, headers=headers)
            assert response.status_code == 415, response.text
    assert _metric(server, "localmoa_requests_total") == before


def test_a_body_over_the_cap_is_413(server: Served) -> None:
    response = httpx.post(server.url + "/v1/chat/completions", content=b"x" * (2 << 20),
                          headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_a_chunked_body_is_capped_too(server: Served) -> None:
    def pieces(total: int, body: bytes = b""):  # no Content-Length: sent chunked
        yield body or b"x" * total

    url = server.url + "/v1/chat/completions"
    big = httpx.post(url, content=pieces(2 << 20), headers={"content-type": "application/json"})
    assert big.status_code == 413 and "request body over" in big.json()["error"]["message"]
    small = json.dumps({"model": "nope", "messages": QUESTION}).encode()
    under = httpx.post(url, content=pieces(0, small), headers={"content-type": "application/json"})
    assert under.status_code == 404  # read in full, replayed: the app saw the whole body


def test_health_and_metrics(server: Served) -> None:
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    text = httpx.get(server.url + "/metrics").text
    for name in ("localmoa_requests_total", "localmoa_queue_depth", "localmoa_tokens_total",
                 "localmoa_requests_batched_total",
                 "localmoa_loads_total", "localmoa_resident_bytes"):
        assert f"# TYPE {name}" in text


def test_a_client_that_goes_away_stops_its_agents(server: Served) -> None:
    before = _metric(server, "localmoa_requests_cancelled_total")
    body = {"model": "smollm2-135m", "messages": LONG, "max_tokens": 2000, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                      timeout=SAFETY_S) as response:
        for line in response.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # a first piece of the answer: now go away
    # the next request is served, after the abandoned run stopped
    reply = httpx.post(server.url + "/v1/chat/completions", timeout=SAFETY_S, json={
        "model": "smollm2-135m", "messages": QUESTION, "max_tokens": 8})
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    assert _metric(server, "localmoa_requests_cancelled_total") == before + 1


def test_twenty_concurrent_clients(tmp_path_factory: pytest.TempPathFactory,
                                   repack_verdicts: bytes) -> None:
    """Every request gets an answer or a clean 429; the server stays up; memory stays
    within the budget it was given: room for four merged tiny runs, which is all that
    can run at once, so the models kept loaded between requests must make way."""
    config = load_config()
    merged = merge_graphs([build_graph(config, "tiny") for _ in range(4)])
    peak = preflight(config, merged, None).plan.peak_bytes["ram"]
    budget_mib = -(-peak * 5 // 4 >> 20)  # a quarter more than the merged plan's peak
    env = _serve_env(tmp_path_factory, repack_verdicts)
    with Served("--queue", "4", "--memory-budget", f"{budget_mib}MiB", env=env) as server:

        def ask(i: int) -> int:
            # a bound on a hung server only: under load a merged run may take minutes
            response = httpx.post(server.url + "/v1/chat/completions", timeout=1800, json={
                "model": "moa:tiny", "messages": [{"role": "user", "content": f"Count to {i}."}],
                "max_tokens": 8})
            if response.status_code == 429:
                assert response.headers["retry-after"] and response.json()["error"]["code"] == \
                    "queue_full"
            else:
                assert response.status_code == 200, response.text
                assert response.json()["choices"][0]["message"]["content"] is not None
            return response.status_code

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(ask, range(20)))
        assert set(statuses) <= {200, 429} and statuses.count(200) >= 4  # the queue holds 4
        assert 429 in statuses
        assert httpx.get(server.url + "/health").json()["status"] == "ok"
        resident = int(_metric(server, "localmoa_resident_bytes"))
    baseline = 200 << 20  # the server process itself: Python, FastAPI, llama.cpp imported
    assert resident <= baseline + (budget_mib << 20), (resident >> 20, budget_mib)


def _metric(server: Served, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_non_loopback_bind_needs_a_key() -> None:
    proc = cli("serve", "--host", "0.0.0.0", "--port", "9")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "localmoa: error: --host 0.0.0.0 lets other machines in: give --api-key KEY (or set "
        "LOCALMOA_API_KEY), or bind 127.0.0.1"]


def test_a_key_guards_every_route_but_health(isolated_home: Path) -> None:
    """A key with a non-ASCII letter, sent as its UTF-8 bytes or its Latin-1 ones."""
    with Served("--api-key", "s3crét") as served:
        assert httpx.get(served.url + "/health").status_code == 200
        refused = httpx.get(served.url + "/v1/models")
        assert refused.status_code == 401 and refused.json()["error"]["type"] == \
            "authentication_error"
        assert httpx.get(served.url + "/api/tags").status_code == 401
        assert httpx.get(served.url + "/v1/models",
                         headers={"Authorization": "Bearer s3crét".encode()}).status_code == 200
        assert httpx.get(served.url + "/api/tags",
                         headers={"x-api-key": "s3crét".encode()}).status_code == 200
        assert httpx.get(served.url + "/api/tags",
                         headers={"x-api-key": "s3crét".encode("latin-1")}).status_code == 200
        # Python's requests sends a str header as Latin-1
        assert requests.get(served.url + "/v1/models", headers={"x-api-key": "s3crét"},
                            timeout=60).status_code == 200
        assert requests.get(served.url + "/v1/models", headers={"x-api-key": "s3cret"},
                            timeout=60).status_code == 401
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_a_run_that_fails_is_not_retried_by_the_client(tmp_path: Path,
                                                        isolated_home: Path) -> None:
    """A model whose file is gone: one line, 500 with x-should-retry: false, so the openai
    client does not run the whole MoA again."""
    config = tmp_path / "gone.yaml"
    config.write_text("models:\n  gone: {backend: llamacpp, source: {path: /nonexistent.gguf}}\n",
                      encoding="utf-8")
    with Served("--config", str(config)) as served:
        response = httpx.post(served.url + "/v1/chat/completions", timeout=60, json={
            "model": "gone", "messages": QUESTION, "max_tokens": 8})
        assert response.status_code == 500 and response.headers["x-should-retry"] == "false"
        message = response.json()["error"]["message"]
        assert "/nonexistent.gguf does not exist" in message and "\n" not in message
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused")  # retries on
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gone", messages=QUESTION)  # type: ignore[arg-type]
        assert _metric(served, "localmoa_requests_total") == 2  # one run each: no retries
