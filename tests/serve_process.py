"""`localmoa serve` in a child process for tests, on a free loopback port: ready when it
prints its "localmoa serve on" line (its socket is bound before)."""

from __future__ import annotations

import sys

from .child_server import ChildServer, free_port

READY = "localmoa serve on http://"


class Served(ChildServer):
    """``localmoa serve ARGS`` on ``self.url``; a context manager."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 ready_timeout_s: float = 120.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([sys.executable, "-m", "localmoa", "serve", "--port", str(self.port),
                          *args], READY, env=env, ready_timeout_s=ready_timeout_s)

    def __enter__(self) -> Served:
        self.start()
        return self
