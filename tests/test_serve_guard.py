"""Who may call `localmoa serve`, and the shape of every refusal: DNS rebinding (Host),
cross-site pages (Origin), bodies that are not JSON, keys in UTF-8, unknown routes,
bad bodies, oversized requests, a bug. In process (FastAPI's TestClient) against the
shipped config; no request here reaches a model: the service is never started, so a
request that got through would wait (every allowed POST names an unknown model: the
route's own 404 proves it got through)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from localmoa.config import load_config
from localmoa.serve.app import AppSettings, create_app
from localmoa.serve.guard import key_matches
from localmoa.serve.hosts import bind_address, bind_is_loopback, host_allowed, origin_allowed
from localmoa.serve.service import MAX_CHARS, MAX_MESSAGES, MoaService

from .conftest import cli
from .serve_process import Served

PORT = 11500
BASE = f"http://127.0.0.1:{PORT}"
EVIL_HOST = f"evil.example:{PORT}"
EVIL_ORIGIN = "http://evil.example"
ASK = [{"role": "user", "content": "Hi"}]
#: Every route, with a request that gets through the guard when it is allowed.
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/chat/completions", {"model": "nope", "messages": ASK}),
    ("GET", "/v1/models", None),
    ("GET", "/metrics", None),
    ("GET", "/health", None),
    ("GET", "/", None),
    ("GET", "/openapi.json", None),
    ("GET", "/api/ps", None),
    ("GET", "/api/tags", None),
    ("GET", "/api/version", None),
    ("POST", "/api/chat", {"model": "nope", "messages": ASK}),
    ("POST", "/api/generate", {"model": "nope", "prompt": "Hi"}),
    ("POST", "/api/show", {"model": "nope"}),
    ("POST", "/v1/localmoa/runs", {"model": "nope", "messages": ASK}),
]


@pytest.fixture(scope="module")
def service() -> Iterator[MoaService]:
    service = MoaService(load_config(), start=False)  # nothing runs: nothing may queue
    yield service
    service.close(0.0)


def client(service: MoaService, **settings: Any) -> TestClient:
    return TestClient(create_app(service, AppSettings(**settings)), base_url=BASE)


def call(http: TestClient, method: str, path: str, body: dict[str, Any] | None,
         **headers: str) -> Any:
    return http.request(method, path, json=body, headers=headers)


def assert_shape(response: Any, path: str, status: int) -> str:
    """The error is in the shape of the route's API; its message."""
    assert response.status_code == status, (path, response.status_code, response.text)
    error = response.json()["error"]
    if path.startswith("/api/"):
        assert isinstance(error, str) and error
        return str(error)
    assert error["message"] and error["type"]
    return str(error["message"])


def assert_through(response: Any, method: str) -> None:
    """The request got past the guard: answered by its route."""
    expected = 404 if method == "POST" else 200  # the unknown model
    assert response.status_code == expected, response.text
    if method == "POST":
        assert "not found" in response.text


# --- DNS rebinding and cross-site pages -----------------------------------------------

@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_a_rebound_host_is_refused_on_every_route(service: MoaService, method: str,
                                                  path: str, body: Any) -> None:
    http = client(service)
    message = assert_shape(call(http, method, path, body, host=EVIL_HOST), path, 403)
    assert "evil.example" in message and "--allow-host" in message
    assert_through(call(http, method, path, body, host=f"localhost:{PORT}"), method)
    assert service.queue_depth() == 0


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_a_foreign_origin_is_refused_on_every_route(service: MoaService, method: str,
                                                    path: str, body: Any) -> None:
    http = client(service)
    assert_shape(call(http, method, path, body, origin=EVIL_ORIGIN), path, 403)
    assert_shape(call(http, method, path, body, host=EVIL_HOST, origin=f"http://{EVIL_HOST}"),
                 path, 403)  # rebinding: the page is same-origin with its own name
    assert_through(call(http, method, path, body, origin=BASE), method)  # the page at /


@pytest.mark.parametrize("host", [
    f"127.0.0.1:{PORT}", "127.0.0.1", f"localhost:{PORT}", "LOCALHOST", "localhost.",
    f"app.localhost:{PORT}", f"[::1]:{PORT}", "[::1]", f"127.9.8.7:{PORT}",
    f"[::ffff:127.0.0.1]:{PORT}", f"[0:0:0:0:0:0:0:1]:{PORT}"])
