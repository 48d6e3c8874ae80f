"""A client that goes away cancels its run, on a real `localmoa serve` whose answers are
held open (tests/serve_process.py's hold backend) until their run stops: the client
leaves while its run is certainly still going, whatever the machine's speed."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import SAFETY_S
from .serve_process import Served, hold_config

QUESTION = [{"role": "user", "content": "Hold on."}]
WAIT_S = SAFETY_S  # only ever reached when the behaviour under test is broken


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("held")
    config = hold_config(folder / "hold.yaml", folder / "never-released", "held")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for name in ("LOCALMOA_DEBUG", "LOCALMOA_API_KEY", "LOCALMOA_ALLOWED_HOSTS",
                 "LOCALMOA_ORIGINS"):
        env.pop(name, None)
    with Served("--config", str(config), env=env, hold=True) as served:
        yield served


def _metrics(served: Served) -> dict[str, float]:
    lines = httpx.get(served.url + "/metrics", timeout=WAIT_S).text.splitlines()
    return {line.split()[0]: float(line.split()[1]) for line in lines
            if line and not line.startswith("#")}


def _until(served: Served, name: str, value: float) -> None:
    """Poll /metrics until ``name`` is ``value`` (the server's own account of events)."""
    for _ in range(30_000):
        if _metrics(served)[name] == value:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{name} never reached {value}: {_metrics(served)}")


def test_a_streaming_client_that_goes_away_stops_its_run(held: Served) -> None:
    before = _metrics(held)["localmoa_requests_cancelled_total"]
    body = {"model": "held", "messages": QUESTION, "stream": True}
    with httpx.stream("POST", held.url + "/v1/chat/completions", json=body,
                      timeout=WAIT_S) as response:
        for line in response.iter_lines():
            if '"held"' in line:
                break  # under way, and it would hold forever: now go away
    _until(held, "localmoa_requests_cancelled_total", before + 1)
    _until(held, "localmoa_queue_depth", 0)  # the held run stopped


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_waiting_client_that_gives_up_stops_its_run(held: Served, path: str) -> None:
    """Not streamed: the client closes its connection while it waits for the answer."""
    before = _metrics(held)["localmoa_requests_cancelled_total"]
    body = json.dumps({"model": "held", "messages": QUESTION, "stream": False}).encode()
    with socket.create_connection(("127.0.0.1", held.port), timeout=WAIT_S) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{held.port}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     "\r\n".encode() + body)
        _until(held, "localmoa_queue_depth", 1)  # accepted: now give up
    _until(held, "localmoa_requests_cancelled_total", before + 1)
    _until(held, "localmoa_queue_depth", 0)


def test_the_hold_backend_holds(tmp_path: Path) -> None:
    """The fixture's premise: a held answer does not end by itself (it ends when its
    release file appears)."""
    from localmoa.backends.base import GenerateOptions

    from .serve_process import HoldModel

    release = tmp_path / "release"
    stream = iter(HoldModel("held", release).chat([], GenerateOptions()))
    assert next(stream) == "held" and next(stream) == ""
    release.touch()
    assert [piece for piece in stream if piece] == [" released"]
