"""`localmoa serve` in a child process for tests: started on a free loopback port, ready
when it prints its "localmoa serve on" line (the socket is bound before), stopped
with SIGTERM (then SIGKILL) at the end."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
READY = "localmoa serve on http://"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """``localmoa serve ARGS`` on ``self.url``; a context manager."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 ready_timeout_s: float = 120.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["--port", str(self.port), *args]
        self.env = dict(os.environ if env is None else env)
        self.ready_timeout_s = ready_timeout_s
        self.output: collections.deque[str] = collections.deque(maxlen=60)
        self._ready = threading.Event()
        self.ready_line = False
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Served:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localmoa", "serve", *self.args], cwd=REPO, env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(self.ready_timeout_s) or not self.ready_line:
            tail = "\n".join(self.output)
            self.stop()
            raise AssertionError(f"localmoa serve did not start (exit "
                                 f"{self.process.returncode}):\n{tail}")
        return self

    def _drain(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.output.append(line.rstrip())
            if READY in line:
                self.ready_line = True
                self._ready.set()
        self._ready.set()  # the output ended: exited

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
