"""`localmoa serve`: the MoA behind OpenAI- and Ollama-compatible APIs, with a live page."""

from __future__ import annotations

import os
import socket
from typing import Annotated

import typer

from ..errors import UsageError
from ._options import ConfigOpt, MemoryBudgetOpt, ProfileOpt
from ._output import Output
from ._prepare import check_cpu_once, load_command_config

EPILOG = """\
Examples:

  localmoa serve                                   # http://127.0.0.1:11500, the page at /

  curl http://127.0.0.1:11500/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model": "moa:tiny", "messages": [{"role": "user", "content": "Hi"}]}'

  OLLAMA_HOST=127.0.0.1:11500 ollama run moa:tiny  # an Ollama client

  LOCALMOA_API_KEY=secret localmoa serve --host 0.0.0.0   # other machines: a key is required
"""

#: The environment variable --api-key reads when the option is not given.
API_KEY_ENV = "LOCALMOA_API_KEY"


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback "
                                      "needs --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 11500,
    profile: ProfileOpt = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar=API_KEY_ENV, show_envvar=True,
        help="Clients must send it (Authorization: Bearer KEY); every route but /health.")
    ] = None,
    cors: Annotated[list[str] | None, typer.Option(
        "--cors", help="An origin allowed to call the API from a browser (repeatable); "
        "none by default.")] = None,
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
    drain: Annotated[float, typer.Option("--drain", min=0, help="On SIGTERM, seconds given "
                                         "to requests in flight.")] = 30.0,
    config: ConfigOpt = None,
    memory_budget: MemoryBudgetOpt = None,
) -> None:
    """Serve profiles and models over OpenAI's and Ollama's APIs, with a live page at /.

    Profiles are models named moa:PROFILE; every configured model is also served alone.
    Runs go one at a time; requests for the same model that wait meanwhile run together
    as one batch (--batch-requests); models stay loaded between requests (--keep-alive)."""
    from ..netguard import is_this_machine

    if (not is_this_machine(host) or host in ("0.0.0.0", "::")) and not api_key:
        raise UsageError(f"--host {host} lets other machines in: give --api-key KEY (or set "
                         f"{API_KEY_ENV}), or bind 127.0.0.1")
    try:
        import uvicorn

        from ..serve.app import AppSettings, create_app
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
    app = create_app(service, AppSettings(api_key=api_key, cors=list(cors or [])))
    sock = _bind(host, port)  # bound before the line below: a client may connect at once
    out.note(f"localmoa serve on http://{_url_host(host)}:{port} (page at /, OpenAI API at "
             f"/v1, Ollama API at /api); models: {', '.join(service.model_ids())}")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                           timeout_graceful_shutdown=max(drain, 0.001),  # type: ignore[arg-type]
                                           access_log=bool(os.environ.get("LOCALMOA_DEBUG"))))
    try:
        server.run(sockets=[sock])
    finally:
        service.close(drain)
        out.note("localmoa serve stopped")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror} (another server on "
                         "that port? pick one with --port)") from None
    sock.listen(128)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
