"""A real OpenAI-compatible server for tests: llama-cpp-python's (``llama_cpp.server``)
serving a GGUF under an alias on a free loopback port.

The server runs in a child process started through this module (``python -m
tests.openai_server --serve ARGS``): that wrapper loads the model the way localmoa
does, with llama.cpp's weight repacking off where localmoa's verdict says it crashes
(Intel AMX), since llama_cpp.server has no option for it. Readiness is uvicorn's
"Uvicorn running on" line, read from the child's output; nothing waits on a clock.
"""

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
READY_LINE = "Uvicorn running on"


def free_port() -> int:
    """A loopback TCP port nothing listens on (now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OpenAIServer:
    """llama-cpp-python's server on ``model_path`` as ``alias``; a context manager.

    ``env`` is the child's environment (give it a LOCALMOA_HOME holding the repack
    verdict, so that no start runs the canary).
    """

    def __init__(self, model_path: Path, alias: str = "smollm2", *,
                 env: dict[str, str] | None = None, ready_timeout_s: float = 120.0) -> None:
        self.model_path = model_path
        self.alias = alias
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.env = dict(os.environ if env is None else env)
        self.ready_timeout_s = ready_timeout_s
        self.output: collections.deque[str] = collections.deque(maxlen=40)
        #: The wrapper's "localmoa repack: ..." line (llama.cpp prints thousands after it).
        self.repack_line = ""
        self._ready = threading.Event()  # the ready line, or the end of the output
        self._saw_ready_line = False
        self._ended = threading.Event()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> OpenAIServer:
        """Start the server and return once it accepts requests."""
        command = [sys.executable, "-m", "tests.openai_server", "--serve",
                   "--model", str(self.model_path), "--model_alias", self.alias,
                   "--host", "127.0.0.1", "--port", str(self.port),
                   "--n_ctx", "2048", "--n_threads", "1"]
        self.process = subprocess.Popen(command, cwd=REPO, env=self.env, text=True,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, errors="replace")
        threading.Thread(target=self._drain, name="openai-server-output", daemon=True).start()
        self._ready.wait(self.ready_timeout_s)
        if not self._saw_ready_line or self._ended.is_set():
            ended = self._ended.is_set()
            self.kill()
            why = (f"exited with code {self.process.returncode}" if ended
                   else f"did not print {READY_LINE!r} within {self.ready_timeout_s:g} s")
            tail = "\n".join(self.output)
            raise RuntimeError(f"llama_cpp.server {why} [{self.repack_line}]; its last "
                               f"output:\n{tail}")
        return self

    def _drain(self) -> None:
        """Read the child's output to its end (so its pipe never fills), watching for the
        ready line; the end of the output also wakes ``start``."""
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.rstrip("\n"))
            if line.startswith("localmoa repack:"):
                self.repack_line = line.strip()
            if READY_LINE in line:
                self._saw_ready_line = True
                self._ready.set()
        self._ended.set()
        self._ready.set()

    def kill(self) -> None:
        """SIGKILL the server and reap it (a server that dies mid-answer)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self) -> None:
        """Ask the server to end (SIGTERM); kill it if it has not within 30 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def serve(argv: list[str]) -> None:
    """Run llama_cpp.server with ``argv``, loading its model as localmoa loads one:
    weight repacking only where localmoa's verdict (``cpu_repack``) allows it."""
    from llama_cpp.server.__main__ import main

    from localmoa.backends import repack
    from localmoa.backends.llamacpp_model import _load_params

    choice = repack.choose(None)
    print(f"localmoa repack: {'on' if choice.enabled else 'off'} ({choice.reason})",
          flush=True)
    sys.argv = ["llama_cpp.server", *argv]
    with _load_params(choice.enabled, 1, "off"):
        main()


if __name__ == "__main__":
    if sys.argv[1:2] != ["--serve"]:
        sys.exit("usage: python -m tests.openai_server --serve LLAMA_CPP_SERVER_ARGS...")
    serve(sys.argv[2:])
