"""What a request must be before `localmoa serve` reads it, checked in this order (each
refusal in the shape of the route's API, see errors.py):

1. ``Host`` (no key set): a loopback name or address, or one allowed with
   ``--allow-host`` / LOCALMOA_ALLOWED_HOSTS; else 403. This is what stops DNS
   rebinding: a page whose name was rebound to 127.0.0.1 still sends its own name.
   With a key the Host is not checked: the key is what lets a client in, and a bind
   off loopback (where clients use any name) requires one.
2. ``Origin`` (key or not): when a browser sends one, it must be the server's own (the
   request's Host, or a loopback name on the server's port) or allowed with ``--cors``
   / LOCALMOA_ORIGINS; else 403. The page at ``/`` calls its own origin.
3. The API key, when one is set: every route but ``/health``, the page at ``/`` and
   CORS preflights; else 401. Compared as bytes: the UTF-8 bytes of the key, or its
   Latin-1 bytes when it has them (Python's ``requests`` and ``http.client`` send a
   header as Latin-1; curl and httpx send what they are given).
4. A draining server (SIGTERM) answers 503 with ``Retry-After``, but for ``/health``.
5. ``POST`` bodies are JSON: ``Content-Type: application/json`` (parameters such as
   ``charset`` allowed), whatever FastAPI's version; else 415. A page's ``fetch`` with a
   body of another type needs no CORS preflight: this is what refuses it.
6. The body's size (``BodyCap``): 413 over the cap, announced or sent chunked.

``CatchAll`` answers an exception no handler took with a 500 in the route's shape, one
line on stderr (the traceback with LOCALMOA_DEBUG=1), and ends a stream already under
way cleanly. ``Inflight`` counts the requests being answered, for the drain.
"""

from __future__ import annotations

import hmac
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import constants
from ..errors import clip
from .errors import refuse
from .hosts import host_allowed, origin_allowed

#: The largest request body taken (bytes).
MAX_BODY_BYTES = 1 << 20
#: Routes anyone may open when a key is set: the page holds no secret (it asks for the
#: key), and a load balancer's health check sends none.
OPEN_ROUTES = ("/", "/health")


@dataclass(frozen=True)
class AppSettings:
    """Who may call the server: the key, the Host names and browser origins allowed;
    and the largest body taken."""

    api_key: str | None = None
    #: Browser origins allowed besides the server's own (``*``: any); they get CORS.
    cors: tuple[str, ...] = ()
    #: Host names or addresses allowed besides loopback (``*``: any).
    allowed_hosts: tuple[str, ...] = ()
    max_body_bytes: int = MAX_BODY_BYTES


@dataclass
class Inflight:
    """How many requests are being answered now (a drain waits for none)."""

    count: int = 0
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def __enter__(self) -> Inflight:
        with self._changed:
            self.count += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._changed:
            self.count -= 1
            self._changed.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is being answered (True), at most ``timeout_s``."""
        with self._changed:
            return self._changed.wait_for(lambda: self.count <= 0, timeout=max(0.0, timeout_s))


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def key_given(scope: Scope) -> bytes:
    """The key a request carries, as sent (bytes): ``Authorization: Bearer KEY`` or
    ``x-api-key: KEY``."""
    auth = _header(scope, b"authorization") or b""
    if auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    return (_header(scope, b"x-api-key") or b"").strip()


def key_matches(given: bytes, key: str) -> bool:
    """Whether ``given`` (a request's key, as sent) is ``key``: its UTF-8 bytes, or its
    Latin-1 bytes when it can be written in Latin-1 (``clé``: ``cl\\xe9``). Every form is
    compared, in constant time each."""
    forms = [key.encode("utf-8")]
    if all(ord(char) < 256 for char in key):  # else no Latin-1 client can send it as such
        forms.append(key.encode("latin-1"))
    matches = [hmac.compare_digest(given, form) for form in forms]
    return any(matches)


def is_json(content_type: bytes | None) -> bool:
    """Whether a Content-Type says JSON: ``application/json``, parameters allowed."""
    if content_type is None:
        return False
    return content_type.split(b";", 1)[0].strip().lower() == b"application/json"


class Guard:
    """The checks of the module's note, before anything else reads the request."""

    def __init__(self, app: ASGIApp, settings: AppSettings, closing: Callable[[], bool],
                 inflight: Inflight) -> None:
        self.app = app
        self.settings = settings
        self.closing = closing
        self.inflight = inflight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        with self.inflight:
            if refusal is not None:
                await refusal(scope, receive, send)
            else:
                await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> Response | None:
        """The answer to a request that may not go further, or None."""
        path, method, settings = scope["path"], scope["method"], self.settings
        host = _text(_header(scope, b"host"))
        if not settings.api_key and not host_allowed(host, settings.allowed_hosts):
            return refuse(path, 403, f"Host {clip(host or '')!r} is not this machine's "
                          "loopback: start the server with --allow-host NAME to serve it "
                          "under that name")
        origin = _text(_header(scope, b"origin"))
        server = scope.get("server") or (None, None)
        if origin is not None and not origin_allowed(origin, host, server[1],
                                                     settings.cors):
            return refuse(path, 403, f"Origin {clip(origin)!r} may not call this server: "
                          "start it with --cors ORIGIN to allow a web page from there")
        if settings.api_key and path not in OPEN_ROUTES and method != "OPTIONS" and \
                not key_matches(key_given(scope), settings.api_key):
            return refuse(path, 401, "missing or wrong API key: send Authorization: Bearer "
                          "KEY (or x-api-key: KEY)")
        if self.closing() and path != "/health":
            return refuse(path, 503, "the server is shutting down; try again shortly, or "
                          "another instance", code="shutting_down")
        if method == "POST" and not is_json(_header(scope, b"content-type")):
            given = _text(_header(scope, b"content-type"))
            return refuse(path, 415, f"the body must be JSON sent with Content-Type: "
                          f"application/json (got {given or 'no Content-Type'})")
        return None


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
        length = _header(scope, b"content-length")
        over = refuse(scope["path"], 413, f"request body over {self.max_bytes} bytes")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                await over(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if b"chunked" not in (_header(scope, b"transfer-encoding") or b"").lower():
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


class CatchAll:
    """An exception no handler took: a 500 in the route's shape (or, when the answer
    had begun, its end), one line on stderr; never a traceback unless LOCALMOA_DEBUG."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"started": False, "ended": False}

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                state["ended"] = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            where = f"{scope['method']} {scope['path']}"
            sys.stderr.write(f"localmoa serve: internal error in {where}: "
                             f"{type(exc).__name__}: {exc}\n")
            if constants.debug():
                traceback.print_exc()
            try:
                if not state["started"]:
                    await refuse(scope["path"], 500, f"internal error: {type(exc).__name__}: "
                                 f"{exc}")(scope, receive, send)
                elif not state["ended"]:
                    await send({"type": "http.response.body", "body": b"",
                                "more_body": False})
            except Exception:  # noqa: BLE001 - the client is gone too
                return
