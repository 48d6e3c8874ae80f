"""Model workers, localmoa's side: each loaded llama.cpp model in a process of its own.

A native fault (a SIGSEGV in a fast path, an abort in ggml, the OOM killer)
then costs the agents of that model, not the run: the worker's socket reads end
of file, its exit status says what killed it, and every call waiting on it
fails with one line ("model X crashed: signal 11 (SIGSEGV) during decode").
Unloading a model means its worker exits, so its memory (GPU memory too) goes
back to the system, which llama-cpp-python cannot promise in-process.

The process itself, its socket and the spare workers are in worker_process.py; a
batch's side of the wire, and the one restart of a batch's worker that died on its
own, are in worker_batch.py.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ... import signals
from ...errors import GenerationError, ModelLoadError
from ..base import ChatStream, GenerateOptions, LoadedModel, Message
from ..batch import Batch
from .model import LoadParams
from .worker_batch import relay_batch
from .worker_process import (
    EXIT_GRACE_S,
    DeafWatch,
    WorkerProcess,
    discard_spares,
    live_workers,
    prestart,
    take_worker,
)

__all__ = ["CANCEL_GRACE_S", "EXIT_GRACE_S", "WorkerModel", "WorkerProcess", "discard_spares",
           "live_workers", "load_in_worker", "prestart"]

#: A worker that does not answer a cancel within this time is killed.
CANCEL_GRACE_S = 5.0


class WorkerModel(LoadedModel):
    """A llama.cpp model in a worker process, as the engine sees a loaded model: chat,
    batch, tokenizer, unload; and ``kill`` for an agent that must be cut off."""

    def __init__(self, params: LoadParams, process: WorkerProcess, load_s: float,
                 facts: dict[str, Any], prestarted: bool) -> None:
        self.name = params.name
        self.params = params  # what a fresh worker loads if this one dies mid-batch
        self.process = process
        self.load_s = load_s
        self.runtime_facts: dict[str, Any] = {
            **facts, "worker_pid": process.pid, "worker_prestarted": prestarted,
            "worker_start_s": round(process.ready_s or 0.0, 4)}  # worker_wait_s: in facts
        self._state = threading.Lock()  # orders kill() against adopt()
        self._unloaded = False
        process.on_death = self._died

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        """False once its worker died (a later wave loads a fresh one)."""
        return self.process.alive

    @property
    def death(self) -> str | None:
        """Why its worker is gone, one line (None while it runs)."""
        if not self.process.alive:
            self.process.dead.wait(EXIT_GRACE_S)  # its reader is writing why
        return self.process.death

    def chat(self, messages: Sequence[Message], options: GenerateOptions) -> ChatStream:
        return ChatStream(lambda stream: self._generate(stream, messages, options))

    def _generate(self, stream: ChatStream, messages: Sequence[Message],
                  options: GenerateOptions) -> Iterator[str]:
        with self._claim():
            process = self.process
            rid, replies = process.request("chat", [dict(m) for m in messages], options)
            process.phase = "prefill"
            ended = False
            try:
                while True:
                    reply = replies.get()
                    if reply[0] == "text":
                        process.phase = "decode"
                        yield reply[2]
                        continue
                    ended = True
                    if reply[0] == "end":
                        stream.stats = reply[2]
                        return
                    raise GenerationError(str(reply[2]))
            finally:
                if not ended:  # its reader stopped early: the worker stops too
                    self.stop_request(rid, replies, "end")
                process.forget(rid)
                process.phase = "idle"

    def run_batch(self, batch: Batch, n_threads: int) -> None:
        """Decode the chats of ``batch`` together in the worker (the driver thread's
        call): each sequence's text and exact stats come back to its agent's stream. A
        worker that dies on its own meanwhile is restarted once and the sequences resume
        (worker_batch.py)."""
        seqs = batch.sequences()  # every member joined or withdrew (they may tokenize)
        if seqs:
            with self._claim():
                relay_batch(self, batch, seqs, n_threads, CANCEL_GRACE_S)

    def may_restart(self) -> bool:
        """Whether its worker died on its own (a native crash, the OOM killer, a kill from
        outside), so a fresh one may take over: not ended by localmoa, nor while localmoa
        is being interrupted."""
        return (not self._unloaded and not self.process.ended_by_localmoa
                and not signals.requested())

    def adopt(self, process: WorkerProcess) -> bool:
        """Go on in ``process``, a fresh worker replacing the dead one; False when this
        model was killed or unloaded meanwhile."""
        with self._state:
            if self._unloaded:
                return False
            self.process = process
        process.on_death = self._died
        return True

    def _died(self, why: str) -> None:
        """Its worker is gone: when it died on its own (a native crash, the OOM killer),
        the agent holding this instance is stopped, with why, through its Cancel."""
        if not self.process.ended_by_localmoa:
            self.occupancy.fail(why)

    def stop_request(self, rid: int, replies: queue.SimpleQueue[tuple[Any, ...]],
                last: str) -> None:
        """Ask the worker to stop request ``rid`` and wait for its ``last`` reply; kill it
        when a whole CANCEL_GRACE_S passes with no reply and no CPU used (DeafWatch: it
        is stopped or blocked; one that is only slow is waited for)."""
        process = self.process
        process.send(("cancel", rid, None))
        watch = DeafWatch(process, CANCEL_GRACE_S)
        while True:
            try:
                reply = replies.get(timeout=max(watch.left_s(), 0.05))
            except queue.Empty:
                if watch.deaf():
                    break
                continue
            if reply[0] in (last, "error", "dead"):
                return
        process.kill(f"it did not stop within {CANCEL_GRACE_S:g} s of a cancel "
                     "(stopped or stuck)")

    @contextlib.contextmanager
    def _claim(self) -> Iterator[None]:
        with self.occupancy.generation():
            if self._unloaded:
                raise GenerationError(f"model instance {self.name!r} was unloaded")
            yield

    def embed(self, texts: Sequence[str]) -> list[list[float]] | None:
        """One mean-pooled, L2-normalised vector per text, computed by the worker between
        chats (backends/llamacpp/embed.py); None for a model that gives none."""
        with self._claim():
            process = self.process
            process.phase = "embedding"
            try:
                vectors = process.call("embed", list(texts))
            finally:
                process.phase = "idle"
        return None if vectors is None else [list(v) for v in vectors]

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this model's vocabulary (counted by the worker)."""
        return int(self.process.call("count", text))

    def cut_tokens(self, text: str, n: int) -> str:
        """The first ``n`` tokens of ``text``, as text."""
        return str(self.process.call("cut", text, n))

    def unload(self) -> None:
        """The worker exits and its memory returns to the system. During a generation
        (or one paused in a stream nobody closed) that happens when it ends: unload
        never waits on a generation."""
        self.occupancy.after_generation(self._exit)

    def _exit(self) -> None:
        with self._state:
            if self._unloaded:
                return
            self._unloaded = True
        self.process.stop()

    def kill(self, reason: str) -> None:
        """Cut it off now: SIGKILL its worker. Calls on it fail with ``reason``."""
        with self._state:  # a worker taking over a dead one is killed too
            self._unloaded = True
            process = self.process
        process.kill(reason)


def load_in_worker(params: LoadParams) -> WorkerModel:
    """Load ``params`` in a worker: a prestarted one if there is one, else a new one."""
    process, prestarted = take_worker()
    process.label = params.name
    process.phase = "load"
    asked = time.perf_counter()
    try:
        rid, replies = process.request("load", params)
        while True:  # a Ctrl-C must not wait for the load to end
            with contextlib.suppress(queue.Empty):
                reply = replies.get(timeout=0.25)
                break
        process.forget(rid)
    except BaseException:
        process.kill("interrupted during its load")
        raise
    if reply[0] == "loaded":
        process.phase = "idle"
        waited = max(0.0, (process.ready_at or asked) - asked)  # for its start-up
        try:
            return WorkerModel(params, process, reply[2], {**reply[3], "worker_wait_s":
                                                            round(waited, 4)}, prestarted)
        except BaseException:  # a Ctrl-C right now: nobody would ever unload it
            process.kill("interrupted during its load")
            raise
    process.stop()
    raise ModelLoadError(str(reply[2]))
