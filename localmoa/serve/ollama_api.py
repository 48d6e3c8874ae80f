"""Ollama-compatible routes, enough for Ollama clients and Open WebUI's Ollama
connection: ``/api/tags``, ``/api/version``, ``/api/ps``, ``/api/show``, and
``/api/chat`` / ``/api/generate`` streamed as NDJSON (or whole), the last message
carrying Ollama's ``*_duration`` fields (nanoseconds) and counts.

Model names are the ones ``/v1/models`` lists (``moa:tiny`` reads as Ollama's
``name:tag``); a ``:latest`` suffix is ignored.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..metrics import RunReport
from .bridge import AGGREGATOR, END, JobStream
from .errors import failure, ollama_error, run_error
from .service import MoaService, Sampling, UnknownModel

#: The Ollama API version localmoa speaks (clients check it is recent enough).
OLLAMA_API_VERSION = "0.6.0"


class Options(BaseModel):
    model_config = ConfigDict(extra="ignore")

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    num_predict: int | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    stop: list[str] | None = None

    def sampling(self, cap: int) -> Sampling:
        limit = self.num_predict if self.num_predict and self.num_predict > 0 else None
        return Sampling(temperature=self.temperature, top_p=self.top_p,
                        max_tokens=min(limit, cap) if limit else None, seed=self.seed,
                        stop=tuple(s for s in (self.stop or []) if s)[:16])


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[OllamaMessage] = Field(default_factory=list)
    stream: bool = True
    options: Options = Field(default_factory=lambda: Options.model_validate({}))


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    prompt: str = ""
    system: str | None = None
    stream: bool = True
    options: Options = Field(default_factory=lambda: Options.model_validate({}))


class ShowBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    name: str | None = None  # older clients


def _name(model: str) -> str:
    return model.removesuffix(":latest")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _details(service: MoaService, model: str) -> dict[str, Any]:
    family = "moa" if model.startswith("moa:") else service.config.models[model].backend
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family],
            "parameter_size": "", "quantization_level": ""}


def router(service: MoaService) -> APIRouter:
    api = APIRouter()

    @api.get("/api/version")
    async def version() -> dict[str, str]:
        return {"version": OLLAMA_API_VERSION, "localmoa": __version__}

    @api.get("/api/tags")
    async def tags() -> dict[str, Any]:
        return {"models": [{"name": m, "model": m, "modified_at": _now(), "size": 0,
                            "digest": "", "details": _details(service, m)}
                           for m in service.model_ids()]}

    @api.get("/api/ps")
    async def ps() -> dict[str, Any]:
        running = []
        for entry in service.loaded():
            expires = datetime.fromtimestamp(time.time() + entry["expires_in_s"], timezone.utc)
            running.append({"name": entry["model"], "model": entry["model"], "size": 0,
                            "size_vram": 0, "digest": "", "instance": entry["instance"],
                            "details": _details(service, entry["model"]),
                            "expires_at": expires.isoformat().replace("+00:00", "Z")})
        return {"models": running}

    @api.post("/api/show", response_model=None)
    async def show(body: ShowBody) -> JSONResponse | dict[str, Any]:
        model = _name(body.model or body.name or "")
        try:
            service.check(model)
        except UnknownModel as exc:
            return ollama_error(exc)
        return {"modelfile": "", "parameters": "", "template": "",
                "details": _details(service, model), "model_info": {},
                "capabilities": ["completion"], "modified_at": _now()}

    @api.post("/api/chat", response_model=None)
    async def chat(body: ChatBody, request: Request) -> JSONResponse | StreamingResponse:
        model = _name(body.model)
        if not body.messages:  # Ollama's preload: nothing to answer
            try:
                service.check(model)
            except UnknownModel as exc:
                return ollama_error(exc)
            return JSONResponse({"model": body.model, "created_at": _now(),
                                 "message": {"role": "assistant", "content": ""},
                                 "done": True, "done_reason": "load"})
        messages = [{"role": m.role, "content": m.content} for m in body.messages
                    if m.role != "tool"]  # as the OpenAI route: no tools are run here
        return await _respond(service, body.model, model, messages, body.options,
                              body.stream, chat=True, request=request)

    @api.post("/api/generate", response_model=None)
    async def generate(body: GenerateBody, request: Request) -> JSONResponse | StreamingResponse:
        model = _name(body.model)
        if not body.prompt:
            try:
                service.check(model)
            except UnknownModel as exc:
                return ollama_error(exc)
            return JSONResponse({"model": body.model, "created_at": _now(), "response": "",
                                 "done": True, "done_reason": "load"})
        messages = ([{"role": "system", "content": body.system}] if body.system else []) + \
            [{"role": "user", "content": body.prompt}]
        return await _respond(service, body.model, model, messages, body.options,
                              body.stream, chat=False, request=request)

    return api


async def _respond(service: MoaService, asked: str, model: str, messages: list[Any],
                   options: Options, stream: bool, chat: bool, request: Request
                   ) -> JSONResponse | StreamingResponse:
    try:
        job = JobStream(service, model, messages,
                        options.sampling(service.options.max_tokens_cap))
    except Exception as exc:  # noqa: BLE001 - unknown model, queue full, draining
        return ollama_error(exc)
    started = time.perf_counter_ns()
    if stream:
        return StreamingResponse(_lines(job, asked, chat, started),
                                 media_type="application/x-ndjson")
    done = await job.finished(request)
    if done is None:  # the client went away: its run was cancelled
        return JSONResponse({}, status_code=499)
    if done.report is None or done.error is not None and not done.report.answer:
        return run_error(done, ollama=True)
    return JSONResponse(_final(done.report, asked, chat, started, done.report.answer))


async def _lines(job: JobStream, asked: str, chat: bool, started: int) -> AsyncIterator[str]:
    def line(piece: str) -> str:
        data: dict[str, Any] = {"model": asked, "created_at": _now(), "done": False}
        if chat:
            data["message"] = {"role": "assistant", "content": piece}
        else:
            data["response"] = piece
        return json.dumps(data) + "\n"

    streamed = False
    async with contextlib.aclosing(job.events()) as events:  # closed: the run is cancelled
        async for event in events:
            if event.kind == "text" and event.data["agent"] == AGGREGATOR:
                streamed = True
                yield line(event.data["text"])
            elif event.kind == END:
                break
    done = job.job
    if done.report is None or done.error is not None and not done.report.answer:
        # the last object, as Ollama ends a stream: done, with the reason (e.g. the drain
        # ran out); Ollama's clients raise its error
        yield json.dumps({"model": asked, "created_at": _now(), "done": True,
                          "error": failure(done)[1]}) + "\n"
        return
    if not streamed:  # no aggregator wrote it (aggregation skipped): the proposers' answer
        yield line(done.report.answer)
    yield json.dumps(_final(done.report, asked, chat, started, "")) + "\n"


def _final(report: RunReport, asked: str, chat: bool, started: int, text: str
           ) -> dict[str, Any]:
    """The last message: durations in nanoseconds, counts, and the run's metrics."""
    final = report.agents[-1]
    eval_ns = int(max(final.end_s - final.start_s - final.ttft_s, 0) * 1e9)
    line: dict[str, Any] = {
        "model": asked, "created_at": _now(), "done": True,
        "done_reason": "length" if final.finish_reason == "length" else "stop",
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": int(report.totals.load_s * 1e9),
        "prompt_eval_count": sum(a.prompt_tokens for a in report.agents),
        "prompt_eval_duration": int(final.ttft_s * 1e9),
        "eval_count": sum(a.completion_tokens for a in report.agents),
        "eval_duration": eval_ns,
        "localmoa": {"profile": report.profile, "wall_s": report.totals.wall_s,
                     "agents": len(report.agents)}}
    if chat:
        line["message"] = {"role": "assistant", "content": text}
    else:
        line["response"] = text
    return line
