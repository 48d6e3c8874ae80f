"""``backend: echo``: a localmoa backend from another package, registered through the
``localmoa.backends`` entry point (see pyproject.toml). It holds no model: it answers
with its entry's ``reply``, one word per piece, ``{question}`` standing for the last
user message."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

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
    ModelLoadError,
    ModelSpec,
)


class EchoSpec(ModelSpec):
    """The keys of a ``backend: echo`` entry."""

    reply: str = Field(min_length=1, description="The answer; {question} is the last user "
                       "message.")
    concurrency: int = Field(2, ge=1, le=8, description="Agents answered at once.")
    fail_load: bool = Field(False, description="Refuse to load (for tests).")
    bug_in_load: bool = Field(False, description="Raise an exception that is not localmoa's "
                              "in load, as a buggy backend would (for tests).")

    MISPLACED: ClassVar[dict[str, str]] = {
        "source": "source does not apply to backend: echo; write reply:"}

    def where(self) -> str:
        return f"echo:{self.reply[:24]}"


class EchoBackend(BackendBase):
    name = "echo"
    package = "localmoa-echo"
    spec_class = EchoSpec
    capabilities: ClassVar[Capabilities] = Capabilities(token_counting=True)

    def estimate(self, name: str, spec: ModelSpec, config: Config, resources: Any,
                 batch_up_to: int = 1) -> Estimate:
        assert isinstance(spec, EchoSpec)
        return Estimate(None, None, Footprint.of_pools(
            name, spec.n_ctx, {"echo": 0}, local=False, parallel_limit=spec.concurrency,
            parallel_group="echo", external=True))

    def pool_budget(self, pool: str, config: Config) -> int | None:
        return UNLIMITED if pool == "echo" else None

    def load(self, name: str, spec: ModelSpec, path: Path | None, n_threads: int,
             n_seq: int = 1) -> EchoModel:
        assert isinstance(spec, EchoSpec)
        if spec.fail_load:
            raise ModelLoadError(f"model {name!r}: echo was told not to load")
        if spec.bug_in_load:
            raise RuntimeError("echo's load has a bug")
        return EchoModel(name, spec)

    def doctor(self, config: Config | None) -> Any:
        specs = config.models.values() if config else []
        models = [s for s in specs if isinstance(s, EchoSpec)]
        return [{"host": "echo", "reachable": True, "error": None,
                 "summary": f"{len(models)} echo models"}]


class EchoModel(LoadedModel):
    def __init__(self, name: str, spec: EchoSpec) -> None:
        self.name = name
        self.spec = spec
        self.load_s = 0.0
        self.runtime_facts: dict[str, Any] = {"echo": True}

    def chat(self, messages: Sequence[Message], options: GenerateOptions) -> ChatStream:
        return ChatStream(lambda stream: self._pieces(stream, messages, options))

    def _pieces(self, stream: ChatStream, messages: Sequence[Message],
                options: GenerateOptions) -> Iterator[str]:
        started = time.perf_counter()
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        words = self.spec.reply.replace("{question}", question).split()[: options.max_tokens]
        for i, word in enumerate(words):
            yield word if i == 0 else " " + word
        took = time.perf_counter() - started
        stream.stats = GenerationStats(
            prompt_tokens=sum(len(m["content"].split()) for m in messages),
            completion_tokens=len(words), ttft_s=took, prompt_s=took, decode_s=took,
            decode_tokens=max(len(words) - 1, 0), finish_reason="stop", timing="client")

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def cut_tokens(self, text: str, n: int) -> str:
        return " ".join(text.split()[:n])

    def unload(self) -> None:
        return None
