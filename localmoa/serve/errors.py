"""Errors in each API's own shape: OpenAI's ``{"error": {message, type, code}}`` with
its status codes, Ollama's ``{"error": "..."}``. A full queue or a draining server
is 429 / 503 with ``Retry-After``."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from ..errors import RunInterrupted, UsageError
from .service import Job, QueueFull, UnknownModel

#: Seconds a client is asked to wait when the queue is full or the server drains.
RETRY_AFTER_S = 5


def status_of(exc: BaseException) -> tuple[int, str, str]:
    """HTTP status, OpenAI error type and code of a refusal."""
    if isinstance(exc, UnknownModel):
        return 404, "invalid_request_error", "model_not_found"
    if isinstance(exc, QueueFull):
        return 429, "rate_limit_error", "queue_full"
    if isinstance(exc, UsageError) and "shutting down" in str(exc):
        return 503, "server_error", "shutting_down"
    return 500, "server_error", "internal_error"


def _headers(status: int) -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else {}


def openai_error(exc: BaseException, status: int | None = None,
                 kind: str | None = None, param: str | None = None) -> JSONResponse:
    code_status, code_kind, code = status_of(exc)
    status = status or code_status
    body: dict[str, Any] = {"error": {"message": str(exc), "type": kind or code_kind,
                                      "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=_headers(status))


def ollama_error(exc: BaseException, status: int | None = None) -> JSONResponse:
    status = status or status_of(exc)[0]
    return JSONResponse({"error": str(exc)}, status_code=status, headers=_headers(status))


def run_error(job: Job, ollama: bool = False) -> JSONResponse:
    """A run that produced no answer: 500 with what went wrong, one line, and
    ``x-should-retry: false`` (the openai client would run the whole MoA again, and a
    run that failed once fails again); a run cut off by a shutdown is 503."""
    message = str(job.error) if job.error is not None else "the run produced no answer"
    status, headers = 500, {"x-should-retry": "false"}
    if isinstance(job.error, RunInterrupted):  # the server stopping (a gone client reads
        status, headers = 503, _headers(503)     # nothing)
    if ollama:
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return JSONResponse({"error": {"message": message, "type": "server_error", "param": None,
                                   "code": "run_failed"}}, status_code=status, headers=headers)
