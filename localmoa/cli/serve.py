"""`localmoa serve`: the MoA behind OpenAI- and Ollama-compatible APIs, with a live page."""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from .. import constants
from ..errors import UsageError
from ._options import ConfigOpt, MemoryBudgetOpt, ProfileOpt
from ._output import Output
from ._prepare import check_cpu_once, load_command_config

EPILOG = """\
Examples:

\b
  localmoa serve                                   # http://127.0.0.1:11500, the page at /

\b
  curl http://127.0.0.1:11500/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model": "moa:tiny", "messages": [{"role": "user", "content": "Hi"}]}'

\b
  OLLAMA_HOST=127.0.0.1:11500 ollama run moa:tiny  # an Ollama client

\b
  LOCALMOA_API_KEY=secret localmoa serve --host 0.0.0.0   # other machines: a key is required

\b
  localmoa serve --allow-host moa.lan --cors https://moa.lan   # behind a proxy named moa.lan

Who may call, with no key: requests whose Host is this machine's loopback (localhost,
*.localhost, 127.0.0.0/8, ::1) or an --allow-host name (LOCALMOA_ALLOWED_HOSTS=a,b);
others get 403, which stops DNS rebinding. A browser's Origin must be the server's own or
a --cors one (LOCALMOA_ORIGINS=a,b), key or not. POST bodies must be JSON (Content-Type:
application/json). A request takes at most 1024 messages and 524288 characters (400).
There is no /docs page (Swagger UI would load from a CDN; the server is offline):
/openapi.json describes the API.
"""

#: The environment variable --api-key reads when the option is not given.
API_KEY_ENV = "LOCALMOA_API_KEY"


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback "
                                      "(0.0.0.0, ::, a LAN address, a name) needs --api-key."
                                      )] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 11500,
    profile: ProfileOpt = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar=API_KEY_ENV, show_envvar=True,
        help="Clients must send it (Authorization: Bearer KEY); every route but /health "
        "and the page.")] = None,
    cors: Annotated[list[str] | None, typer.Option(
        "--cors", help="A browser origin allowed to call the API (repeatable; also "
        "LOCALMOA_ORIGINS=a,b; * for any); only the server's own by default.")] = None,
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", help="A Host name (or address) served besides loopback, e.g. a "
        "proxy's (repeatable; also LOCALMOA_ALLOWED_HOSTS=a,b; * for any). Without a key, "
        "other Host names get 403.")] = None,
    keep_alive: Annotated[float, typer.Option(
        "--keep-alive", min=0, help="Seconds a model stays loaded after its last use.")
    ] = 300.0,
    queue: Annotated[int, typer.Option("--queue", min=1, max=1024, help="Requests that may "
                                       "wait; more get 429 with Retry-After.")] = 8,
    batch_requests: Annotated[int, typer.Option(
        "--batch-requests", min=1, max=64, help="Waiting requests for the same model that "
        "run together, their agents decoded as one batch; 1 runs each alone.")] = 4,
    max_tokens: Annotated[int, typer.Option("--max-tokens-cap", min=1, help="The most "
                                            "tokens a request may ask for.")] = 4096,
    drain: Annotated[float, typer.Option(
        "--drain", min=0, help="On SIGTERM or Ctrl-C, seconds the requests in flight get to "
        "end (new ones get 503 meanwhile); then they end with an error. A second signal "
        "ends them at once.")] = 30.0,
    config: ConfigOpt = None,
    memory_budget: MemoryBudgetOpt = None,
) -> None:
    """Serve profiles and models over OpenAI's and Ollama's APIs, with a live page at /.

    Profiles are models named moa:PROFILE; every configured model is also served alone.
    Runs go one at a time; requests for the same model that wait meanwhile run together
    as one batch (--batch-requests); models stay loaded between requests (--keep-alive)."""
    from ..serve.hosts import bind_is_loopback

    if not api_key and not bind_is_loopback(host):
        raise UsageError(f"--host {host} lets other machines in: give --api-key KEY (or set "
                         f"{API_KEY_ENV}), or bind 127.0.0.1")
    try:
        from ..serve.app import AppSettings, create_app
        from ..serve.drain import serve as serve_app
        from ..serve.service import MoaService, ServeOptions
    except ImportError as exc:
        raise UsageError(f"localmoa serve needs FastAPI and uvicorn ({exc.name} is missing): "
                         "pip install 'localmoa[serve]'") from None
    out = Output()
    cfg = load_command_config(config)
    if profile is not None:
        cfg.profile(profile)  # an unknown profile: one line now
    check_cpu_once(out, cfg, sorted(cfg.models))
    service = MoaService(cfg, ServeOptions(default_profile=profile, keep_alive_s=keep_alive,
                                           queue_size=queue, max_tokens_cap=max_tokens,
                                           batch_requests=batch_requests,
                                           memory_budget=memory_budget))
    app = create_app(service, AppSettings(
        api_key=api_key, cors=(*(cors or []), *constants.serve_origins()),
        allowed_hosts=(*(allow_host or []), *constants.serve_allowed_hosts())))
    sock = _bind(host, port)  # bound before the line below: a client may connect at once
    out.note(f"localmoa serve on http://{_url_host(host)}:{port} (page at /, OpenAI API at "
             f"/v1, Ollama API at /api); models: {', '.join(service.model_ids())}")
    try:
        serve_app(app, sock, service, drain, access_log=constants.debug(), note=out.note)
    finally:
        service.close(0.0)  # the drain is over: whatever is left stops now
        out.note("localmoa serve stopped")


def _bind(host: str, port: int) -> socket.socket:
    from ..serve.hosts import bind_address

    # the address the key check read (127.1 is 127.0.0.1); a name as given (a key is set)
    address = bind_address(host)
    if address is None:
        address = host.strip().removeprefix("[").removesuffix("]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror} (another server on "
                         "that port? pick one with --port)") from None
    sock.listen(128)
    return sock


def _url_host(host: str) -> str:
    host = host.strip()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
