"""OpenAI-compatible routes: ``GET /v1/models`` and ``POST /v1/chat/completions``
(streamed as ``chat.completion.chunk`` SSE deltas then ``data: [DONE]``, or whole).

Every profile is a model (``moa:tiny``), and so is every configured model by itself.
``temperature`` and ``seed`` reach every agent; ``top_p``, ``max_tokens`` and ``stop``
the aggregator, whose answer is the reply. ``usage`` counts every agent's tokens (what
the request cost); the per-agent and per-layer metrics ride in an extra ``localmoa``
field that standard clients ignore.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from ..metrics import RunReport
from .bridge import AGGREGATOR, END, JobStream
from .errors import failure, openai_error, run_error
from .service import MoaService, Sampling


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: the text ones
            return "".join(str(p.get("text", "")) for p in self.content
                           if p.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields localmoa reads; others (logprobs, tools...) are ignored. ``n`` is read
    to refuse more than one choice (one run makes one answer): 400 before queueing."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    stop: str | list[str] | None = None
    n: int | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise PydanticCustomError("n_unsupported", "only 1 is supported")
        return n

    def sampling(self, cap: int) -> Sampling:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        limit = self.max_completion_tokens or self.max_tokens
        return Sampling(temperature=self.temperature, top_p=self.top_p,
                        max_tokens=min(limit, cap) if limit else None, seed=self.seed,
                        stop=tuple(s for s in stop if s)[:16])


def router(service: MoaService) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list",
                "data": [{"id": m, "object": "model", "created": 0, "owned_by": "localmoa"}
                         for m in service.model_ids()]}

    @api.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, request: Request) -> JSONResponse | StreamingResponse:
        messages = [{"role": "system" if m.role == "developer" else m.role,
                     "content": m.text()} for m in body.messages if m.role != "tool"]
        try:
            job = JobStream(service, body.model, messages,
                            body.sampling(service.options.max_tokens_cap))
        except Exception as exc:  # noqa: BLE001 - unknown model, queue full, draining
            return openai_error(exc)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_chunks(job, body.model, cid, created, usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        done = await job.finished(request)
        if done is None:  # the client went away: its run was cancelled
            return JSONResponse({}, status_code=499)
        if done.report is None or done.error is not None and not done.report.answer:
            return run_error(done)
        report = done.report
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": report.answer},
                         "finish_reason": _finish(report)}],
            "usage": usage_of(report), "localmoa": localmoa_field(report)})

    return api


async def _chunks(job: JobStream, model: str, cid: str, created: int,
                  include_usage: bool) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [{"index": 0, "delta": delta,
                                             "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    streamed = False
    async with contextlib.aclosing(job.events()) as events:  # closed: the run is cancelled
        async for event in events:
            if event.kind == "text" and event.data["agent"] == AGGREGATOR:
                streamed = True
                yield chunk({"content": event.data["text"]})
            elif event.kind == END:
                break
    done = job.job
    report = done.report
    if report is None or done.error is not None and not report.answer:
        _, message, code = failure(done)  # e.g. the drain ran out: shutting_down
        error = {"message": message, "type": "server_error", "param": None, "code": code}
        yield f"data: {json.dumps({'error': error})}\n\n"
        yield "data: [DONE]\n\n"
        return
    if not streamed and report.answer:  # no aggregator wrote it: the proposers' answer
        yield chunk({"content": report.answer})
    yield chunk({}, _finish(report), localmoa=localmoa_field(report))
    if include_usage:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [], "usage": usage_of(report)}
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"


def _finish(report: RunReport) -> str:
    reason = report.agents[-1].finish_reason if report.agents else None
    return "length" if reason == "length" else "stop"


def usage_of(report: RunReport) -> dict[str, int]:
    """Tokens of every agent of the run: what the request cost."""
    prompt = sum(a.prompt_tokens for a in report.agents)
    completion = sum(a.completion_tokens for a in report.agents)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def localmoa_field(report: RunReport) -> dict[str, Any]:
    """Per-agent and per-layer metrics (standard clients ignore the field)."""
    return {"profile": report.profile, "wall_s": report.totals.wall_s,
            "agents": [{"agent": a.agent, "model": a.model, "layer": a.layer, "ok": a.ok,
                        "error": a.error, "prompt_tokens": a.prompt_tokens,
                        "completion_tokens": a.completion_tokens, "ttft_s": a.ttft_s,
                        "decode_tok_per_s": a.decode_tok_per_s, "batch": a.batch,
                        "timing": a.timing} for a in report.agents],
            "layers": [{"layer": s.layer, "role": s.role, "agents": s.agents,
                        "failed": s.failed, "wall_s": s.wall_s,
                        "agg_tok_per_s": s.agg_tok_per_s} for s in report.layers],
            "recipe": report.recipe}
