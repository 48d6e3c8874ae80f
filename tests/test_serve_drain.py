"""SIGTERM on `localmoa serve`: the drain. On a real server, its requests are held open
by the ``hold`` backend of tests/serve_process.py until the test releases them (or the
drain stops them); in process, by the scripted backend (tests/scripted.py) talking until
stopped. Every step waits for an event (a line of the stream or of the server's output,
a model's first piece): nothing depends on how fast the machine is."""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from localmoa.serve.app import create_app
from localmoa.serve.drain import Drain
from localmoa.serve.service import MoaService

from .conftest import SAFETY_S
from .scripted import Script, ScriptedBackend, config
from .serve_process import Served, hold_config

QUESTION = [{"role": "user", "content": "Hold on."}]
#: Generous bounds on events that come in well under a second: a busy machine.
WAIT_S = SAFETY_S  # only ever reached when the behaviour under test is broken
DRAINING = "localmoa serve draining"


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """The file whose creation lets held answers end."""
    return tmp_path / "release"


@pytest.fixture
def held_config(tmp_path: Path, release: Path) -> Path:
    return hold_config(tmp_path / "hold.yaml", release, "held")


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for name in ("LOCALMOA_DEBUG", "LOCALMOA_API_KEY", "LOCALMOA_ALLOWED_HOSTS",
                 "LOCALMOA_ORIGINS"):
        env.pop(name, None)
    return env


def _under_way(lines: Iterator[str], seen: list[str], text: str) -> None:
    """Read the stream until a line holds ``text`` (the held answer has begun)."""
    for line in lines:
        if line:
            seen.append(line)
        if text in line:
            return
    raise AssertionError(f"the stream ended before {text!r}: {seen}")


def _no_traceback(served: Served) -> None:
    output = "\n".join(served.lines)
    assert "Traceback" not in output and "Exception in ASGI" not in output, output


def test_a_long_drain_lets_the_request_end_and_answers_503_meanwhile(
        held_config: Path, release: Path) -> None:
    with Served("--config", str(held_config), "--drain", "600", env=_env(),
                hold=True) as served:
        body = {"model": "held", "messages": QUESTION, "stream": True}
        lines: list[str] = []
        with httpx.stream("POST", served.url + "/v1/chat/completions", json=body,
                          timeout=WAIT_S) as response:
            stream = response.iter_lines()
            _under_way(stream, lines, '"held"')
            served.terminate()
            served.wait_for_output(DRAINING, WAIT_S)
            refused = httpx.post(served.url + "/v1/chat/completions", json=body, timeout=WAIT_S)
            assert refused.status_code == 503 and refused.headers["retry-after"]
            assert refused.json()["error"]["code"] == "shutting_down"
            tags = httpx.get(served.url + "/api/tags", timeout=WAIT_S)
            assert tags.status_code == 503 and isinstance(tags.json()["error"], str)
            health = httpx.get(served.url + "/health", timeout=WAIT_S)
            assert health.status_code == 200 and health.json()["status"] == "draining"
            release.touch()  # now the answer may end
            lines += [line for line in stream if line]
        data = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
        text = "".join(d["choices"][0]["delta"].get("content") or "" for d in data)
        assert text == "held released" and lines[-1] == "data: [DONE]", lines
        assert data[-1]["choices"][0]["finish_reason"] == "stop"
        assert served.process is not None and served.process.wait(WAIT_S) == 0, served.lines
        served.wait_for_output("localmoa serve stopped", WAIT_S)
        _no_traceback(served)
        with pytest.raises(httpx.ConnectError):
            httpx.get(served.url + "/health")  # it is gone


def test_a_drain_that_runs_out_ends_each_answer_in_its_apis_shape(
        held_config: Path) -> None:
    """--drain 0: the stream running gets an error event then [DONE]; the requests
    waiting behind it, an Ollama stream and a whole answer, get Ollama's last object
    (done, with the error) and a 503 JSON error. No traceback, exit 0."""
    with Served("--config", str(held_config), "--drain", "0", env=_env(),
                hold=True) as served, concurrent.futures.ThreadPoolExecutor(2) as pool:
        url = served.url
        lines: list[str] = []
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=WAIT_S, json={
                "model": "held", "messages": QUESTION, "stream": True}) as response:
            stream = response.iter_lines()
            _under_way(stream, lines, '"held"')
            ollama = pool.submit(lambda: httpx.post(url + "/api/chat", timeout=WAIT_S, json={
                "model": "held", "messages": QUESTION, "stream": True}))
            whole = pool.submit(lambda: httpx.post(url + "/v1/chat/completions",
                                                   timeout=WAIT_S, json={
                "model": "held", "messages": QUESTION}))
            _wait_queued(url, 3)
            served.terminate()
            lines += [line for line in stream if line]
        assert lines[-1] == "data: [DONE]", (lines, served.lines)
        error = json.loads(lines[-2].removeprefix("data: "))["error"]
        assert error["code"] == "shutting_down" and "drain of 0 s ran out" in error["message"]
        last = ollama.result().text.strip().splitlines()[-1]
        assert json.loads(last)["done"] is True and "shutting down" in json.loads(last)["error"]
        refused = whole.result()
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "shutting_down"
        assert served.process is not None and served.process.wait(WAIT_S) == 0, served.lines
        _no_traceback(served)


def _wait_queued(url: str, depth: int) -> None:
    """Until ``depth`` requests are running or waiting (the ones sent are accepted)."""
    for _ in range(20_000):
        if httpx.get(url + "/health", timeout=WAIT_S).json()["queue_depth"] >= depth:
            return
        threading.Event().wait(0.01)  # a poll, not a measure
    raise AssertionError(f"never {depth} requests in the queue")


