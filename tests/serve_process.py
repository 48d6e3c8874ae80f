"""`localmoa serve` in a child process for tests, on a free loopback port: ready when it
prints its "localmoa serve on" line (its socket is bound before).

``Served(..., hold=True)`` runs it with ``backend: hold`` registered (``python -m
tests.serve_process``): a model that answers "held" (or its ``text``) and then holds its
answer open until its ``release`` file exists, or until its run is stopped. A test
decides when a request ends, whatever the machine's speed."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from localmoa.plugin import (
    UNLIMITED,
    BackendBase,
    Capabilities,
    ChatStream,
    Config,
    Estimate,
    Footprint,
    GenerateOptions,
    GenerationStats,
    LoadedModel,
    Message,
    ModelSpec,
)

from .child_server import ChildServer, free_port

READY = "localmoa serve on http://"
#: How often a held answer looks at its release file (and lets its run stop it).
POLL_S = 0.02


class Served(ChildServer):
    """``localmoa serve ARGS`` on ``self.url``; a context manager. With ``hold``, the
    ``hold`` backend is registered in it."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 ready_timeout_s: float = 120.0, hold: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        module = "tests.serve_process" if hold else "localmoa"
        super().__init__([sys.executable, "-m", module, "serve", "--port", str(self.port),
                          *args], READY, env=env, ready_timeout_s=ready_timeout_s)
        self.lines: list[str] = []  # every line of its output, as it comes
        self._new_line = threading.Condition()

    def __enter__(self) -> Served:
        self.start()
        return self

    def seen(self, line: str) -> None:
        with self._new_line:
            self.lines.append(line.rstrip("\n"))
            self._new_line.notify_all()

    def wait_for_output(self, text: str, timeout_s: float = 120.0) -> str:
        """The first line of output holding ``text``, once it is written; AssertionError
        with the output so far if it does not come within ``timeout_s``."""
        def found() -> str | None:
            return next((line for line in self.lines if text in line), None)

        with self._new_line:
            line = self._new_line.wait_for(found, timeout=timeout_s)
        assert line is not None, (text, self.lines[-20:])
        return line


def hold_config(path: Path, release: Path, *names: str) -> Path:
    """A models.yaml at ``path`` with ``hold`` models (each released by ``release``)."""
    path.write_text("models:\n" + "".join(
        f"  {name}: {{backend: hold, release: {str(release)!r}}}\n" for name in names),
        encoding="utf-8")
    return path


class HoldSpec(ModelSpec):
    """A ``backend: hold`` entry."""

    release: str  # the file whose appearance lets the answer end
    text: str = "held"  # what it says before it holds

    def where(self) -> str:
        return f"hold:{self.release}"


class HoldBackend(BackendBase):
    name = "hold"
    package = "tests"
    spec_class = HoldSpec
    capabilities: ClassVar[Capabilities] = Capabilities(token_counting=True)

    def estimate(self, name: str, spec: ModelSpec, config: Config, resources: Any,
                 batch_up_to: int = 1) -> Estimate:
        return Estimate(None, None, Footprint.of_pools(
            name, spec.n_ctx, {"hold": 0}, local=False, parallel_limit=8,
            parallel_group="hold", external=True))

    def pool_budget(self, pool: str, config: Config) -> int | None:
        return UNLIMITED if pool == "hold" else None

    def load(self, name: str, spec: ModelSpec, path: Path | None, n_threads: int,
             n_seq: int = 1) -> HoldModel:
        assert isinstance(spec, HoldSpec)
        return HoldModel(name, Path(spec.release), spec.text)


class HoldModel(LoadedModel):
    def __init__(self, name: str, release: Path, text: str = "held") -> None:
        self.name = name
        self.release = release
        self.text = text
        self.load_s = 0.0
        self.runtime_facts: dict[str, Any] = {}

    def chat(self, messages: Sequence[Message], options: GenerateOptions) -> ChatStream:
        return ChatStream(self._pieces)

    def _pieces(self, stream: ChatStream) -> Iterator[str]:
        yield self.text
        while not self.release.exists():
            time.sleep(POLL_S)
            yield ""  # nothing to say: the engine looks whether the run must stop
        yield " released"
        stream.stats = GenerationStats(prompt_tokens=1, completion_tokens=2, ttft_s=0.0,
                                       prompt_s=0.0, decode_s=0.0, decode_tokens=1,
                                       finish_reason="stop", timing="client")

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def cut_tokens(self, text: str, n: int) -> str:
        return " ".join(text.split()[:n])

    def unload(self) -> None:
        return None


def main(argv: list[str]) -> None:
    """``localmoa ARGS`` with the hold backend registered."""
    from localmoa import backends
    from localmoa.cli import main as localmoa

    backends.register("hold", HoldBackend)
    localmoa(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
