"""The `localmoa serve` application: OpenAI- and Ollama-compatible APIs, a live page at
``/``, its agent event stream, ``/health`` and Prometheus ``/metrics``.

Security (guard.py has the details and the order): a request is served only when its
``Host`` is loopback or allowed (no key set: DNS rebinding), its browser ``Origin`` the
server's own or allowed, its key right (when one is set: every route but ``/health`` and
the page), its POST body JSON with ``Content-Type: application/json`` and under the cap.
Every error, refusals, bad bodies, unknown routes and 500s included, comes in the shape
of the route's API (errors.py). There is no ``/docs`` page: Swagger UI loads from a CDN,
and the server is offline; ``/openapi.json`` describes the API.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    StreamingResponse,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from .. import __version__
from . import ollama_api, openai_api
from .bridge import END, JobStream
from .errors import openai_error, refuse
from .guard import MAX_BODY_BYTES, AppSettings, BodyCap, CatchAll, Guard, Inflight
from .service import MoaService, Sampling

__all__ = ["MAX_BODY_BYTES", "AppSettings", "RunBody", "create_app", "prometheus"]


class RunMessage(BaseModel):
    """One message of a run's conversation."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class RunBody(BaseModel):
    """The page's (and scripts') run request: a model and the conversation."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[RunMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)


def create_app(service: MoaService, settings: AppSettings | None = None,
               inflight: Inflight | None = None) -> FastAPI:
    """The app serving ``service``; ``inflight`` counts the requests it is answering
    (what a drain waits for)."""
    settings = settings or AppSettings()
    app = FastAPI(title="localmoa", version=__version__, docs_url=None, redoc_url=None)
    app.state.inflight = inflight or Inflight()
    _errors(app)

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
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        try:
            job = JobStream(service, body.model, messages, sampling)
        except Exception as exc:  # noqa: BLE001 - unknown model, queue full, draining
            return openai_error(exc)
        return StreamingResponse(_run_events(job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    app.include_router(openai_api.router(service))
    app.include_router(ollama_api.router(service))
    # the last added runs first: CatchAll, Guard, BodyCap, then CORS for the allowed
    if settings.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors),
                           allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(BodyCap, max_bytes=settings.max_body_bytes)
    app.add_middleware(Guard, settings=settings, closing=lambda: service.closing,
                       inflight=app.state.inflight)
    app.add_middleware(CatchAll)
    return app


def _errors(app: FastAPI) -> None:
    """Bad bodies (400), unknown routes (404), wrong methods (405): the route's shape."""

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first: dict[str, Any] = dict(errors[0]) if errors else {"loc": (),
                                                                 "msg": "invalid body"}
        if first.get("type") == "json_invalid":
            detail = dict(first.get("ctx") or {}).get("error", "")
            return refuse(request.url.path, 400, f"the body is not valid JSON: {detail}"
                          .rstrip(": "))
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return refuse(request.url.path, 400, message, param=where or None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        path = request.url.path
        message = str(exc.detail)
        if exc.status_code == 404:
            message = (f"no route {request.method} {path}: the OpenAI API is under /v1, "
                       "Ollama's under /api, the page at /")
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {path}"
        return refuse(path, exc.status_code, message, headers=dict(exc.headers or {}))


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

