"""Errors in each API's own shape: OpenAI's ``{"error": {message, type, param, code}}``
everywhere but under ``/api/``, where Ollama's ``{"error": "..."}`` is. Every 4xx and 5xx
of the server comes through here: refusals of the guard, bad bodies, unknown routes,
failed runs. A full queue or a draining server is 429 / 503 with ``Retry-After``."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from ..errors import RunInterrupted
from .jobs import Job, QueueFull, ShuttingDown, TooLarge, UnknownModel

#: Seconds a client is asked to wait when the queue is full or the server drains.
RETRY_AFTER_S = 5

#: OpenAI's error type for each status this server answers.
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 405: "invalid_request_error",
          413: "invalid_request_error", 415: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error"}


def is_ollama(path: str) -> bool:
    """Whether ``path`` belongs to the Ollama API (its errors are Ollama-shaped)."""
    return path == "/api" or path.startswith("/api/")


def error_type(status: int) -> str:
    """OpenAI's ``type`` of an error with this status."""
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def refuse(path: str, status: int, message: str, *, param: str | None = None,
           code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in the shape of the API ``path`` belongs to; 429 and 503 say when to
    come back."""
    headers = {**retry_headers(status), **(headers or {})}
    if is_ollama(path):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return JSONResponse({"error": {"message": message, "type": error_type(status),
                                   "param": param, "code": code}},
                        status_code=status, headers=headers)


def retry_headers(status: int) -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else {}


def status_of(exc: BaseException) -> tuple[int, str, str]:
    """HTTP status, OpenAI error type and code of a refusal."""
    if isinstance(exc, UnknownModel):
        return 404, "invalid_request_error", "model_not_found"
    if isinstance(exc, TooLarge):
        return 400, "invalid_request_error", "request_too_large"
    if isinstance(exc, QueueFull):
        return 429, "rate_limit_error", "queue_full"
    if isinstance(exc, ShuttingDown | RunInterrupted):  # the server stopping (a client
        return 503, "server_error", "shutting_down"      # that went away reads nothing)
    return 500, "server_error", "internal_error"


def openai_error(exc: BaseException, status: int | None = None,
                 kind: str | None = None, param: str | None = None) -> JSONResponse:
    code_status, code_kind, code = status_of(exc)
    status = status or code_status
    body: dict[str, Any] = {"error": {"message": str(exc), "type": kind or code_kind,
                                      "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=retry_headers(status))


def ollama_error(exc: BaseException, status: int | None = None) -> JSONResponse:
    status = status or status_of(exc)[0]
    return JSONResponse({"error": str(exc)}, status_code=status,
                        headers=retry_headers(status))


def failure(job: Job) -> tuple[int, str, str]:
    """A run that produced no answer: its HTTP status, one-line message and OpenAI code.
    500 with what went wrong; 503 when the server stopped it (its drain ran out)."""
    message = str(job.error) if job.error is not None else "the run produced no answer"
    if isinstance(job.error, ShuttingDown | RunInterrupted):
        return 503, message, "shutting_down"
    return 500, message, "run_failed"


def run_error(job: Job, ollama: bool = False) -> JSONResponse:
    """A run that produced no answer, not streamed: 500 with what went wrong, one line,
    and ``x-should-retry: false`` (the openai client would run the whole MoA again, and
    a run that failed once fails again); a run the server stopped is 503."""
    status, message, code = failure(job)
    headers = retry_headers(503) if status == 503 else {"x-should-retry": "false"}
    if ollama:
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return JSONResponse({"error": {"message": message, "type": "server_error", "param": None,
                                   "code": code}}, status_code=status, headers=headers)
