"""Talking to an OpenAI-compatible server: timeouts, when to try a busy server again
(its Retry-After, else exponential backoff), the API key from the environment, one-line
errors that never show the key, and the request and answer shapes of ``/models`` and
``response_format``."""

from __future__ import annotations

import email.utils
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ... import constants
from ...errors import LocalMoaError, ModelLoadError, ModelNotFoundError
from .spec import OpenAISpec

if TYPE_CHECKING:
    import httpx

CONNECT_TIMEOUT_S = 10.0
#: The first wait after a busy answer; each further one doubles, up to the cap.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
#: The longest Retry-After honoured: a server asking for more gets this.
RETRY_AFTER_MAX_S = 60.0
BUSY_STATUSES = frozenset({429, 503})



def api_key(name: str, spec: OpenAISpec) -> str | None:
    """The key from the variable the entry names; None when it names none."""
    if spec.api_key_env is None:
        return None
    key = constants.secret(spec.api_key_env)
    if not key:
        raise ModelLoadError(f"model {name!r}: api_key_env {spec.api_key_env} is not set; "
                             "export it (the key is never read from models.yaml)")
    return key


def retry_delay(retry_after: str | None, attempt: int) -> float:
    """Seconds to wait after busy answer number ``attempt`` (0 is the first): the
    server's Retry-After (seconds or an HTTP date, capped), else exponential backoff."""
    if retry_after:
        seconds: float | None
        try:
            seconds = float(retry_after)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(retry_after)
            except (TypeError, ValueError):
                seconds = None
            else:
                when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
                seconds = (when - datetime.now(timezone.utc)).total_seconds()
        if seconds is not None:
            return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)
    return min(BACKOFF_FIRST_S * 2 ** attempt, BACKOFF_MAX_S)


def scrub(text: str, key: str | None) -> str:
    """``text`` on one line, short, without the API key (some servers echo it)."""
    if key:
        text = text.replace(key, "***")
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."


def server_message(body: bytes, key: str | None) -> str:
    """What a failed answer says: the error message of its JSON body (OpenAI's
    ``error.message``, vLLM's ``message``, FastAPI's ``detail``), else its first line."""
    text = body.decode("utf-8", "replace")
    message: Any = None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message or data.get("message") or data.get("detail")
    if message is not None and not isinstance(message, str):
        message = json.dumps(message)
    if not message:
        message = next((line for line in text.splitlines() if line.strip()), "(empty body)")
    return scrub(message, key)


@dataclass(frozen=True)
class Call:
    """One model's requests to its server: who asks, with which key, and which error a
    failure becomes (ModelLoadError while loading, GenerationError while generating)."""

    name: str
    spec: OpenAISpec
    key: str | None = field(repr=False)  # never in a repr, a log or a traceback
    failure: type[LocalMoaError]

    def fail(self, what: str) -> LocalMoaError:
        return self.failure(f"model {self.name!r}: {what}")

    def http_error(self, path: str, status: int, message: str) -> LocalMoaError:
        """One line for an answer the server refused: what happened and the fix."""
        url, spec = self.spec.base_url, self.spec
        if status in (401, 403):
            if spec.api_key_env:
                return self.fail(f"the server at {url} refused the API key (HTTP {status}); "
                                 f"check ${spec.api_key_env}")
            return self.fail(f"the server at {url} needs an API key (HTTP {status}): add "
                             "api_key_env: VAR to the model, VAR being the environment "
                             "variable you export the key in (e.g. OPENAI_API_KEY)")
        if status == 404:
            if path == "/models":
                return ModelLoadError(
                    f"model {self.name!r}: the server at {url} has no {path} (HTTP 404); fix "
                    "base_url (OpenAI-compatible servers usually want it to end with /v1)")
            return ModelNotFoundError(
                f"model {self.name!r}: the server at {url} does not serve {spec.model!r} or "
                f"has no {path} (HTTP 404: {message}); fix model: or base_url (usually "
                "ending with /v1)")
        return self.fail(f"the server at {url} failed (HTTP {status}): {message}")

    def transport_error(self, exc: Exception) -> LocalMoaError:
        """One line for a request that got no answer."""
        import httpx

        url = self.spec.base_url
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return self.fail(f"no server answers at {url} ({type(exc).__name__}); start it "
                             "or fix base_url")
        if isinstance(exc, httpx.TimeoutException):
            return self.fail(f"the server at {url} sent nothing for {self.spec.timeout_s:g} s "
                             f"({type(exc).__name__}); raise timeout_s or lower its load")
        return self.fail(f"the connection to {url} failed ({self.reason(exc)})")

    def reason(self, exc: Exception) -> str:
        return f"{type(exc).__name__}: {scrub(str(exc), self.key)}"


def served_models(response: httpx.Response) -> list[str] | None:
    """The ids of an OpenAI ``/models`` answer (``{"data": [{"id": ...}]}``); None when
    the answer is not one."""
    try:
        data = response.json().get("data")
        return [str(entry["id"]) for entry in data]
    except (ValueError, AttributeError, KeyError, TypeError):
        return None


def response_format(schema: dict[str, Any], style: str) -> dict[str, Any]:
    """The ``response_format`` that makes a server follow ``schema``, in the style the
    server takes (OpenAISpec.response_format)."""
    if style == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True}}