def test_loopback_host_forms_are_served(service: MoaService, host: str) -> None:
    assert client(service).get("/v1/models", headers={"host": host}).status_code == 200
    assert host_allowed(host, ())


@pytest.mark.parametrize("host", [
    EVIL_HOST, "evil.example", f"0.0.0.0:{PORT}", f"[::]:{PORT}", f"192.168.1.5:{PORT}",
    "127.0.0.1.evil.example", "localhost.evil.example", f"[::ffff:192.168.1.5]:{PORT}",
    "::1", "[::1", f"127.0.0.1:{PORT}0000", "127.0.0.1:", ":11500", f"localhost:{PORT}:1"])
def test_other_host_forms_are_refused(service: MoaService, host: str) -> None:
    assert client(service).get("/v1/models", headers={"host": host}).status_code == 403
    assert not host_allowed(host, ())


def test_allow_host_serves_that_name_and_no_other(service: MoaService) -> None:
    http = client(service, allowed_hosts=("moa.lan", "192.168.1.5"))
    assert http.get("/v1/models", headers={"host": f"MOA.lan:{PORT}"}).status_code == 200
    assert http.get("/v1/models", headers={"host": "192.168.1.5"}).status_code == 200
    assert http.get("/v1/models", headers={"host": EVIL_HOST}).status_code == 403
    assert http.get("/v1/models", headers={"host": "moa.lan", "origin": "https://moa.lan"}
                    ).status_code == 200  # a page from there: same origin
    assert client(service, allowed_hosts=("*",)).get(
        "/v1/models", headers={"host": EVIL_HOST}).status_code == 200


@pytest.mark.parametrize(("origin", "ok"), [
    (BASE, True), (f"http://localhost:{PORT}", True), (f"http://[::1]:{PORT}", True),
    (f"HTTP://LOCALHOST:{PORT}/", True), ("http://localhost:3000", False),
    ("http://127.0.0.1", False), ("null", False), (EVIL_ORIGIN, False),
    (f"http://evil.example:{PORT}", False), (f"file://localhost:{PORT}", False),
    ("http://localhost:bad", False)])
def test_origin_forms(service: MoaService, origin: str, ok: bool) -> None:
    status = client(service).get("/v1/models", headers={"origin": origin}).status_code
    assert status == (200 if ok else 403)


