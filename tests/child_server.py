"""A server in a child process for tests: started, ready when a line of its output says
so (read as it comes, never waited for on a clock), stopped with SIGTERM (SIGKILL after a
grace period) or killed. The output is drained to its end, so its pipe never fills; the
last lines are kept for failure messages."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback TCP port nothing listens on (now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChildServer:
    """``command`` run from the repository root; ready once ``ready_text`` appears in its
    output (stdout and stderr together). A context manager."""

    def __init__(self, command: list[str], ready_text: str, *,
                 env: dict[str, str] | None = None, ready_timeout_s: float = 120.0) -> None:
        self.command = command
        self.ready_text = ready_text
        self.env = dict(os.environ if env is None else env)
        self.ready_timeout_s = ready_timeout_s
        self.output: collections.deque[str] = collections.deque(maxlen=60)
        self._ready = threading.Event()  # the ready line, or the end of the output
        self._saw_ready = False
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> ChildServer:
        """Start the child and return once it is ready; RuntimeError with its last output
        when it exits or stays silent instead."""
        self.process = subprocess.Popen(self.command, cwd=REPO, env=self.env, text=True,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, errors="replace")
        threading.Thread(target=self._drain, name="child-server-output", daemon=True).start()
        self._ready.wait(self.ready_timeout_s)
        if not self._saw_ready:
            code = self.process.poll()
            self.kill()
            why = (f"exited with code {code}" if code is not None
                   else f"did not print {self.ready_text!r} within {self.ready_timeout_s:g} s")
            tail = "\n".join(self.output)
            raise RuntimeError(f"{' '.join(self.command[:4])} {why}; its last output:\n{tail}")
        return self

    def seen(self, line: str) -> None:
        """Each line of output, as it comes (subclasses pick out what they need)."""

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.rstrip("\n"))
            self.seen(line)
            if self.ready_text in line:
                self._saw_ready = True
                self._ready.set()
        self._ready.set()

    def terminate(self) -> None:
        """Send SIGTERM and return (the test watches what the child does then)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the child and reap it (a server that dies mid-answer)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self, grace_s: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not ended within ``grace_s``; its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def __enter__(self) -> ChildServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
