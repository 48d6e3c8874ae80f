"""A scripted in-process backend for engine tests, in the manner of simonw/llm's MockModel.

Each model name gets a Script: the pieces it streams, and faults on cue (a load
that fails or blocks, a call that blocks without looking at the stop flag, an
error after N pieces, a bug). Tests wait on its events ("loading", "started")
instead of sleeping. Like a llama.cpp instance, a model serves one call at a
time and its generator holds that claim until it is closed.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localmoa.backends.base import (
    BackendBase,
    ChatStream,
    Estimate,
    GenerateOptions,
    GenerationStats,
    LoadedModel,
    Message,
)
from localmoa.backends.batch import Batch
from localmoa.backends.llamacpp.backend import LlamaCppBackend
from localmoa.backends.llamacpp.spec import LlamaCppSpec, Source
from localmoa.config import Config, ModelSpec
from localmoa.errors import GenerationError, ModelLoadError
from localmoa.memory.estimate import Footprint
from localmoa.memory.probe import Resources
from localmoa.profile_spec import AgentSpec, Profile

MiB = 1 << 20


@dataclass
class Script:
    """What one model does."""

    pieces: tuple[str, ...] = ("Nine", " point", " nine", " is", " larger.")
    forever: bool = False  # stream pieces until stopped (max_tokens is not a limit)
    fail_after: int | None = None  # a backend error after this many pieces
    bug_after: int | None = None  # a TypeError (a bug) after this many pieces
    hold: threading.Event | None = None  # a call blocks on it first, deaf to stops
    holds: int = 1  # how many calls (the first ones) block on ``hold``
    #: In a batch, a sequence asking for more tokens than this talks until stopped.
    forever_over: int | None = None
    load_error: str | None = None
    load_hold: threading.Event | None = None  # a load blocks on it
    embeds: bool = False  # ``embed`` works (letter counts), else it says it cannot


@dataclass
class ScriptedBackend(BackendBase):
    """Register it as ``backends.register("llamacpp", lambda: backend)``: it takes llama.cpp
    entries, estimates them as llama.cpp does (a GGUF header), and plays scripts."""

    scripts: dict[str, Script] = field(default_factory=dict)
    name: str = "llamacpp"
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    calls: list[tuple[str, list[Message]]] = field(default_factory=list)
    options: list[tuple[str, GenerateOptions]] = field(default_factory=list)  # per chat call
    loading: dict[str, threading.Event] = field(default_factory=dict)
    started: dict[str, threading.Event] = field(default_factory=dict)
    wrote: dict[str, threading.Event] = field(default_factory=dict)  # a first piece is out
    model_calls: dict[str, int] = field(default_factory=dict)
    seqs: list[tuple[str, int]] = field(default_factory=list)  # (model, n_seq) per load
    batches: list[tuple[str, int]] = field(default_factory=list)  # (model, size) decoded
    unloaded: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, table: dict[str, threading.Event], model: str) -> threading.Event:
        with self.lock:
            return table.setdefault(model, threading.Event())

    spec_class = LlamaCppSpec
    capabilities = dataclasses.replace(LlamaCppBackend.capabilities, constrained_output=True,
                                       embeddings=True)

    def estimate(self, name: str, spec: ModelSpec, config: Config, resources: Resources,
                 batch_up_to: int = 1) -> Estimate:
        return LlamaCppBackend().estimate(name, spec, config, resources, batch_up_to)

    def load(self, name: str, spec: ModelSpec, path: Path | None,
             n_threads: int, n_seq: int = 1) -> ScriptedModel:
        script = self.scripts.get(name, Script())
        with self.lock:
            self.seqs.append((name, n_seq))
        self.event(self.loading, name).set()
        if script.load_hold is not None:
            while not script.load_hold.wait(0.05):  # returns to Python now and then, as
                pass  # llama-cpp-python's load does: a signal is seen there
        if script.load_error:
            raise ModelLoadError(f"model {name!r}: {script.load_error}")
        with self.lock:
            self.loads.append(name)
        return ScriptedModel(self, name, script)


class ScriptedModel(LoadedModel):
    def __init__(self, backend: ScriptedBackend, name: str, script: Script) -> None:
        self.backend = backend
        self.name = name
        self.script = script
        self.load_s = 0.001
        self.runtime_facts: dict = {}
        self._busy = threading.Lock()
        self.unloaded = False

    def chat(self, messages: Sequence[Message], options: GenerateOptions) -> ChatStream:
        with self.backend.lock:
            self.backend.calls.append((self.name, [dict(m) for m in messages]))  # type: ignore[misc]
            self.backend.options.append((self.name, options))
        return ChatStream(lambda stream: self._generate(stream, options))

    def _generate(self, stream: ChatStream, options: GenerateOptions) -> Iterator[str]:
        if not self._busy.acquire(blocking=False):
            raise GenerationError(f"model instance {self.name!r} is already generating")
        try:
            if self.unloaded:
                raise GenerationError(f"{self.name} was unloaded")
            with self.backend.lock:
                call = self.backend.model_calls[self.name] = self.backend.model_calls.get(
                    self.name, 0) + 1
            self.backend.event(self.backend.started, self.name).set()
            if self.script.hold is not None and call <= self.script.holds:
                self.script.hold.wait()  # a native call that does not look at stop flags
            count = 0
            while True:
                for piece in self.script.pieces:
                    if self.script.fail_after is not None and count >= self.script.fail_after:
                        raise GenerationError(f"{self.name}: injected failure after {count} "
                                              "pieces")
                    if self.script.bug_after is not None and count >= self.script.bug_after:
                        raise TypeError("scripted bug: unsupported operand")
                    count += 1
                    yield piece
                    self.backend.event(self.backend.wrote, self.name).set()
                    if count >= options.max_tokens and not self.script.forever:
                        break
                if not self.script.forever:
                    break
                threading.Event().wait(0.001)  # let other threads run between rounds
            stream.stats = GenerationStats(prompt_tokens=10, completion_tokens=count,
                                           ttft_s=0.001, prompt_s=0.001, decode_s=0.001,
                                           decode_tokens=max(0, count - 1),
                                           finish_reason="stop")
        finally:
            self._busy.release()

    def run_batch(self, batch: Batch, n_threads: int) -> None:
        """Its agents' pieces, one per live sequence per step, as a batched context
        decodes; a sequence whose agent stops leaves, the others go on."""
        seqs = batch.sequences()
        if not seqs:
            return
        if not self._busy.acquire(blocking=False):
            raise GenerationError(f"model instance {self.name!r} is already generating")
        try:
            with self.backend.lock:
                self.backend.batches.append((self.name, len(seqs)))
                for seq in seqs:
                    self.backend.calls.append((self.name, [dict(m) for m in seq.messages]))  # type: ignore[misc]
                call = self.backend.model_calls[self.name] = self.backend.model_calls.get(
                    self.name, 0) + 1
            self.backend.event(self.backend.started, self.name).set()
            if self.script.hold is not None and call <= self.script.holds:
                self.script.hold.wait()  # a native call that does not look at stop flags
            for seq in seqs:
                seq.prompt(10, 6, len(seqs))
            count = 0  # steps so far
            pieces = self.script.pieces
            while live := [s for s in seqs if not s.done]:
                for seq in live:
                    if seq.wants_stop():
                        seq.finish("cancelled", seq.sampled)
                        continue
                    if self.script.fail_after is not None and count >= self.script.fail_after:
                        raise GenerationError(f"{self.name}: injected failure after {count} "
                                              "pieces")
                    seq.token()
                    seq.write(pieces[count % len(pieces)])
                    endless = self.script.forever or (
                        self.script.forever_over is not None
                        and seq.options.max_tokens > self.script.forever_over)
                    if not endless and (seq.sampled >= seq.options.max_tokens
                                        or count + 1 >= len(pieces)):
                        seq.finish("stop", seq.sampled)
                self.backend.event(self.backend.wrote, self.name).set()
                count += 1
                threading.Event().wait(0.001)  # let the readers run between steps
        finally:
            self._busy.release()

    def embed(self, texts: Sequence[str]) -> list[list[float]] | None:
        """Letter counts, normalised: texts that share words score high."""
        if not self.script.embeds:
            return None
        vectors = []
        for text in texts:
            counts = [float(text.lower().count(c)) for c in "abcdefghijklmnopqrstuvwxyz"]
            norm = sum(x * x for x in counts) ** 0.5 or 1.0
            vectors.append([x / norm for x in counts])
        return vectors

    def unload(self) -> None:
        self.unloaded = True
        with self.backend.lock:
            self.backend.unloads.append(self.name)
        self.backend.unloaded.set()


def config(models: dict[str, dict], layers: list[list[dict]], aggregator: dict,
           path: Path | None = None) -> Config:
    """A Config of scripted models and one profile 'p'. Their source is ``path`` (read only
    by a preflight, for footprints), else a path nothing reads."""
    specs = {name: LlamaCppSpec(backend="llamacpp",
                             source=Source(path=str(path or f"/scripted/{name}.gguf")), **extra)
             for name, extra in models.items()}
    profile = Profile(layers=[[AgentSpec(**a) for a in layer] for layer in layers],
                      aggregator=AgentSpec(**aggregator))
    return Config(models=specs, profiles={"p": profile}, default_profile="p")


def footprint(model: str, first_mib: int = 100, extra_mib: int = 20,
              seq_mib: int | None = None) -> Footprint:
    """A model whose first instance costs ``first_mib`` and each further one ``extra_mib``;
    with ``seq_mib``, its agents batch and each further sequence costs that much."""
    batched = {n: {"ram": (first_mib + (n - 1) * seq_mib) * MiB} for n in range(2, 9)
               } if seq_mib is not None else {}
    return Footprint(model=model, n_ctx=2048, kv_type="f16", weights_bytes=first_mib * MiB,
                     kv_bytes=0, compute_bytes=0, overhead_bytes=0,
                     shared_weights_bytes=(first_mib - extra_mib) * MiB,
                     pools={"ram": first_mib * MiB}, batched_pools=batched)