def test_cors_origins_are_allowed_and_get_cors_headers(service: MoaService) -> None:
    http = client(service, cors=("http://localhost:3000",))
    response = http.get("/v1/models", headers={"origin": "http://localhost:3000"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
    preflight = http.options("/v1/chat/completions", headers={
        "origin": "http://localhost:3000", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type"})
    assert preflight.status_code == 200
    assert http.options("/v1/chat/completions", headers={
        "origin": EVIL_ORIGIN, "access-control-request-method": "POST"}).status_code == 403
    assert http.get("/v1/models", headers={"origin": EVIL_ORIGIN}).status_code == 403


def test_with_a_key_any_host_may_call_but_not_a_foreign_page(service: MoaService) -> None:
    """A bind off loopback needs a key, and its clients use any name: with a key the Host
    is not checked. A browser page from elsewhere still cannot call."""
    http = client(service, api_key="s3cret")
    key = {"authorization": "Bearer s3cret"}
    assert http.get("/v1/models", headers={**key, "host": "192.168.1.5:11500"}
                    ).status_code == 200
    assert http.get("/v1/models", headers={"host": "192.168.1.5:11500"}).status_code == 401
    assert http.get("/v1/models", headers={**key, "host": EVIL_HOST}).status_code == 200
    refused = http.post("/v1/chat/completions", json={"model": "nope", "messages": ASK},
                        headers={**key, "origin": EVIL_ORIGIN})
    assert_shape(refused, "/v1/chat/completions", 403)
    assert http.get("/v1/models", headers={**key, "host": "192.168.1.5:11500",
                                           "origin": "http://192.168.1.5:11500"}
                    ).status_code == 200  # the page, opened at that address


def test_origin_allowed_table() -> None:
    assert origin_allowed("http://moa.lan:8080", "moa.lan:8080", PORT, ())
    assert origin_allowed("https://moa.lan", "moa.lan", PORT, ())
    assert not origin_allowed("https://moa.lan", "moa.lan:80", PORT, ())
    assert origin_allowed("https://x.example", None, PORT, ("https://X.example/",))
    assert origin_allowed("null", None, PORT, ("null",))
    assert origin_allowed("https://anything", None, PORT, ("*",))


# --- keys --------------------------------------------------------------------------------

def test_a_non_ascii_key_works_as_utf8_or_latin1_bytes(service: MoaService) -> None:
    """The header's bytes as sent (httpx's ASGI transport keeps them; TestClient would
    re-encode them): UTF-8 (curl, httpx) or Latin-1 (Python's requests, http.client)."""
    app = create_app(service, AppSettings(api_key="clé"))

    async def statuses() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url=BASE) as http:
            return [(await http.get(path, headers=headers)).status_code for path, headers in [
                ("/v1/models", {"x-api-key": "clé".encode()}),
                ("/api/tags", {"authorization": "Bearer clé".encode()}),
                ("/v1/models", {"x-api-key": "clé".encode("latin-1")}),
                ("/api/tags", {"authorization": "Bearer clé".encode("latin-1")}),
                ("/v1/models", {"authorization": b"Bearer cl"}),
                ("/v1/models", {"x-api-key": "clé".encode("utf-16-le")}),
                ("/v1/models", {"x-api-key": b"cle"}),
                ("/v1/models", {}), ("/health", {}), ("/", {})]]

    assert asyncio.run(statuses()) == [200, 200, 200, 200, 401, 401, 401, 401, 200, 200]
    assert_shape(client(service, api_key="clé").get("/api/tags"), "/api/tags", 401)


@pytest.mark.parametrize(("key", "sent", "ok"), [
    ("clé", "clé".encode(), True), ("clé", "clé".encode("latin-1"), True),
    ("clé", b"cl\xc3", False), ("clé", b"cl", False), ("clé", "clé".encode() + b"\xe9", False),
    ("s3cret", b"s3cret", True), ("s3cret", b"s3cre", False),
    ("ключ", "ключ".encode(), True), ("ключ", "ключ".encode("cp1251"), False),
])
def test_key_matches(key: str, sent: bytes, ok: bool) -> None:
    assert key_matches(sent, key) is ok


# --- JSON only -------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat", "/api/generate",
                                  "/api/show", "/v1/localmoa/runs"])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x",
                                          "application/jsonx"])
def test_a_post_that_is_not_json_is_refused(service: MoaService, path: str,
                                            content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = b'{"model": "moa:tiny", "messages": [{"role": "user", "content": "Hi"}]}'
    message = assert_shape(client(service).post(path, content=body, headers=headers), path,
                           415)
    assert "Content-Type: application/json" in message
    assert service.queue_depth() == 0


def test_json_with_parameters_is_json(service: MoaService) -> None:
    response = client(service).post(
        "/v1/chat/completions", content=b'{"model": "nope", "messages": [{"role": "user", '
        b'"content": "Hi"}]}', headers={"content-type": "Application/JSON; charset=utf-8"})
    assert response.status_code == 404 and "not found" in response.text


# --- one error shape per API -----------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/nope", 404), ("GET", "/api/nope", 404), ("GET", "/nope", 404),
    ("POST", "/v1/nope", 404), ("GET", "/docs", 404), ("GET", "/redoc", 404),
    ("DELETE", "/v1/models", 405), ("GET", "/v1/chat/completions", 405),
    ("GET", "/api/chat", 405), ("PUT", "/api/tags", 405)])
def test_unknown_routes_and_methods_in_the_apis_shape(service: MoaService, method: str,
                                                      path: str, status: int) -> None:
    response = client(service).request(method, path, json={})
    message = assert_shape(response, path, status)
    assert path in message
    if status == 405:
        assert response.headers["allow"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat", "/api/generate",
                                  "/v1/localmoa/runs"])
@pytest.mark.parametrize("body", [b"{not json", b"", b'{"model": "x", ', b"\xff\xfe"])
def test_invalid_json_is_400_in_the_apis_shape(service: MoaService, path: str,
                                               body: bytes) -> None:
    response = client(service).post(path, content=body,
                                    headers={"content-type": "application/json"})
    assert_shape(response, path, 400)


@pytest.mark.parametrize("message", [
    {"content": "Hi"}, {"role": "wizard", "content": "Hi"}, {"role": "user"},
    {"role": "user", "content": 3}, "Hi", {"role": "tool", "content": "x"}])