# --- in process: a running request of each API, stopped by the drain --------------------

BASE = "http://127.0.0.1:11500"


@pytest.fixture
def endless(scripted: ScriptedBackend, smollm2_path: Path) -> Iterator[MoaService]:
    """A service whose model ``m`` talks until its run is stopped."""
    scripted.scripts["m"] = Script(forever=True)
    service = MoaService(config({"m": {}}, [[{"model": "m"}]], {"model": "m"}, smollm2_path))
    yield service
    service.close(0.0)


@pytest.mark.parametrize(("path", "stream"), [
    ("/v1/chat/completions", False), ("/v1/chat/completions", True), ("/api/chat", False),
    ("/api/chat", True), ("/api/generate", True), ("/v1/localmoa/runs", True)])
def test_a_request_the_drain_stops_ends_in_its_apis_shape(
        endless: MoaService, scripted: ScriptedBackend, path: str, stream: bool) -> None:
    app = create_app(endless)
    http = TestClient(app, base_url=BASE)
    body = {"model": "m", "messages": QUESTION, "prompt": "Hold on.", "stream": stream}
    exited, notes = threading.Event(), []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(http.post, path, json=body)
        assert scripted.event(scripted.wrote, "m").wait(WAIT_S)  # under way
        drain = Drain(endless, app.state.inflight, 0.0, exited.set, notes.append)
        assert drain.signal()
        response = answer.result(WAIT_S)
    assert exited.wait(WAIT_S) and "drain" in notes[0]
    assert_ended_by_the_drain(response, path, stream)


def test_a_second_signal_stops_the_requests_at_once(endless: MoaService,
                                                    scripted: ScriptedBackend) -> None:
    app = create_app(endless)
    http = TestClient(app, base_url=BASE)
    exited = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(http.post, "/v1/chat/completions",
                             json={"model": "m", "messages": QUESTION})
        assert scripted.event(scripted.wrote, "m").wait(WAIT_S)
        drain = Drain(endless, app.state.inflight, 3600.0, exited.set, lambda note: None)
        assert drain.signal()
        refused = http.get("/v1/models")  # meanwhile: 503, and /health says so
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert http.get("/health").json()["status"] == "draining"
        assert not answer.done()
        assert drain.signal()  # the second: now
        response = answer.result(WAIT_S)
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "the server is shutting down now"
    assert exited.wait(WAIT_S)
    assert not drain.signal()  # a third: uvicorn's own, exit now


@pytest.fixture
def deaf(scripted: ScriptedBackend, smollm2_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[MoaService, threading.Event]]:
    """A service whose model ``m`` blocks in its call, deaf to stops, until the event is
    set: a run that will not reach its next token (a loaded machine's slow token). The
    engine never gives up on it meanwhile."""
    from localmoa import engine

    hold = threading.Event()
    monkeypatch.setattr(engine.state, "GRACE_S", 3600.0)
    scripted.scripts["m"] = Script(hold=hold)
    service = MoaService(config({"m": {}}, [[{"model": "m"}]], {"model": "m"}, smollm2_path))
    yield service, hold
    hold.set()
    service.close(0.0)


@pytest.mark.parametrize(("path", "stream"), [
    ("/v1/chat/completions", False), ("/v1/chat/completions", True), ("/api/chat", False),
    ("/api/generate", True), ("/v1/localmoa/runs", True)])
def test_when_the_drain_runs_out_the_answer_ends_before_the_runs_next_token(
        deaf: tuple[MoaService, threading.Event], scripted: ScriptedBackend, path: str,
        stream: bool) -> None:
    service, hold = deaf
    app = create_app(service)
    http = TestClient(app, base_url=BASE)
    body = {"model": "m", "messages": QUESTION, "prompt": "Hold on.", "stream": stream}
    first, exited = threading.Event(), threading.Event()  # the answer's end, or the drain's

    def exit_() -> None:
        exited.set()
        first.set()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(http.post, path, json=body)
        answer.add_done_callback(lambda _: first.set())
        try:
            assert scripted.event(scripted.started, "m").wait(WAIT_S)  # in its deaf call
            drain = Drain(service, app.state.inflight, 0.0, exit_, lambda note: None)
            assert drain.signal()
            assert first.wait(WAIT_S)
            # the answer ended while the run is still in its call: the drain did not
            # wait for it (it waits for the run, FINISH_S at most, before it exits)
            assert answer.done() and not exited.is_set()
        finally:
            hold.set()  # the run comes back, sees its stop and ends; then the drain exits
        response = answer.result()
    assert_ended_by_the_drain(response, path, stream)
    assert exited.wait(WAIT_S) and service.wait_idle(WAIT_S)


def assert_ended_by_the_drain(response: httpx.Response, path: str, stream: bool) -> None:
    """The response a drain that ran out ended: a 503 in the route's error shape, or,
    once streaming, the stream's own error event (OpenAI's then ``[DONE]``)."""
    reason = "its drain of 0 s ran out"
    if not stream:
        assert response.status_code == 503 and response.headers["retry-after"]
        error = response.json()["error"]
        assert reason in (error if path.startswith("/api/") else error["message"])
        return
    assert response.status_code == 200
    lines = [line for line in response.text.splitlines() if line]
    if path == "/v1/chat/completions":
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2].removeprefix("data: "))["error"]
        assert error["code"] == "shutting_down" and reason in error["message"]
    elif path.startswith("/api/"):
        last = json.loads(lines[-1])
        assert last["done"] is True and reason in last["error"]
        assert all(not json.loads(line)["done"] for line in lines[:-1])
    else:
        assert lines[-2] == "event: error" and reason in lines[-1]
