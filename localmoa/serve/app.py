"""The `localmoa serve` application: OpenAI- and Ollama-compatible APIs, a live page at
``/``, its agent event stream, ``/health`` and Prometheus ``/metrics``.

Security: every route but ``/health`` and the page at ``/`` checks the API key when one
is set (``Authorization: Bearer KEY`` or ``x-api-key``); request bodies are capped; CORS
only for the origins given. Errors come in each API's own shape.
"""

from __future__ import annotations

import contextlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from . import ollama_api, openai_api
from .bridge import END, JobStream
from .errors import openai_error
from .service import MoaService, Sampling

#: The largest request body taken (bytes).
MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class AppSettings:
    api_key: str | None = None
    cors: list[str] = field(default_factory=list)
    max_body_bytes: int = MAX_BODY_BYTES


class RunBody(BaseModel):
    """The page's (and scripts') run request: a model and the conversation."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[dict[str, str]] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)


def create_app(service: MoaService, settings: AppSettings | None = None) -> FastAPI:
    settings = settings or AppSettings()
    app = FastAPI(title="localmoa", version=__version__, docs_url="/docs", redoc_url=None)
    if settings.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors, allow_methods=["*"],
                           allow_headers=["*"])

    @app.middleware("http")
    async def guard(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        # the page itself holds no secret, and a browser cannot send a key to open it
        if settings.api_key and path not in ("/health", "/") and request.method != "OPTIONS" \
                and not _authorized(request, settings.api_key):
            return _refuse(path, 401, "missing or wrong API key: send Authorization: Bearer "
                           "KEY (or x-api-key: KEY)")
        return await call_next(request)

    app.add_middleware(BodyCap, max_bytes=settings.max_body_bytes)  # outermost: first

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid body"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return _refuse(request.url.path, 400, message, param=where or None)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "draining" if service.closing else "ok",
                "queue_depth": service.queue_depth(), "version": __version__}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return prometheus(service)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return (resources.files("localmoa.serve") / "page.html").read_text(encoding="utf-8")

    @app.post("/v1/localmoa/runs", response_model=None)
    async def run(body: RunBody) -> JSONResponse | StreamingResponse:
        """A run's agent events as SSE (what the page shows): ``agent_loading``,
        ``agent_start``, ``text``, ``agent_done``, ``layer_done`` (each proposer layer),
        then ``report`` (the whole run report) and/or ``error``."""
        sampling = Sampling(temperature=body.temperature, seed=body.seed,
                            max_tokens=body.max_tokens)
        try:
            job = JobStream(service, body.model, list(body.messages), sampling)
        except Exception as exc:  # noqa: BLE001 - unknown model, queue full, draining
            return openai_error(exc)
        return StreamingResponse(_run_events(job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    app.include_router(openai_api.router(service))
    app.include_router(ollama_api.router(service))
    return app


async def _run_events(job: JobStream) -> AsyncIterator[str]:
    async with contextlib.aclosing(job.events()) as events:  # closed: the run is cancelled
        async for event in events:
            if event.kind == END:
                break
            yield f"event: {event.kind}\ndata: {json.dumps(event.data)}\n\n"
    done = job.job
    if done.report is not None:
        yield f"event: report\ndata: {json.dumps(done.report.to_dict())}\n\n"
    if done.error is not None:
        yield f"event: error\ndata: {json.dumps({'message': str(done.error)})}\n\n"


class BodyCap:
    """Refuse request bodies over ``max_bytes`` with 413, whether announced by
    Content-Length or sent chunked (then counted as it arrives, and replayed to the
    app when it stays under the cap)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        over = _refuse(scope["path"], 413, f"request body over {self.max_bytes} bytes")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                await over(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await over(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # later: the disconnect a stream watches for

        await self.app(scope, replay, send)


def _authorized(request: Request, key: str) -> bool:
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return hmac.compare_digest(given.encode(), key.encode())


def _refuse(path: str, status: int, message: str, param: str | None = None) -> JSONResponse:
    """An error in the shape of the API the path belongs to."""
    if path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    kind = {401: "authentication_error", 413: "invalid_request_error",
            400: "invalid_request_error"}.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": None}}, status_code=status)


def prometheus(service: MoaService) -> str:
    """The counters in Prometheus' text format."""
    c = service.counters
    families: list[tuple[str, str, str, list[tuple[str, float]]]] = [
        ("requests_total", "counter", "Runs accepted.", [("", c.requests)]),
        ("requests_failed_total", "counter", "Runs that ended without an answer.",
         [("", c.failed)]),
        ("requests_rejected_total", "counter", "Requests refused: the queue was full.",
         [("", c.rejected)]),
        ("requests_cancelled_total", "counter", "Runs whose client went away.",
         [("", c.cancelled)]),
        ("requests_batched_total", "counter",
         "Runs merged with other requests for the same model, decoded as one batch.",
         [("", c.batched)]),
        ("queue_depth", "gauge", "Runs waiting or running.", [("", service.queue_depth())]),
        ("tokens_total", "counter", "Tokens of every agent.",
         [('{kind="prompt"}', c.prompt_tokens), ('{kind="completion"}', c.completion_tokens)]),
        ("layer_tokens_per_second", "gauge", "Aggregate tok/s of each layer, last run.",
         [(f'{{layer="{layer}"}}', rate) for layer, rate in sorted(c.layer_tok_per_s.items())]),
        ("loads_total", "counter", "Model instances loaded.", [("", service.host.loads)]),
        ("loaded_instances", "gauge", "Model instances loaded now.",
         [("", len(service.host.loaded))]),
        ("resident_bytes", "gauge", "Resident memory of localmoa and its workers.",
         [("", resident_bytes(service))]),
    ]
    lines = []
    for name, kind, text, samples in families:
        lines += [f"# HELP localmoa_{name} {text}", f"# TYPE localmoa_{name} {kind}"]
        lines += [f"localmoa_{name}{labels} {value}" for labels, value in samples]
    return "\n".join(lines) + "\n"


def resident_bytes(service: MoaService) -> int:
    from ..memory.probe import resident_bytes as rss

    return int(rss()) + sum(int(rss(pid)) for pid in service.host.worker_pids())