def test_the_runs_route_validates_messages_before_queueing(service: MoaService,
                                                           message: Any) -> None:
    response = client(service).post("/v1/localmoa/runs", json={
        "model": "moa:tiny", "messages": [message]})
    assert "messages.0" in assert_shape(response, "/v1/localmoa/runs", 400)
    assert service.queue_depth() == 0


def test_an_ollama_message_with_an_unknown_role_is_400(service: MoaService) -> None:
    response = client(service).post("/api/chat", json={
        "model": "moa:tiny", "messages": [{"role": "wizard", "content": "Hi"}]})
    assert "role" in assert_shape(response, "/api/chat", 400)


# --- per-request limits ----------------------------------------------------------------

@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", lambda msgs: {"model": "moa:tiny", "messages": msgs}),
    ("/api/chat", lambda msgs: {"model": "moa:tiny", "messages": msgs}),
    ("/v1/localmoa/runs", lambda msgs: {"model": "moa:tiny", "messages": msgs}),
    ("/api/generate", lambda msgs: {"model": "moa:tiny", "prompt": msgs[0]["content"]})])
def test_too_many_messages_or_characters_are_400_before_queueing(
        service: MoaService, path: str, body: Any) -> None:
    http = client(service)
    before = service.counters.requests
    if path != "/api/generate":
        many = http.post(path, json=body([{"role": "user", "content": "x"}] *
                                         (MAX_MESSAGES + 1)))
        assert "at most 1024" in assert_shape(many, path, 400)
    long = http.post(path, json=body([{"role": "user", "content": "x" * (MAX_CHARS + 1)}]))
    assert f"at most {MAX_CHARS}" in assert_shape(long, path, 400)
    assert service.queue_depth() == 0 and service.counters.requests == before


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/chat/completions", {"messages": ASK}),
    ("POST", "/api/chat", {"messages": ASK}), ("POST", "/api/chat", {"messages": []}),
    ("POST", "/api/generate", {"prompt": "Hi"}), ("POST", "/api/generate", {"prompt": ""}),
    ("POST", "/api/show", {}), ("POST", "/v1/localmoa/runs", {"messages": ASK})])
def test_an_unknown_model_name_is_clipped_in_the_404(service: MoaService, method: str,
                                                     path: str, body: dict) -> None:
    name = "m" * 900_000
    message = assert_shape(call(client(service), method, path, {**body, "model": name}),
                           path, 404)
    assert message.startswith("model 'mmmm") and "…' not found" in message
    assert len(message) < 300


def test_a_long_host_or_origin_is_clipped_in_the_403(service: MoaService) -> None:
    http = client(service)
    host = "h" * 8000 + ".example"
    message = assert_shape(http.get("/v1/models", headers={"host": host}), "/v1/models", 403)
    assert message.startswith("Host 'hhhh") and "…' is not" in message and len(message) < 300
    origin = "http://" + "o" * 8000 + ".example"
    message = assert_shape(http.get("/v1/models", headers={"origin": origin}), "/v1/models",
                           403)
    assert message.startswith("Origin 'http://ooo") and "…' may not" in message
    assert len(message) < 300


@pytest.mark.parametrize("n", [1000, 2, 0, -1, "3"])
def test_more_than_one_choice_is_400_before_queueing(service: MoaService, n: Any) -> None:
    path = "/v1/chat/completions"
    before = service.counters.requests
    # an unknown model: the 400 comes before the route looks (and nothing can wait)
    response = client(service).post(path, json={"model": "nope", "messages": ASK, "n": n})
    assert assert_shape(response, path, 400) == "n: only 1 is supported"
    assert response.json()["error"]["param"] == "n"
    assert service.queue_depth() == 0 and service.counters.requests == before
    for one in (1, None):  # OpenAI's default, written out: through to the route
        assert_through(client(service).post(path, json={"model": "nope", "messages": ASK,
                                                        "n": one}), "POST")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat", "/v1/localmoa/runs"])
def test_a_prompt_no_context_can_hold_is_400_before_queueing(service: MoaService,
                                                             path: str) -> None:
    """Under the character limit, yet more tokens than tiny's 2048-token contexts."""
    http = client(service)
    before = service.counters.requests
    text = "x" * (MAX_CHARS - 1)
    response = http.post(path, json={"model": "moa:tiny",
                                     "messages": [{"role": "user", "content": text}]})
    message = assert_shape(response, path, 400)
    assert "the prompt is too long" in message and "n_ctx" in message
    assert service.queue_depth() == 0 and service.counters.requests == before


