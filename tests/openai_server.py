"""A real OpenAI-compatible server for tests: llama-cpp-python's (``llama_cpp.server``)
serving a GGUF under an alias on a free loopback port.

The server runs in a child process started through this module (``python -m
tests.openai_server --serve ARGS``): that wrapper loads the model the way localmoa
does, with llama.cpp's weight repacking off where localmoa's verdict says it crashes
(Intel AMX), since llama_cpp.server has no option for it. Readiness is uvicorn's
"Uvicorn running on" line, read from the child's output; nothing waits on a clock.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .child_server import ChildServer, free_port

__all__ = ["OpenAIServer", "free_port"]

READY_LINE = "Uvicorn running on"


class OpenAIServer(ChildServer):
    """llama-cpp-python's server on ``model_path`` as ``alias``; a context manager.

    ``env`` is the child's environment (give it a LOCALMOA_HOME holding the repack
    verdict, so that no start runs the canary); ``args``, more llama_cpp.server options
    (``["--embedding", "true"]``).
    """

    def __init__(self, model_path: Path, alias: str = "smollm2", *,
                 env: dict[str, str] | None = None, ready_timeout_s: float = 120.0,
                 args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        #: The wrapper's "localmoa repack: ..." line (llama.cpp prints thousands after it).
        self.repack_line = ""
        super().__init__([sys.executable, "-m", "tests.openai_server", "--serve",
                          "--model", str(model_path), "--model_alias", alias,
                          "--host", "127.0.0.1", "--port", str(self.port),
                          "--n_ctx", "2048", "--n_threads", "1", *args],
                         READY_LINE, env=env, ready_timeout_s=ready_timeout_s)

    def seen(self, line: str) -> None:
        if line.startswith("localmoa repack:"):
            self.repack_line = line.strip()

    def __enter__(self) -> OpenAIServer:
        self.start()
        return self


def serve(argv: list[str]) -> None:
    """Run llama_cpp.server with ``argv``, loading its model as localmoa loads one:
    weight repacking only where localmoa's verdict (``cpu_repack``) allows it."""
    from llama_cpp.server.__main__ import main

    from localmoa.backends.llamacpp import repack
    from localmoa.backends.llamacpp.model import llama_defaults

    choice = repack.choose(None)
    print(f"localmoa repack: {'on' if choice.enabled else 'off'} ({choice.reason})",
          flush=True)
    sys.argv = ["llama_cpp.server", *argv]
    with llama_defaults(choice.enabled, 1, "off"):
        main()


if __name__ == "__main__":
    if sys.argv[1:2] != ["--serve"]:
        sys.exit("usage: python -m tests.openai_server --serve LLAMA_CPP_SERVER_ARGS...")
    serve(sys.argv[2:])