def test_the_help_states_the_limits() -> None:
    from localmoa.cli.serve import EPILOG

    assert f"{MAX_MESSAGES} messages and {MAX_CHARS} characters" in " ".join(EPILOG.split())


# --- a bug ----------------------------------------------------------------------------

def test_a_bug_is_a_500_in_the_apis_shape_without_a_traceback(
        service: MoaService, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def broken() -> list[str]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "model_ids", broken)
    http = client(service)
    assert "a bug" in assert_shape(http.get("/v1/models"), "/v1/models", 500)
    assert "a bug" in assert_shape(http.get("/api/tags"), "/api/tags", 500)
    err = capsys.readouterr().err
    assert "internal error in GET /v1/models: RuntimeError: a bug" in err
    assert "Traceback" not in err


# --- binds -----------------------------------------------------------------------------

@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1", True), ("127.255.255.254", True), ("::1", True),
    ("[::1]", True), ("0:0:0:0:0:0:0:1", True), ("::ffff:127.0.0.1", True),
    ("localhost", True), ("LocalHost", True),
    ("0.0.0.0", False), ("0", False), ("::", False), ("::0", False), ("[::]", False),
    ("0:0:0:0:0:0:0:0", False), ("::0.0.0.0", False), ("::ffff:0.0.0.0", False),
    ("", False), ("192.168.1.5", False), ("10.0.0.1", False), ("::ffff:192.168.1.5", False),
    ("::ffff:10.0.0.1", False), ("2001:db8::1", False), ("fe80::1%lo", False),
    ("example.com", False), ("localhost.example", False), ("0x0", False),
    # the forms the C library reads (inet_aton), read here without a lookup
    ("0177.0.0.1", True), ("2130706433", True), ("0x7f.1", True), ("0x7f000001", True),
    ("localhost.", True), ("LOCALHOST.", True), ("0.0", False), ("0x0.0", False),
    ("000", False), ("ip6-localhost", False), ("127.0.0.1 x", False), ("1.2.3.4", False)])
def test_which_binds_are_loopback(host: str, loopback: bool,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # as under the offline guard: no lookup but localhost's (which the guard allows)
    real = socket.getaddrinfo

    def only_localhost(name: Any, *args: Any, **kwargs: Any) -> Any:
        assert name == "localhost", f"looked up {name!r}"
        return real(name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", only_localhost)
    assert bind_is_loopback(host) is loopback


@pytest.mark.parametrize(("host", "address"), [
    ("127.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("2130706433", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"), ("0", "0.0.0.0"), ("0.0", "0.0.0.0"), ("[::1]", "::1"),
    ("0:0:0:0:0:0:0:1", "::1"), ("::FFFF:7F00:1", "::ffff:7f00:1"), ("localhost.", "localhost"),
    (" LocalHost ", "localhost"), ("", ""), ("[]", ""), ("example.com", None),
    ("127.0.0.1 x", None), ("ip6-localhost", None), ("1.2.3.4.5", None), ("[::1", None)])
def test_the_bind_address_is_what_the_socket_reads(host: str, address: str | None) -> None:
    assert bind_address(host) == address


@pytest.mark.parametrize("host", ["10.0.0.1", "0", "0x0", "0.0", "ip6-localhost",
                                  "::ffff:10.0.0.1"])
def test_a_bind_off_loopback_needs_a_key_under_the_offline_guard(host: str) -> None:
    # refused before anything binds or resolves: the guard never sees a lookup to refuse
    proc = cli("serve", "--host", host, "--port", "9")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"localmoa: error: --host {host} lets other machines in: give --api-key KEY "
        "(or set LOCALMOA_API_KEY), or bind 127.0.0.1"]


@pytest.mark.parametrize("host", ["127.1", "2130706433", "localhost."])
def test_a_legacy_loopback_form_is_served_without_a_key(host: str,
                                                        isolated_home: Path) -> None:
    with Served("--host", host) as served:  # Served's url: 127.0.0.1 and its port
        assert httpx.get(served.url + "/health").status_code == 200


def test_an_unspecified_ipv6_bind_without_a_key_is_refused() -> None:
    proc = cli("serve", "--host", "::ffff:0.0.0.0", "--port", "9")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "localmoa: error: --host ::ffff:0.0.0.0 lets other machines in: give --api-key KEY "
        "(or set LOCALMOA_API_KEY), or bind 127.0.0.1"]
